"""Time per round on Flower's Deployment Engine (loopback, TLS, SuperNode authentication)
against Flower's simulation engine, same preset and seed, measured in one run.

    PYTHONPATH=src .venv/bin/python bench/deployment.py [--preset baseline] [--rounds 4]
        [--stock] [--set key=value ...]

Runs, one after the other, in fresh Python processes:

1. ``umbra run`` (simulation engine, Ray actors);
2. ``umbra deploy local`` (a SuperLink and one SuperNode per organisation, TLS and node
   authentication, the ClientApps forked from Umbra's warm host, 0.25 s idle poll);
3. with ``--stock``: the same deployment with Flower's own SuperExec (a fresh
   ``flwr-clientapp`` process per message) and its 3 s idle poll.

Round 1 includes start-up on both engines (Ray's workers; the first ClientApps), so the
figure is ``steady_round_s``: the median wall time of rounds 2..R as the server's round
loop measures it (``wall_s`` of each round row). ``ratio`` is deployment / simulation.
``steady_round_cpu_s`` is the median CPU time per round of the whole process tree (every
process either engine starts), read at each round's end: less sensitive than wall time
to other jobs on the machine, and it says what a round costs in all.
Final accuracies are compared too: with the same seed the two engines train the same
model, so they must agree.

Writes bench/results/deployment.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "deployment.json"

CHILD = r"""
import json, sys, time
from pathlib import Path
import psutil
from umbra.config import load_config
from umbra.experiment import run_experiment
from umbra.run.deploy import plan_local

mode, preset, out, overrides = sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
rows = []
me = psutil.Process()

def cpu_s():
    # CPU seconds of this process and every process below it (Ray's workers; the SuperLink,
    # SuperNodes, ClientApp hosts and ServerApp), read at the end of each round
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            c = p.cpu_times()
            total += c.user + c.system
        except psutil.Error:
            pass
    return total

def on_round(row):
    rows.append({**row, "cpu_s_total": cpu_s()})

t0 = time.monotonic()
if mode == "simulation":
    cfg = load_config(preset, overrides=overrides)
    results = run_experiment(cfg, out, on_round=on_round)
else:
    plan = plan_local(preset=preset, overrides=overrides, nodes=None, out=out, resume=None)
    plan.runner.stock_flower = mode == "stock"
    results = run_experiment(plan.cfg, out, on_round=on_round, runner=plan.runner)
print(json.dumps({"rows": rows, "final": results["final"], "total_s": time.monotonic() - t0}))
"""


def run_one(mode: str, preset: str, overrides: list[str], folder: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, preset, str(folder / mode), json.dumps(overrides)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    rows = out["rows"]
    walls = [float(r["wall_s"]) for r in rows]
    cpu = [float(r["cpu_s_total"]) for r in rows]
    cpu_rounds = [b - a for a, b in itertools.pairwise(cpu)]  # rounds 2..R
    return {
        "mode": mode,
        "process_s": time.monotonic() - t0,
        "round_s": walls,
        "first_round_s": walls[0],
        "steady_round_s": statistics.median(walls[1:]) if len(walls) > 1 else walls[0],
        "round_cpu_s": cpu_rounds,
        "steady_round_cpu_s": statistics.median(cpu_rounds) if cpu_rounds else None,
        "accuracy": [r.get("accuracy") for r in rows],
        "final_accuracy": out["final"].get("accuracy"),
        "final_macro_f1": out["final"].get("macro_f1"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="baseline")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--stock", action="store_true", help="also Flower's stock SuperNode")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    overrides = [f"federation.rounds={args.rounds}", *args.sets]
    modes = ["simulation", "deployment"] + (["stock"] if args.stock else [])
    with tempfile.TemporaryDirectory(prefix="umbra-bench-deploy-") as tmp:
        runs = [run_one(m, args.preset, overrides, Path(tmp)) for m in modes]
    sim = runs[0]
    for r in runs:
        r["ratio"] = r["steady_round_s"] / sim["steady_round_s"]
        if r["steady_round_cpu_s"] and sim["steady_round_cpu_s"]:
            r["cpu_ratio"] = r["steady_round_cpu_s"] / sim["steady_round_cpu_s"]
        r["accuracy_diff_points"] = 100 * (r["final_accuracy"] - sim["final_accuracy"])
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_after": os.getloadavg(),
        "command": "PYTHONPATH=src .venv/bin/python bench/deployment.py " + " ".join(sys.argv[1:]),
        "preset": args.preset,
        "overrides": overrides,
        "runs": runs,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=2) + "\n")
    print(
        "| engine | round 1 s | steady round s | ratio | CPU s per round | ratio | final accuracy |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        cpu = r["steady_round_cpu_s"]
        cpu_text = "-" if cpu is None else f"{cpu:.1f} | {r.get('cpu_ratio', float('nan')):.2f}"
        print(f"| {r['mode']} | {r['first_round_s']:.1f} | {r['steady_round_s']:.1f} | "
              f"{r['ratio']:.2f} | {cpu_text} | {r['final_accuracy']:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
