"""Probe app: one query to every SuperNode, replies written to a file."""

__all__: list[str] = []
