"""Failures of a SecAgg+ round, shared by both sides."""

from __future__ import annotations

from umbra.errors import UmbraError

__all__ = ["ProtocolViolation", "SecAggAbort", "SecAggError"]


class SecAggError(UmbraError):
    """Base class of secure-aggregation failures."""


class SecAggAbort(SecAggError):
    """The round was aborted (e.g. fewer than ``threshold`` survivors); no sum was revealed."""


class ProtocolViolation(SecAggError):
    """A client refused a server message that breaks the protocol (it sends nothing back)."""
