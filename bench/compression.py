"""Bytes on the wire vs fused accuracy for each update compression method.

Every method runs the `baseline` preset (same data, model, seed and rounds) through
Umbra's Flower simulation, one after the other in this process; ``bytes_up`` is the sum
of the serialized client replies Flower sent (results.json), so the ratio is of real
messages. ``--secure`` runs the same under SecAgg+ (uncompressed vs ``shared-k``; there
``bytes_up`` counts every masked-stage reply). ``--support`` picks ``shared-k``'s
coordinates (``cyclic`` or ``last-update``, with ``--cyclic-share``), ``--value-bits`` the
width of its kept values (16 under ``--secure``: SecAgg+'s 16-bit ring):

    .venv/bin/python bench/compression.py [--rounds 40] [--secure] [--seed 0]
        [--methods none q8 q4 topk shared-k] [--fraction 0.1] [--support cyclic]
        [--value-bits 32]

Writes bench/results/compression.json (merged with the rows already there) and
bench/results/compression.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import umbra  # noqa: F401
from umbra.config import load_config
from umbra.experiment import run_experiment

PLAIN = ("none", "q8", "q4", "topk", "shared-k")
SECURE = ("none", "shared-k")


def run_one(
    method: str,
    aggregation: str,
    rounds: int,
    fraction: float,
    seed: int = 0,
    support: str = "cyclic",
    cyclic_share: float = 0.5,
    feedback: bool = True,
    value_bits: int = 32,
) -> dict[str, Any]:
    """One baseline run; its final fused accuracy and the bytes its clients sent."""
    cfg = load_config("baseline", overrides=[
        f"compression.method={method}", f"compression.fraction={fraction}",
        f"compression.support={support}", f"compression.cyclic_share={cyclic_share}",
        f"compression.error_feedback={str(feedback).lower()}",
        f"compression.value_bits={value_bits if method == 'shared-k' else 32}",
        f"secure.aggregation={aggregation}", f"federation.rounds={rounds}",
        f"run.eval_every={rounds}", "run.progress=false", f"run.seed={seed}",
    ])  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        res = run_experiment(cfg, Path(tmp) / method)
    shared = method == "shared-k"
    return {
        "method": method,
        "aggregation": aggregation,
        "seed": seed,
        "rounds": rounds,
        "fraction": fraction if method in ("topk", "shared-k") else None,
        "support": _support(support, cyclic_share, feedback, value_bits) if shared else None,
        "accuracy": res["final"]["accuracy"],
        "bytes_up": sum(int(r["bytes_up"]) for r in res["rounds"]),
        "bytes_down": sum(int(r["bytes_down"]) for r in res["rounds"]),
        "train_s": res["timing"]["train_s"],
    }


def _support(support: str, cyclic_share: float, feedback: bool = True, bits: int = 32) -> str:
    """shared-k's coordinates as the tables name them (``no EF``: without error feedback;
    ``16-bit``: the kept values' width when not float32)."""
    name = support if support == "cyclic" else f"{support} {cyclic_share}"
    name = name if feedback else f"{name}, no EF"
    return name if bits == 32 else f"{name}, {bits}-bit"


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies a row (a rerun replaces it)."""
    return (r["aggregation"], r.get("seed", 0), r.get("rounds", 10), r["method"],
            r["fraction"], r.get("support"))  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: each row against the uncompressed run of its aggregation."""

    def ref_key(r: dict[str, Any]) -> tuple[Any, ...]:
        return r["aggregation"], r.get("seed", 0), r.get("rounds", 10)

    ref = {ref_key(r): r for r in rows if r["method"] == "none"}
    out = ["| rounds | aggregation | seed | method | bytes up (MB) | × uncompressed | fused accuracy | Δ points |",
           "|---:|---|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        base = ref.get(ref_key(r))
        ratio = f"{int(r['bytes_up']) / int(base['bytes_up']):.3f}" if base else "–"
        delta = f"{100 * (float(r['accuracy']) - float(base['accuracy'])):+.1f}" if base else "–"
        what = ", ".join(str(p) for p in (r["fraction"], r.get("support")) if p)
        name = f"{r['method']} ({what})" if what else str(r["method"])
        out.append(f"| {r.get('rounds', 10)} | {r['aggregation']} | {r.get('seed', 0)} | {name} | "
                   f"{int(r['bytes_up']) / 1e6:.1f} | {ratio} | {float(r['accuracy']):.3f} | {delta} |")  # fmt: skip
    return "\n".join(out)


def paired(rows: list[dict[str, Any]]) -> str:
    """Markdown: each method's accuracy difference to the uncompressed run of the same
    seed (and rounds, aggregation), mean and standard error over the seeds."""
    ref = {(r["aggregation"], r.get("seed", 0), r.get("rounds", 10)): float(r["accuracy"])
           for r in rows if r["method"] == "none"}  # fmt: skip
    groups: dict[tuple[Any, ...], list[tuple[float, float]]] = {}
    for r in rows:
        base = ref.get((r["aggregation"], r.get("seed", 0), r.get("rounds", 10)))
        if r["method"] == "none" or base is None:
            continue
        key = (r.get("rounds", 10), r["aggregation"], r["method"], r["fraction"], r.get("support"))
        bytes_ref = next(int(b["bytes_up"]) for b in rows if b["method"] == "none"
                         and _key(b)[:3] == _key(r)[:3])  # fmt: skip
        groups.setdefault(key, []).append(
            (100 * (float(r["accuracy"]) - base), int(r["bytes_up"]) / bytes_ref)
        )
    out = ["| rounds | aggregation | method | seeds | × uncompressed | Δ points (mean ± s.e.) |",
           "|---:|---|---|---:|---:|---:|"]  # fmt: skip
    for (rounds, agg, method, fraction, support), pairs in sorted(groups.items(), key=str):
        d = np.array([p[0] for p in pairs])
        se = f" ± {float(d.std(ddof=1) / np.sqrt(d.size)):.2f}" if d.size > 1 else ""
        what = ", ".join(str(p) for p in (fraction, support) if p)
        name = f"{method} ({what})" if what else str(method)
        out.append(f"| {rounds} | {agg} | {name} | {d.size} | {max(p[1] for p in pairs):.3f} | "
                   f"{d.mean():+.2f}{se} |")  # fmt: skip
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--secure", action="store_true", help="SecAgg+ rows instead of plaintext")
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--seed", type=int, default=0, help="run.seed (data, partition, init)")
    ap.add_argument("--support", default="cyclic", help="shared-k: cyclic or last-update")
    ap.add_argument("--cyclic-share", type=float, default=0.5, help="last-update's cyclic share")
    ap.add_argument("--no-feedback", action="store_true", help="compression.error_feedback=false")
    ap.add_argument("--value-bits", type=int, default=32, choices=(32, 16, 8),
                    help="shared-k: compression.value_bits")  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    aggregation = "secagg+" if args.secure else "none"
    methods = args.methods or (SECURE if args.secure else PLAIN)
    path = args.out / "compression.json"
    for method in methods:
        row = run_one(method, aggregation, args.rounds, args.fraction, args.seed,
                      args.support, args.cyclic_share, not args.no_feedback,
                      args.value_bits)  # fmt: skip
        print(row, flush=True)
        # merged with the rows on disk now (another process may have written some)
        old = json.loads(path.read_text())["rows"] if path.exists() else []
        rows = [r for r in old if _key(r) != _key(row)] + [row]
        rows.sort(key=lambda r: (r.get("rounds", 10), r["aggregation"] != "none", r.get("seed", 0),
                                 PLAIN.index(str(r["method"])), r["fraction"] or 0,
                                 r.get("support") or ""))  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"preset": "baseline", "rows": rows}, indent=2))
        (args.out / "compression.md").write_text(table(rows) + "\n\n" + paired(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
