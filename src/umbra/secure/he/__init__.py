"""CKKS homomorphic aggregation.

What a run uses: threshold CKKS (Mouchet et al., PoPETs 2021) - `threshold` (ring, keys,
Shamir, flooding; pure crypto on SEAL), `holder` (a client's protocol steps), `aggregator`
(the server's sum and decoding), `client_mod`/`workflow` (Flower glue). `ckks` keeps the
single-key scheme as a benchmark baseline and the shared error types.
"""

from umbra.secure.he.aggregator import EncryptedSum, ThresholdAggregator, decode_sum
from umbra.secure.he.ckks import (
    HE_STANDARD_MAX_LOG_Q,
    PRESETS,
    CiphertextError,
    CkksAggregator,
    CkksKeyring,
    CkksParams,
    HeAbort,
)
from umbra.secure.he.holder import DecryptionRefused, HolderConfig, SetupError
from umbra.secure.he.packing import flatten_arrays, unflatten_arrays
from umbra.secure.he.threshold import ThresholdParams, ThresholdPlan

__all__ = [
    "HE_STANDARD_MAX_LOG_Q",
    "PRESETS",
    "CiphertextError",
    "CkksAggregator",
    "CkksKeyring",
    "CkksParams",
    "DecryptionRefused",
    "EncryptedSum",
    "HeAbort",
    "HolderConfig",
    "SetupError",
    "ThresholdAggregator",
    "ThresholdParams",
    "ThresholdPlan",
    "decode_sum",
    "flatten_arrays",
    "unflatten_arrays",
]
