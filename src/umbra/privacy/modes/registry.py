"""``privacy.mode`` -> :class:`~umbra.privacy.modes.mode.DPMode` class (as Opacus'
``accountants/registry.py``): the built-in modes, :func:`register_mode` for others."""

from __future__ import annotations

from umbra.privacy.controller import DP_MODE_CODES
from umbra.privacy.modes.client_level import ClientLevel
from umbra.privacy.modes.example_level import ExampleLevel
from umbra.privacy.modes.mode import DPMode

__all__ = ["MODES", "mode_class", "register_mode"]

#: ``privacy.mode`` -> mode class
MODES: dict[str, type[DPMode]] = {ExampleLevel.name: ExampleLevel, ClientLevel.name: ClientLevel}


def register_mode(cls: type[DPMode]) -> type[DPMode]:
    """Register ``cls`` under ``cls.name``; a name taken already raises ValueError."""
    if cls.name in MODES:
        raise ValueError(f"DP mode {cls.name!r} is already registered")
    if cls.name not in DP_MODE_CODES:
        raise ValueError(f"DP mode {cls.name!r} has no dp-mode code in DP_MODE_CODES")
    MODES[cls.name] = cls
    return cls


def mode_class(name: str) -> type[DPMode]:
    """The mode registered as ``name`` (``privacy.mode``); an unknown name raises ValueError."""
    if name not in MODES:
        known = " or ".join(repr(m) for m in MODES)
        raise ValueError(f"privacy.mode must be {known}, got {name!r}")
    return MODES[name]
