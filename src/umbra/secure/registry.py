"""The registry of secure round transports: name -> how to build its server side and its
client mod (`umbra.federation.common.SecureTransport`).

Nothing registers itself on import: `transports` builds the registry of the built-in modes
(``"secagg+"``, ``"ckks"``) explicitly, and the code that assembles a run asks it for the
one its config names. A duplicate name raises, an unknown one names the known ones.
"""

from __future__ import annotations

from umbra.errors import ConfigError
from umbra.federation.common import SecureTransport

__all__ = ["TransportRegistry", "transports"]


class TransportRegistry:
    """A dict of `SecureTransport` entries behind `register` (duplicates raise)."""

    def __init__(self) -> None:
        self._entries: dict[str, SecureTransport] = {}

    def register(self, entry: SecureTransport) -> None:
        """Add ``entry`` under its name; ValueError if the name is taken."""
        if entry.name in self._entries:
            raise ValueError(f"round transport {entry.name!r} is already registered")
        self._entries[entry.name] = entry

    def get(self, name: str) -> SecureTransport:
        """The entry called ``name``; ConfigError naming the known ones if there is none."""
        if name not in self._entries:
            raise ConfigError(f"unknown round transport {name!r}; known: {self.names()}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)


def transports() -> TransportRegistry:
    """The built-in secure round transports: SecAgg+ masking and threshold CKKS.

    Imported here, not at module level: CKKS pulls in its ring arithmetic, which a run
    without secure aggregation never needs.
    """
    from umbra.secure.he.client_mod import make_ckks_handler
    from umbra.secure.he.workflow import CkksTransport
    from umbra.secure.secagg.client_mod import make_secagg_handler
    from umbra.secure.secagg.workflow import SecAggPlusTransport

    registry = TransportRegistry()
    registry.register(
        SecureTransport(
            name=SecAggPlusTransport.name,
            client_action=SecAggPlusTransport.client_action,
            server=SecAggPlusTransport,
            client_mod=make_secagg_handler,
            integer_noise=True,  # discrete Gaussian shares added after quantisation
            signed=True,  # signed advertisements when the run has a roster of identity keys
        )
    )
    registry.register(
        SecureTransport(
            name=CkksTransport.name,
            client_action=CkksTransport.client_action,
            server=CkksTransport,
            client_mod=make_ckks_handler,
            signed=True,  # signed key setup against the roster of identity keys
            identity_required=True,
        )
    )
    return registry
