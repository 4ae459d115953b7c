"""Problems found in a manifest: a bad row, the error that lists them all, and its text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from umbra.errors import DataError

__all__ = ["MAX_REPORTED_ROWS", "ON_BAD_ROWS", "BadRow", "ManifestError", "format_problems"]


#: Accepted values of ``on_bad_rows``.
ON_BAD_ROWS: tuple[str, ...] = ("error", "skip")
#: How many bad rows a :class:`ManifestError` message lists (the rest are counted).
MAX_REPORTED_ROWS = 50


@dataclass(frozen=True)
class BadRow:
    """One problem in a manifest.

    Attributes:
        row: CSV: the line number where the record starts (the header is line 1);
            Parquet: the record number, from 1.
        column: the column at fault (several, comma-separated, when the record as a whole is).
        reason: what is wrong, in plain words.
    """

    row: int
    column: str
    reason: str


class ManifestError(DataError):
    """Every bad row of a manifest (and every client-level problem), reported together.

    Attributes:
        bad_rows: all bad rows, in row order (the message lists the first
            :data:`MAX_REPORTED_ROWS` and counts the rest).
        problems: problems that belong to no single row (e.g. a client with no records).
    """

    def __init__(
        self,
        path: Path,
        bad_rows: Sequence[BadRow],
        problems: Sequence[str] = (),
        *,
        row_kind: str = "record number",
    ) -> None:
        self.path = path
        self.bad_rows = tuple(bad_rows)
        self.problems = tuple(problems)
        super().__init__(format_problems(path, self.bad_rows, self.problems, row_kind=row_kind))


def format_problems(
    path: Path, bad_rows: Sequence[BadRow], problems: Sequence[str], *, row_kind: str
) -> str:
    """A block of text listing ``problems`` and the first :data:`MAX_REPORTED_ROWS` bad rows."""
    lines: list[str] = []
    if bad_rows:
        n_rows = len({b.row for b in bad_rows})
        lines.append(
            f"manifest {path}: {n_rows} bad row{'s' * (n_rows != 1)} "
            f"({len(bad_rows)} problem{'s' * (len(bad_rows) != 1)}; row = {row_kind}):"
        )
        shown = bad_rows[:MAX_REPORTED_ROWS]
        w_row = max(len(str(b.row)) for b in shown)
        w_col = max(len(b.column) for b in shown)
        lines += [f"  row {b.row:>{w_row}}  {b.column:<{w_col}}  {b.reason}" for b in shown]
        if len(bad_rows) > len(shown):
            lines.append(f"  ... and {len(bad_rows) - len(shown)} more not shown")
    if problems:
        lines.append(f"manifest {path}:" if not bad_rows else "and:")
        lines += [f"  {p}" for p in problems]
    if bad_rows:
        lines.append("Fix these rows, or set data.on_bad_rows=skip to skip the bad rows.")
    return "\n".join(lines)
