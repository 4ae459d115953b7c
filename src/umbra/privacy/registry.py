"""A name registry for pluggable privacy parts (DP modes, client policies, DP-SGD backends),
in the shape of Opacus' ``accountants/registry.py``: a dict behind ``register``, where a
name registered twice raises and an unknown name raises a one-line ValueError."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """``name -> entry``; ``what`` names the setting in errors (e.g. ``"backend"``)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; a name taken already raises ValueError."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry registered as ``name``; an unknown name raises ValueError."""
        if name not in self._entries:
            names = [repr(n) for n in self._entries]
            known = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
            raise ValueError(f"{self.what} must be {known or 'registered'}, got {name!r}")
        return self._entries[name]

    def copy(self) -> Registry[T]:
        """An independent registry with the same entries."""
        out = Registry[T](self.what)
        out._entries = dict(self._entries)
        return out

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
