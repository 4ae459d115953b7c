"""``privacy.mode`` -> :class:`~umbra.privacy.modes.mode.DPMode` class: the built-in modes,
:func:`register_mode` for others (duplicates raise)."""

from __future__ import annotations

from umbra.privacy.controller import dp_mode_code
from umbra.privacy.modes.client_level import ClientLevel
from umbra.privacy.modes.example_level import ExampleLevel
from umbra.privacy.modes.mode import DPMode
from umbra.privacy.registry import Registry

__all__ = ["MODES", "mode_class", "register_mode"]

#: ``privacy.mode`` -> mode class
MODES: Registry[type[DPMode]] = Registry("privacy.mode")


def register_mode(cls: type[DPMode]) -> type[DPMode]:
    """Register ``cls`` under ``cls.name``, which needs a ``dp-mode`` code
    (:data:`~umbra.privacy.controller.DP_MODE_CODES`); a name taken already raises."""
    dp_mode_code(cls.name)  # the clients must be able to tell the mode
    return MODES.register(cls.name, cls)


def mode_class(name: str) -> type[DPMode]:
    """The mode registered as ``name`` (``privacy.mode``); an unknown name raises ValueError."""
    return MODES.get(name)


register_mode(ExampleLevel)
register_mode(ClientLevel)
