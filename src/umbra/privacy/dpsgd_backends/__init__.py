"""How DP-SGD computes per-record gradients: one backend class per method, behind a name
registry (:func:`register_backend`; duplicates raise). Runs where DP-SGD runs: on the client.
"""

from umbra.privacy.dpsgd_backends.backend import PerSampleBackend, PerSampleLossFn
from umbra.privacy.dpsgd_backends.bookkeeping_backend import BookkeepingBackend
from umbra.privacy.dpsgd_backends.functorch_backend import FunctorchBackend
from umbra.privacy.dpsgd_backends.opacus_backend import OpacusBackend
from umbra.privacy.dpsgd_backends.registry import BACKENDS, backend_class, register_backend

__all__ = [
    "BACKENDS",
    "BookkeepingBackend",
    "FunctorchBackend",
    "OpacusBackend",
    "PerSampleBackend",
    "PerSampleLossFn",
    "backend_class",
    "register_backend",
]
