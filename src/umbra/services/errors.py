"""The one error type of the encrypted services."""

from __future__ import annotations

from umbra.errors import UmbraError

__all__ = ["ServiceError"]


class ServiceError(UmbraError, ValueError):
    """A request or reply of an encrypted service is malformed, too large, of the wrong
    dimension, or made under other CKKS parameters or another key. The message names the
    problem in one line and never holds key material or plaintext values."""
