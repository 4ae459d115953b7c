"""``umbra data inspect``: counts over a manifest's records from the cells alone."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from umbra.data.manifest.table import modality_columns, natural_key, natural_order, read_table

__all__ = ["ManifestSummary", "inspect_manifest", "summarize_manifest"]


@dataclass(frozen=True)
class ManifestSummary:
    """Counts over a manifest's records, from the cells alone (no file is opened).

    ``patterns`` maps the tuple of present modalities (canonical order) to its count.
    """

    path: Path
    records: int
    per_client: dict[str, int] | None
    per_label: dict[str, int]
    per_modality: dict[str, int]
    patterns: dict[tuple[str, ...], int]


def summarize_manifest(path: Path) -> ManifestSummary:
    """Count records per client, label, modality and missing-modality pattern."""
    path = Path(path)
    table = read_table(path)
    cells = table.cells
    mod_cols = modality_columns(table.columns)
    n = len(table.rows)
    has = {m: [any(cells[c][i] for c in cols) for i in range(n)] for m, cols in mod_cols.items()}
    patterns: Counter[tuple[str, ...]] = Counter(
        tuple(m for m in mod_cols if has[m][i]) for i in range(n)
    )
    per_label = Counter(cells["label"])
    return ManifestSummary(
        path=path,
        records=n,
        per_client=(
            dict(sorted(Counter(cells["client"]).items(), key=lambda kv: natural_key(kv[0])))
            if "client" in cells
            else None
        ),
        per_label={k: per_label[k] for k in natural_order(per_label)},
        per_modality={m: sum(v) for m, v in has.items()},
        patterns=dict(sorted(patterns.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


def inspect_manifest(path: Path) -> Table:
    """A rich table: records per client, per label, per modality, and per modality pattern."""
    s = summarize_manifest(path)
    mods = list(s.per_modality)

    def share(k: int) -> str:
        return f"{100 * k / s.records:.1f}%"

    table = Table(title=f"{s.path} — {s.records} records", title_justify="left")
    table.add_column("group")
    table.add_column("value")
    table.add_column("records", justify="right")
    table.add_column("share", justify="right")

    def section(name: str, items: Iterable[tuple[str, int]]) -> None:
        items = list(items)
        for j, (key, k) in enumerate(items):
            table.add_row(
                name if j == 0 else "", key, str(k), share(k), end_section=j == len(items) - 1
            )

    def pattern(p: tuple[str, ...]) -> str:
        missing = [m for m in mods if m not in p]
        return (" + ".join(p) or "(none)") + (f"  (missing {', '.join(missing)})" * bool(missing))

    if s.per_client is not None:
        section("client", [(c or "(empty)", k) for c, k in s.per_client.items()])
    section("label", [(lab or "(empty)", k) for lab, k in s.per_label.items()])
    section("modality", s.per_modality.items())
    section("present / missing", [(pattern(p), k) for p, k in s.patterns.items()])
    return table
