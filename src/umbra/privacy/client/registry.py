"""DP mode name -> :class:`~umbra.privacy.client.policy.ClientPolicy` class, and the choice
of a train message's policy from its ``dp-mode``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from umbra.privacy.client.client_dp import ClientDP
from umbra.privacy.client.example_dp import ExampleDP
from umbra.privacy.client.no_dp import NoDP
from umbra.privacy.client.policy import ClientPolicy, config_int
from umbra.privacy.controller import DP_MODE, DP_MODE_CODES, dp_mode_code
from umbra.privacy.registry import Registry

__all__ = ["CLIENT_POLICIES", "client_policy", "register_client_policy"]

#: DP mode name (``privacy.mode``, or ``"none"``) -> client policy class
CLIENT_POLICIES: Registry[type[ClientPolicy]] = Registry("client DP policy")


def register_client_policy(cls: type[ClientPolicy]) -> type[ClientPolicy]:
    """Register ``cls`` under ``cls.name``, which needs a ``dp-mode`` code
    (:data:`~umbra.privacy.controller.DP_MODE_CODES`); a name taken already raises."""
    dp_mode_code(cls.name)  # the server must be able to select it
    return CLIENT_POLICIES.register(cls.name, cls)


def client_policy(config: Mapping[str, Any]) -> ClientPolicy:
    """The policy for a train message's ConfigRecord, from its ``dp-mode`` (absent: no DP).

    Raises:
        ValueError: an unknown ``dp-mode``.
    """
    code = config_int(config, DP_MODE, DP_MODE_CODES["none"])
    names = [name for name, c in DP_MODE_CODES.items() if c == code and name in CLIENT_POLICIES]
    if not names:
        raise ValueError(f"unknown {DP_MODE} {code}; known: {sorted(DP_MODE_CODES.values())}")
    return CLIENT_POLICIES.get(names[0])(config)


for _builtin in (NoDP, ExampleDP, ClientDP):
    register_client_policy(_builtin)
