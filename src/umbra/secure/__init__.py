"""Secure aggregation: SecAgg+ masking (`umbra.secure.secagg`) and CKKS (`umbra.secure.he`).

The server only ever sees the sum of the clients' updates. Protocol state machines here
are transport-independent; the Flower client mods and server workflows wrap them.
"""

from umbra.secure.secagg import SecAggAbort, SecAggError

__all__ = ["SecAggAbort", "SecAggError"]
