"""CKKS homomorphic aggregation (TenSEAL): key provisioning, packing, encrypted sums."""

from umbra.secure.he.ckks import (
    HE_STANDARD_MAX_LOG_Q,
    PRESETS,
    CiphertextError,
    CkksAggregator,
    CkksKeyring,
    CkksParams,
    HeAbort,
)
from umbra.secure.he.packing import flatten_arrays, unflatten_arrays

__all__ = [
    "HE_STANDARD_MAX_LOG_Q",
    "PRESETS",
    "CiphertextError",
    "CkksAggregator",
    "CkksKeyring",
    "CkksParams",
    "HeAbort",
    "flatten_arrays",
    "unflatten_arrays",
]
