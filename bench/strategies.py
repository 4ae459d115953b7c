"""FedAvg vs FedAvgM vs FedProx vs FedAdam vs SCAFFOLD under strong label skew (Dirichlet α = 0.1).

Every strategy runs the `baseline` preset (same data, model, seed and number of rounds)
through Umbra's Flower simulation, one after the other in this process:

    .venv/bin/python bench/strategies.py [--alpha 0.1] [--rounds 5]

Writes bench/results/strategies.json and prints a markdown table of final fused accuracy.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import umbra  # noqa: F401
from umbra.config import load_config
from umbra.experiment import run_experiment

STRATEGIES = ("fedavg", "fedavgm", "fedprox", "fedadam", "scaffold")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    rows = []
    for name in STRATEGIES:
        cfg = load_config("baseline", overrides=[
            f"federation.strategy={name}", f"data.alpha={args.alpha}",
            f"federation.rounds={args.rounds}", "run.progress=false",
        ])  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            res = run_experiment(cfg, Path(tmp) / name)
        final = res["final"]
        rows.append({
            "strategy": name, "accuracy": final["accuracy"], "macro_f1": final["macro_f1"],
            "per_round": [r.get("accuracy") for r in res["rounds"]],
            "train_s": res["timing"]["train_s"],
        })  # fmt: skip
        print(name, final["accuracy"], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "strategies.json").write_text(
        json.dumps({"alpha": args.alpha, "rounds": args.rounds, "rows": rows}, indent=2)
    )
    print(
        f"| strategy (α = {args.alpha}, {args.rounds} rounds) | fused accuracy | macro-F1 | ratio to FedAvg |"
    )
    print("|---|---:|---:|---:|")
    base = rows[0]["accuracy"]
    for r in rows:
        print(
            f"| {r['strategy']} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {r['accuracy'] / base:.2f} |"
        )


if __name__ == "__main__":
    main()
