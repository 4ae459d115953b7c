"""The figures of a run's privacy ledger (``ledger.jsonl``) that the report shows.

The ledger is read with :func:`umbra.privacy.ledger.read_ledger`, the parser the privacy
layer resumes from, and ε is recomputed from the same contents with
:func:`umbra.privacy.ledger.compute_report` (dp-accounting), so the report shows exactly
what a replay of the ledger gives. A ledger cut short by a crash (a last line that is not
valid JSON) is summarised without that line, and says so; a ledger that cannot be read at
all is reported with the reason, never fatal to the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from umbra.errors import DataError
from umbra.privacy.ledger import LEDGER_VERSION, LedgerContents, compute_report, read_ledger

__all__ = ["LedgerSummary", "summarize_ledger"]

_SETTINGS = ("noise_multiplier", "clip_norm", "sample_rate")


@dataclass(frozen=True)
class LedgerSummary:
    """Figures of a privacy ledger (``ledger.jsonl``).

    Attributes:
        lines: records read (the header included); ``unreadable``: a truncated last line
            that was skipped (0 or 1).
        header: the header's ``unit``, ``delta``, ``accountant`` and ``version``.
        releases: number of releases; ``rounds``: rounds that released.
        parties: distinct parties (clients, or the server).
        groups: per parameter group: ``{"lines", "steps", "noise_multiplier",
            "clip_norm", "sample_rate"}`` (the last three as sorted distinct values).
        recomputed: ε recomputed from the ledger alone (``{"total", <group>}``), or None.
        recompute_error: why it could not be recomputed, if it could not.
        error: why the ledger could not be read at all (every figure is then empty).
        warnings: reading notes, such as a skipped truncated last line.
    """

    lines: int
    unreadable: int
    header: dict[str, Any]
    releases: int
    rounds: list[int]
    parties: int
    groups: dict[str, dict[str, Any]]
    recomputed: dict[str, float] | None = None
    recompute_error: str | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


def summarize_ledger(path: Path, *, recompute: bool = True) -> LedgerSummary | None:
    """Summarise ``path`` (None when it does not exist), optionally recomputing ε."""
    if not path.is_file():
        return None
    try:
        contents = read_ledger(path)
    except (DataError, OSError, UnicodeDecodeError) as exc:
        return LedgerSummary(
            lines=0, unreadable=0, header={}, releases=0, rounds=[], parties=0, groups={},
            error=str(exc),
        )  # fmt: skip
    recomputed: dict[str, float] | None = None
    error: str | None = None
    labels = contents.label_releases  # randomised response on labels (vertical label DP)
    if recompute and (contents.releases or labels):
        try:
            rep = compute_report(contents)
            recomputed = {k: float(v) for k, v in rep.epsilon.items()}
        except ValueError as exc:  # e.g. an accountant name this version does not know
            error = str(exc)
    return LedgerSummary(
        lines=1 + sum(len(r.groups) for r in contents.releases) + len(labels),
        unreadable=int(contents.truncated_tail),
        header={
            "unit": contents.unit,
            "delta": contents.delta,
            "accountant": contents.accountant,
            "version": LEDGER_VERSION,
        },
        releases=len(contents.releases) + len(labels),
        rounds=sorted({r.round for r in contents.releases} | {r.round for r in labels}),
        parties=len({r.party for r in contents.releases} | {r.party for r in labels}),
        groups=_groups(contents),
        recomputed=recomputed,
        recompute_error=error,
        warnings=list(contents.warnings),
    )


def _groups(contents: LedgerContents) -> dict[str, dict[str, Any]]:
    """Per group: its lines, steps in total and the distinct σ, C and q it was released at."""
    seen: dict[str, dict[str, Any]] = {}
    for r in contents.releases:
        for g in r.groups:
            entry = seen.setdefault(
                g.group, {"lines": 0, "steps": 0, **{k: set() for k in _SETTINGS}}
            )
            entry["lines"] += 1
            entry["steps"] += r.steps
            entry["noise_multiplier"].add(g.noise_multiplier)
            entry["clip_norm"].add(g.clip_norm)
            entry["sample_rate"].add(r.sample_rate)
    return {name: {k: sorted(v) if k in _SETTINGS else v for k, v in e.items()}
            for name, e in seen.items()}  # fmt: skip
