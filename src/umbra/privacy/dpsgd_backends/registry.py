"""DP-SGD backend name -> class: the built-in backends, :func:`register_backend` for others
(duplicates raise)."""

from __future__ import annotations

from umbra.privacy.dpsgd_backends.backend import PerSampleBackend
from umbra.privacy.dpsgd_backends.bookkeeping_backend import BookkeepingBackend
from umbra.privacy.dpsgd_backends.functorch_backend import FunctorchBackend
from umbra.privacy.dpsgd_backends.opacus_backend import OpacusBackend
from umbra.privacy.registry import Registry

__all__ = ["BACKENDS", "backend_class", "register_backend"]

#: backend name -> class
BACKENDS: Registry[type[PerSampleBackend]] = Registry("backend")


def register_backend(cls: type[PerSampleBackend]) -> type[PerSampleBackend]:
    """Register ``cls`` under ``cls.name``; a name taken already raises ValueError."""
    return BACKENDS.register(cls.name, cls)


def backend_class(name: str) -> type[PerSampleBackend]:
    """The backend registered as ``name``; an unknown name raises ValueError."""
    return BACKENDS.get(name)


for _builtin in (BookkeepingBackend, FunctorchBackend, OpacusBackend):
    register_backend(_builtin)
