"""Bytes on the wire vs fused accuracy for each update compression method.

Every method runs the `baseline` preset (same data, model, seed and rounds) through
Umbra's Flower simulation, one after the other in this process; ``bytes_up`` is the sum
of the serialized client replies Flower sent (results.json), so the ratio is of real
messages. ``--secure`` runs the same under SecAgg+ (uncompressed vs ``shared-k``; there
``bytes_up`` counts every masked-stage reply):

    .venv/bin/python bench/compression.py [--rounds 10] [--secure]

Writes bench/results/compression.json (merged with the rows already there) and
bench/results/compression.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import umbra  # noqa: F401
from umbra.config import load_config
from umbra.experiment import run_experiment

PLAIN = ("none", "q8", "q4", "topk", "shared-k")
SECURE = ("none", "shared-k")


def run_one(
    method: str, aggregation: str, rounds: int, fraction: float, seed: int = 0
) -> dict[str, Any]:
    """One baseline run; its final fused accuracy and the bytes its clients sent."""
    cfg = load_config("baseline", overrides=[
        f"compression.method={method}", f"compression.fraction={fraction}",
        f"secure.aggregation={aggregation}", f"federation.rounds={rounds}",
        f"run.eval_every={rounds}", "run.progress=false", f"run.seed={seed}",
    ])  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        res = run_experiment(cfg, Path(tmp) / method)
    return {
        "method": method,
        "aggregation": aggregation,
        "seed": seed,
        "fraction": fraction if method in ("topk", "shared-k") else None,
        "accuracy": res["final"]["accuracy"],
        "bytes_up": sum(int(r["bytes_up"]) for r in res["rounds"]),
        "train_s": res["timing"]["train_s"],
    }


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: each row against the uncompressed run of its aggregation."""
    ref = {(r["aggregation"], r.get("seed", 0)): r for r in rows if r["method"] == "none"}
    out = ["| aggregation | seed | method | bytes up (MB) | × uncompressed | fused accuracy | Δ points |",
           "|---|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        base = ref.get((r["aggregation"], r.get("seed", 0)))
        ratio = f"{int(r['bytes_up']) / int(base['bytes_up']):.3f}" if base else "–"
        delta = f"{100 * (float(r['accuracy']) - float(base['accuracy'])):+.1f}" if base else "–"
        name = f"{r['method']} ({r['fraction']})" if r["fraction"] else str(r["method"])
        out.append(f"| {r['aggregation']} | {r.get('seed', 0)} | {name} | {int(r['bytes_up']) / 1e6:.1f} | {ratio} | "
                   f"{float(r['accuracy']):.3f} | {delta} |")  # fmt: skip
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--secure", action="store_true", help="SecAgg+ rows instead of plaintext")
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--seed", type=int, default=0, help="run.seed (data, partition, init)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    aggregation = "secagg+" if args.secure else "none"
    methods = args.methods or (SECURE if args.secure else PLAIN)
    path = args.out / "compression.json"
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    rows = [
        r
        for r in old
        if not (
            r["aggregation"] == aggregation
            and r["method"] in methods
            and r.get("seed", 0) == args.seed
            and r["fraction"] in (None, args.fraction)
        )
    ]
    for method in methods:
        rows.append(run_one(method, aggregation, args.rounds, args.fraction, args.seed))
        print(rows[-1], flush=True)
        rows.sort(key=lambda r: (r["aggregation"] != "none", r.get("seed", 0),
                                 PLAIN.index(str(r["method"])), r["fraction"] or 0))  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"preset": "baseline", "rounds": args.rounds, "rows": rows},
                                   indent=2))  # fmt: skip
        (args.out / "compression.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
