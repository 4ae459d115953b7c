"""Errors of private set intersection: bad id lists and malformed or unexpected messages.

Both are ``UmbraError``s (one line on stderr, exit code 2 at the CLI) and ``ValueError``s
(for callers of the Python API). Messages name the problem and where it is (file and line,
message type and field), never an id or a key.
"""

from __future__ import annotations

from umbra.errors import UmbraError

__all__ = ["PsiError", "PsiInputError", "PsiProtocolError"]


class PsiError(UmbraError, ValueError):
    """A private set intersection cannot run or complete."""


class PsiInputError(PsiError):
    """An id list is unusable: not UTF-8, a duplicate id, empty where ids are required."""


class PsiProtocolError(PsiError):
    """A peer's message is malformed, too large, out of order or inconsistent with the
    session (another data structure, mode or id policy than agreed)."""
