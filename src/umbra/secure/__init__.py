"""Secure aggregation: SecAgg+ masking (`umbra.secure.secagg`) and CKKS (`umbra.secure.he`).

The server only ever sees the sum of the clients' updates. Protocol state machines here
are transport-independent; the Flower client mods and server workflows wrap them. Each
mode implements the round-transport interface of `umbra.federation.common`
(`SecureAggregator`); `transports` returns the registry of the built-in modes.
"""

from umbra.secure.registry import TransportRegistry, transports
from umbra.secure.secagg import SecAggAbort, SecAggError

__all__ = ["SecAggAbort", "SecAggError", "TransportRegistry", "transports"]
