"""The error of a vertical federation that cannot run: a bad party layout or id lists."""

from __future__ import annotations

from umbra.errors import UmbraError

__all__ = ["VerticalError"]


class VerticalError(UmbraError, ValueError):
    """The parties' layout or id lists make vertical training impossible (no overlap, a
    party without a modality, label holders that disagree, duplicate ids): one line, exit 2
    at the CLI; never names an id."""
