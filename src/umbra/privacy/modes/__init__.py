"""DP modes as the server plans them, one class per privacy unit, behind a name registry.

:class:`~umbra.privacy.controller.PrivacyController` looks its mode up once
(:func:`mode_class`) and delegates what differs between modes to it. Runs on the server.
"""

from umbra.privacy.modes.client_level import ClientLevel
from umbra.privacy.modes.example_level import ExampleLevel
from umbra.privacy.modes.mode import DPMode, ModeSetup
from umbra.privacy.modes.registry import MODES, mode_class, register_mode

__all__ = [
    "MODES",
    "ClientLevel",
    "DPMode",
    "ExampleLevel",
    "ModeSetup",
    "mode_class",
    "register_mode",
]
