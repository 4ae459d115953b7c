"""DP-SGD backend name -> class (as Opacus' ``accountants/registry.py``): the built-in
backends, :func:`register_backend` for others."""

from __future__ import annotations

from umbra.privacy.dpsgd_backends.backend import PerSampleBackend
from umbra.privacy.dpsgd_backends.bookkeeping_backend import BookkeepingBackend
from umbra.privacy.dpsgd_backends.functorch_backend import FunctorchBackend
from umbra.privacy.dpsgd_backends.opacus_backend import OpacusBackend

__all__ = ["BACKENDS", "backend_class", "register_backend"]

#: backend name -> class
BACKENDS: dict[str, type[PerSampleBackend]] = {
    BookkeepingBackend.name: BookkeepingBackend,
    FunctorchBackend.name: FunctorchBackend,
    OpacusBackend.name: OpacusBackend,
}


def register_backend(cls: type[PerSampleBackend]) -> type[PerSampleBackend]:
    """Register ``cls`` under ``cls.name``; a name taken already raises ValueError."""
    if cls.name in BACKENDS:
        raise ValueError(f"DP-SGD backend {cls.name!r} is already registered")
    BACKENDS[cls.name] = cls
    return cls


def backend_class(name: str) -> type[PerSampleBackend]:
    """The backend registered as ``name``; an unknown name raises ValueError."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {name!r}")
    return BACKENDS[name]
