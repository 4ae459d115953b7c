"""The body of ``umbra synth DIR --n N`` (registered in :mod:`umbra.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["synth_command"]

console = Console()


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:.3f}"


def synth_command(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder")],
    n: Annotated[int, typer.Option("--n", help="synthetic records to write (>= 1)")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="folder of the synthetic set (default: DIR/synthetic)"),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override one synth setting: synth.key=value (repeatable)"),
    ] = None,
) -> None:
    """Fit a DP class-conditional generator across the run's organisations (accounted in
    its own ledger.jsonl) and write N synthetic records: features.npz, rendered images as
    manifest.csv, and synth.json with train-on-synthetic/test-on-real accuracy, fidelity
    and a membership attack on the generator; see docs/synthetic.md."""
    from umbra.synth.synthesis import synthesize

    summary = synthesize(
        run_dir,
        n,
        out=out,
        overrides=set_ or [],
        on_status=lambda s: console.print(f"[dim]{s}[/]", highlight=False),
    )
    table = Table(title=f"Train on {n} synthetic records, test on the real held-out ones")
    table.add_column("modalities")
    table.add_column("accuracy", justify="right")
    for name, acc in summary["tstr"]["accuracy"].items():
        table.add_row(name, _fmt(acc))
    console.print(table)
    p, m = summary["privacy"], summary["membership"]
    both = p["epsilon_with_run"]
    console.print(
        f"ε = {p['epsilon']:.3f} at δ = {p['delta']:g} (generator)"
        + ("" if both is None else f", {both:.3f} with the run's training")
        + f"; membership attack AUC {m['auc']:.3f}; Fréchet distance "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in summary["fidelity"]["per_modality"].items()),
        highlight=False,
    )
    noise = p["noise"]
    console.print(f"noise: {noise['mode']}; ε holds against {noise['holds_against']}",
                  highlight=False)  # fmt: skip
    target = out if out is not None else run_dir / "synthetic"
    console.print(f"written: {target} ({summary['seconds']:.0f} s)", highlight=False)
