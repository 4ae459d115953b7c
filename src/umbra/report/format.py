"""Lenient access to ``results.json`` and number formatting for the report's prose and tables.

``results.json`` is read leniently (a missing field leaves its sentence or cell out, never
an error), so every reader goes through :func:`get_in` and :func:`is_number`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

__all__ = [
    "fmt_bytes",
    "fmt_delta",
    "fmt_eps",
    "fmt_num",
    "get_in",
    "is_number",
    "join_words",
    "plural",
]


def get_in(obj: Any, *keys: str, default: Any = None) -> Any:
    """``obj[k1][k2]...`` or ``default`` when any level is missing or not a mapping."""
    for k in keys:
        if not isinstance(obj, Mapping) or k not in obj:
            return default
        obj = obj[k]
    return default if obj is None else obj


def is_number(x: Any) -> TypeGuard[int | float]:
    """A finite int or float (not bool)."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def fmt_num(x: Any, digits: int = 4) -> str:
    """A number for people: integers with thousands separators, floats with ``digits``
    significant figures (scientific notation below 0.001 and from 1e6)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if not math.isfinite(x) or x == 0:
        return str(x) if x != 0 else "0"
    if 1e-3 <= abs(x) < 10**digits:
        return f"{x:.{digits}g}"
    if 10**digits <= abs(x) < 1e6:
        return f"{x:,.0f}"
    return f"{x:.{digits - 1}e}"


def fmt_eps(x: float) -> str:
    """ε for prose: two decimals (three significant figures below 0.1)."""
    return f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.3g}"


def fmt_delta(x: float) -> str:
    """δ for prose, e.g. ``1e-05``."""
    return f"{x:.3g}"


def fmt_bytes(n: float) -> str:
    """A byte count in decimal units (kB = 1000 B)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def join_words(words: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def plural(n: int, word: str) -> str:
    """``1 round``, ``2 rounds`` (``n`` with thousands separators)."""
    return f"{n:,} {word}{'s' * (n != 1)}"
