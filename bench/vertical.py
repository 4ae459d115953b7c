"""Vertical federation on ``fmnist-avt``: 3 parties (images / audio / text + labels), 70 % of
the entities held by all three, trained by split learning on Flower's simulation engine.

    PYTHONPATH=src .venv/bin/python bench/vertical.py [--n-train 4000] [--rounds 20]
        [--label-eps 1 2 4] [--pairs 1] [--set key=value ...]

Runs in this process, one after the other (same machine, same load):

1. the centralized reference: the same network from the same initial weights, trained on
   the pooled aligned records (each entity with the modalities of the parties that hold
   it) with the label holder's batches, labels and SGD settings for the same epochs
   (:func:`umbra.vertical.reference.train_centralized`): like for like with the split run;
2. for contrast, the horizontal code's centralized trainer
   (``umbra.federation.train.train_local``: its own batch order, epochs counted in steps)
   on the same records: another trajectory of the same model;
3. ``umbra run --preset vertical`` unprotected;
4. the same with the secure embedding sum (``vertical.secure_sum = true``);
5. the same with label DP (``vertical.label_dp = "randomized-response"``) at each ε.

Reported per run: fused test accuracy after the last epoch and its mean over the last
``--tail`` epochs (single epochs move by a few points), each against the reference, seconds
(the median epoch after the first, which includes the parties' start-up) and serialized
bytes per epoch (secure / unprotected as ratios), the norm and direction label-leakage
attacks' AUC at the image party (gradients of the last epoch, true labels), and the PSI
alignment time and bytes. Writes bench/results/vertical.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "vertical.json"


def _references(cfg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The like-for-like centralized reference and the centralized trainer's run."""
    import torch

    from umbra.federation.server_app import initial_arrays, load_model
    from umbra.federation.train import Batchable, evaluate, train_local
    from umbra.run.prepare import model_spec_for, prepare_data
    from umbra.run.simulation import train_settings
    from umbra.vertical.build import build_vertical
    from umbra.vertical.reference import train_centralized

    torch.set_num_threads(1)
    prep = prepare_data(cfg)
    spec = model_spec_for(cfg, prep.train)
    init = initial_arrays(spec, cfg.run.seed)
    test = Batchable.from_data(prep.test)
    fed = cfg.federation
    curve: list[float] = []

    def accuracy(model: Any) -> float:
        acc = evaluate(model, test, subsets=[])["accuracy"]
        assert isinstance(acc, float)
        return acc

    with tempfile.TemporaryDirectory() as tmp:
        setup = build_vertical(cfg, prep.train, spec, work_dir=Path(tmp) / "w",
                               state_root=Path(tmp) / "s", init=init)  # fmt: skip
        pooled, _ = setup.pooled(prep.train)
        t0 = time.perf_counter()
        train_centralized(setup, prep.train, spec, epochs=fed.rounds, lr=fed.lr,
                          momentum=fed.momentum, weight_decay=fed.weight_decay,
                          on_epoch=lambda _e, m: curve.append(accuracy(m)))  # fmt: skip
        same = {"accuracy": curve[-1], "accuracy_by_epoch": curve, "records": len(pooled),
                "train_s": time.perf_counter() - t0}  # fmt: skip
    model = load_model(spec, init)
    settings = replace(train_settings(cfg), epochs=float(fed.rounds))
    t0 = time.perf_counter()
    train_local(model, Batchable.from_data(pooled), settings, seed=cfg.run.seed)
    trainer = {"accuracy": accuracy(model), "records": len(pooled),
               "steps": settings.steps(len(pooled)), "train_s": time.perf_counter() - t0}  # fmt: skip
    return same, trainer


def _run(name: str, overrides: list[str], base: Path) -> dict[str, Any]:
    from umbra.config import resolve_config
    from umbra.experiment import run_experiment

    cfg = resolve_config(preset="vertical", overrides=overrides).config
    t0 = time.perf_counter()
    res = run_experiment(cfg, base / name)
    v = res["vertical"]
    image = next(a for a in v["label_leakage"] if a["party"] == 0)
    rounds = res["rounds"]
    return {
        "name": name,
        "overrides": overrides,
        "accuracy": res["final"]["accuracy"],
        "accuracy_by_epoch": [r["accuracy"] for r in res["rounds"]],
        "per_modality_accuracy": res["final"]["per_modality_accuracy"],
        # epoch 1 includes each party's start-up (data, model): the median of the others
        "seconds_per_epoch": statistics.median(r["wall_s"] for r in rounds[1:] or rounds),
        "bytes_per_epoch": v["bytes_per_epoch"],
        "round_trips_per_epoch": rounds[0]["round_trips"],
        "direction_auc": image.get("direction_auc"),
        "norm_auc": image.get("norm_auc"),
        "norm_auc_either_sign": image.get("norm_auc_either_sign"),
        "label_dp": v["label_dp"],
        "psi_s": v["psi"]["seconds"],
        "psi_bytes": v["psi"]["bytes"],
        "aligned_entities": v["aligned_entities"],
        "held_by_all": v["held_by_all"],
        "secure_sum_single_contributor": v["secure_sum_single_contributor"],
        "wall_s": time.perf_counter() - t0,
    }


def _tail(curve: list[float], n: int) -> float:
    return statistics.fmean(curve[-n:])


def _table(out: dict[str, Any]) -> str:
    ref = out["reference"]
    n = out["setup"]["tail"]
    ref_tail = _tail(ref["accuracy_by_epoch"], n)
    trainer = out["centralized_trainer"]
    lines = [
        f"| run | fused acc | mean of last {n} epochs | vs centralized (last / mean) | s / epoch "
        "| bytes / epoch | direction AUC | norm AUC (either sign) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| centralized reference (same batches, {ref['records']} aligned records) "
        f"| {ref['accuracy']:.3f} | {ref_tail:.3f} | | | | | |",
    ]
    for r in out["runs"]:
        tail = _tail(r["accuracy_by_epoch"], n)
        lines.append(
            f"| {r['name']} | {r['accuracy']:.3f} | {tail:.3f} | "
            f"{r['accuracy'] - ref['accuracy']:+.3f} / {tail - ref_tail:+.3f} | "
            f"{r['seconds_per_epoch']:.1f} | {r['bytes_per_epoch'] / 1e6:.2f} MB | "
            f"{r['direction_auc']:.3f} | {r['norm_auc']:.3f} ({r['norm_auc_either_sign']:.3f}) |"
        )
    ratio = out["secure_over_plain"]
    lines.append(
        f"\nThe horizontal code's centralized trainer (`train_local`: its own batch order, "
        f"{trainer['steps']} steps) on the same records: {trainer['accuracy']:.3f}."
        "\n\nSecure sum / unprotected, per pair of runs made one after the other: time per epoch "
        + ", ".join(f"{x:.2f}x" for x in ratio["seconds_per_epoch"])
        + "; bytes per epoch "
        + ", ".join(f"{x:.3f}x" for x in ratio["bytes_per_epoch"])
        + "."
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--label-eps", type=float, nargs="*", default=[1.0, 2.0, 4.0])
    ap.add_argument("--pairs", type=int, default=1, help="unprotected / secure-sum run pairs")
    ap.add_argument("--tail", type=int, default=5, help="epochs averaged for the mean accuracy")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    args = ap.parse_args()
    from umbra.config import resolve_config

    base_sets = [f"data.n_train={args.n_train}", f"federation.rounds={args.rounds}", *args.sets]
    cfg = resolve_config(preset="vertical", overrides=base_sets).config
    load_before = os.getloadavg()[0]
    reference, trainer = _references(cfg)
    out: dict[str, Any] = {"reference": reference, "centralized_trainer": trainer, "runs": []}
    print("reference", json.dumps(out["reference"]), flush=True)
    print("centralized trainer", json.dumps(trainer), flush=True)
    plans: list[tuple[str, list[str]]] = []
    for i in range(args.pairs):  # alternating, so that both see the same machine load
        tag = "" if i == 0 else f" (repeat {i})"
        plans += [("unprotected" + tag, []), ("secure sum" + tag, ["vertical.secure_sum=true"])]
    plans += [(f"label DP ε={e:g}", ["vertical.label_dp=randomized-response",
                                     f"vertical.label_epsilon={e}"]) for e in args.label_eps]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in plans:
            row = _run(name, [*base_sets, *extra], Path(tmp))
            out["runs"].append(row)
            print(json.dumps({k: row[k] for k in ("name", "accuracy", "accuracy_by_epoch",
                                                  "seconds_per_epoch", "bytes_per_epoch",
                                                  "direction_auc", "norm_auc")}), flush=True)  # fmt: skip
    runs = out["runs"]
    pairs = [(runs[2 * i], runs[2 * i + 1]) for i in range(args.pairs)]
    out["secure_over_plain"] = {
        "seconds_per_epoch": [s["seconds_per_epoch"] / p["seconds_per_epoch"] for p, s in pairs],
        "bytes_per_epoch": [s["bytes_per_epoch"] / p["bytes_per_epoch"] for p, s in pairs],
    }
    out["setup"] = {
        "command": "PYTHONPATH=src .venv/bin/python bench/vertical.py " + " ".join(sys.argv[1:]),
        "n_train": args.n_train, "rounds": args.rounds, "pairs": args.pairs, "tail": args.tail,
        "sets": args.sets, "cpus": os.cpu_count(), "load_before": load_before,
        "load_after": os.getloadavg()[0], "python": platform.python_version(),
        "date": datetime.now(UTC).date().isoformat(),
    }  # fmt: skip
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    table = _table(out)
    plain = out["runs"][0]
    note = (
        f"\n\nPSI alignment (label holder with each other party, openmined-psi): "
        f"{plain['psi_s']:.1f} s, {plain['psi_bytes']:,} bytes; {plain['aligned_entities']} "
        f"aligned entities, {plain['held_by_all']} held by all three. "
        f"{os.cpu_count()} CPUs, 1-min load average {load_before:.1f} before, "
        f"{out['setup']['load_after']:.1f} at the end; {out['setup']['date']}.\n\n"
        f"`{out['setup']['command']}`\n"
    )
    OUT.with_suffix(".md").write_text(table + note)
    print(table + note)


if __name__ == "__main__":
    main()
