"""How many queries each client key may make to a service (pure book-keeping)."""

from __future__ import annotations

import threading

from umbra.services.errors import ServiceError

__all__ = ["QueryBudget", "QueryBudgetExhausted"]


class QueryBudgetExhausted(ServiceError):
    """A client key has used up its queries."""


class QueryBudget:
    """At most ``limit`` queries per key (None: unbounded); thread-safe."""

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"max_queries must be >= 1 or None, got {limit}")
        self.limit = limit
        self._used: dict[str, int] = {}
        self._lock = threading.Lock()

    def used(self, key: str) -> int:
        with self._lock:
            return self._used.get(key, 0)

    def charge(self, key: str) -> None:
        """Count one query of ``key``; raises QueryBudgetExhausted past the limit."""
        with self._lock:
            n = self._used.get(key, 0)
            if self.limit is not None and n >= self.limit:
                raise QueryBudgetExhausted(f"client {key} has used its {self.limit} queries")
            self._used[key] = n + 1
