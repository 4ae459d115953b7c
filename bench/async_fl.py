"""Buffered asynchronous aggregation (FedBuff) against synchronous FedAvg, on one virtual
clock, with 20 % stragglers at 10x slowdown.

Both runs use the same data, model, seed and client speeds (``federation.speed_sigma``,
``straggler_fraction``, ``straggler_slowdown``): a client's compute time for one local
training is 1 virtual second times its speed factor. A synchronous round lasts as long
as its slowest sampled client; an asynchronous release happens when its buffer of ``K``
updates is full (the clock of `umbra.federation.buffered.clock`). The synchronous run's
final fused accuracy is the target; the number is the virtual time the asynchronous run
needs to first reach it, divided by the time the synchronous run needs to first reach it.
Variants: plaintext, SecAgg+ (each buffer one secure-aggregation instance among its K
clients) and example-level DP (DP-SGD in every client; every release in the ledger).

The runs drive Umbra's ServerApp loop and the real ClientApp through an in-process Grid
(no Ray workers: the clock is virtual, so wall time does not enter the number); every
round and release is evaluated, and the asynchronous run stops once it reaches the target
(or after ``--max-releases``):

    .venv/bin/python bench/async_fl.py [--rounds 8] [--max-releases 40] [--variants plain,secagg+,dp]

Writes bench/results/async.json (merged with the rows already there: a row is replaced by
one of the same variant, rounds, buffer size, release cap and ``--repeat``) and
bench/results/async.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import umbra  # noqa: F401
from umbra.config import Config, load_config
from umbra.federation.buffered.loop import client_durations
from umbra.federation.buffered.speeds import sync_round_time
from umbra.federation.client_data import write_federation_data
from umbra.federation.in_process_grid import InProcessGrid
from umbra.federation.server_app import RunResult, ServerSpec, run_rounds
from umbra.run.folder import client_state_root
from umbra.run.prepare import PreparedData, model_spec_for, prepare_data
from umbra.run.simulation import secure_setup, train_settings

OUT = Path(__file__).parent / "results"
#: the federation every variant shares: smoke data, 10 organisations, 20 % stragglers at 10x
COMMON = [
    "federation.num_clients=10",
    "federation.local_epochs=1",
    "federation.speed_sigma=0.3",
    "federation.straggler_fraction=0.2",
    "federation.straggler_slowdown=10",
    "run.progress=false",
]
VARIANTS = {
    "plain": [],
    "secagg+": ["secure.aggregation=secagg+"],
    "dp": ["privacy.mode=example", "privacy.epsilon=8"],
}


def in_process_runner(
    cfg: Config, run_dir: Path, prep: PreparedData, model_spec: dict[str, Any], on_round: Any
) -> RunResult:
    """`umbra.run.simulation.run_federated` with an in-process Grid instead of Ray."""
    from umbra.federation.attacks import AttackSpec
    from umbra.federation.client_app import ClientSpec, make_client_app

    transport, secure, identities = secure_setup(cfg)
    fed_dir = run_dir / ".federation"
    write_federation_data(fed_dir / "train", prep.train, prep.parts, prep.masks)
    write_federation_data(fed_dir / "test", prep.test, [np.arange(len(prep.test))],
                          [prep.test.mask])  # fmt: skip
    spec = ServerSpec.from_config(cfg, run_dir=str(run_dir), test_dir=str(fed_dir / "test"),
                                  model_spec=model_spec, secure=secure, transport=transport,
                                  on_round=on_round)  # fmt: skip
    app = make_client_app(
        ClientSpec(
            data_dir=str(fed_dir / "train"),
            state_dir=str(client_state_root(run_dir)),
            model_spec=model_spec,
            settings=train_settings(cfg),
            seed=cfg.run.seed,
            transports=(transport,) if transport is not None else (),
            secure=secure,
            identities=identities,
            privacy_unit=cfg.privacy.mode,
            attack=AttackSpec.from_config(cfg),
        )
    )
    return run_rounds(
        spec, InProcessGrid(app, [10_000 + i for i in range(cfg.federation.num_clients)]).as_grid()
    )


def virtual_times(cfg: Config, rows: list[dict[str, Any]]) -> list[float]:
    """The virtual clock at the end of each row: an async row says it; a synchronous round
    lasts as long as its slowest participant (`sync_round_time`)."""
    if cfg.federation.mode == "async":
        return [float(r["virtual_s"]) for r in rows]
    durations = client_durations(cfg.federation, cfg.run.seed)
    out, now = [], 0.0
    for r in rows:
        now += sync_round_time(durations, [int(p) for p in r["bytes_per_client"]])
        out.append(now)
    return out


def time_to(times: list[float], accuracies: list[float], target: float) -> float | None:
    """The first virtual time at which the accuracy reaches ``target`` (None: never)."""
    return next((t for t, a in zip(times, accuracies, strict=True) if a >= target - 1e-12), None)


class _Reached(Exception):
    """Raised from the round callback once the target accuracy is reached."""


def run_one(
    overrides: list[str], target: float | None = None
) -> tuple[Config, list[dict[str, Any]]]:
    """One run's rows (every round or release evaluated); stops at ``target`` if given."""
    cfg = load_config("smoke", overrides=[*COMMON, *overrides])
    prep = prepare_data(cfg)
    rows: list[dict[str, Any]] = []

    def on_round(row: dict[str, Any]) -> None:
        rows.append(row)
        if target is not None and float(row["accuracy"]) >= target - 1e-12:
            raise _Reached

    with tempfile.TemporaryDirectory() as tmp, contextlib.suppress(_Reached):
        in_process_runner(cfg, Path(tmp), prep, model_spec_for(cfg, prep.train), on_round)
    return cfg, rows


def variant(name: str, rounds: int, max_releases: int, buffer: int) -> dict[str, Any]:
    extra = VARIANTS[name]
    t0 = time.perf_counter()
    scfg, sync = run_one([*extra, f"federation.rounds={rounds}"])
    s_acc = [float(r["accuracy"]) for r in sync]
    target = s_acc[-1]
    acfg, asy = run_one([*extra, "federation.mode=async", f"federation.rounds={max_releases}",
                         f"federation.buffer_size={buffer}"], target=target)  # fmt: skip
    s_times, a_times = virtual_times(scfg, sync), virtual_times(acfg, asy)
    a_acc = [float(r["accuracy"]) for r in asy]
    s_t, a_t = time_to(s_times, s_acc, target), time_to(a_times, a_acc, target)
    return {
        "variant": name,
        "overrides": [*COMMON, *extra],
        "sync_rounds": rounds,
        "max_releases": max_releases,
        "async_releases": len(a_acc),
        "buffer_size": buffer,
        "target_accuracy": target,
        "sync_time_to_target": s_t,
        "async_time_to_target": a_t,
        "ratio": (a_t / s_t) if (a_t is not None and s_t) else None,
        "sync_virtual_s": s_times[-1],
        "async_virtual_s": a_times[-1],
        "async_best_accuracy": max(a_acc),
        "sync_accuracy": s_acc,
        "async_accuracy": a_acc,
        "async_times": a_times,
        "sync_times": s_times,
        "epsilon_sync": sync[-1].get("epsilon"),
        "epsilon_async": asy[-1].get("epsilon"),
        "wall_s": time.perf_counter() - t0,
        "load_average": os.getloadavg()[0],
    }


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| variant | target (sync final acc.) | sync time to target | async time to target "
           "| ratio | async releases (K) |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        a = r["async_time_to_target"]
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "not reached"
        out.append(
            f"| {r['variant']} | {r['target_accuracy']:.3f} | {r['sync_time_to_target']:.1f} "
            f"| {a:.1f} | {ratio} | {r['async_releases']} ({r['buffer_size']}) |"
            if a is not None
            else f"| {r['variant']} | {r['target_accuracy']:.3f} | "
            f"{r['sync_time_to_target']:.1f} | – | {ratio} | {r['async_releases']} "
            f"({r['buffer_size']}) |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8, help="synchronous rounds")
    ap.add_argument("--max-releases", type=int, default=40, help="asynchronous releases")
    ap.add_argument("--buffer", type=int, default=3, help="buffer size K")
    ap.add_argument("--variants", default="plain,secagg+,dp")
    ap.add_argument(
        "--repeat", type=int, default=0, help="repetition number (DP noise is OS-seeded)"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    from flwr.supercore.task_identity import TaskIdentity

    # Flower 1.42 needs a task identity to build Messages outside a running app
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    OUT.mkdir(exist_ok=True)
    path = OUT / "async.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    for name in args.variants.split(","):
        row = {**variant(name, args.rounds, args.max_releases, args.buffer), "repeat": args.repeat}
        key = ("variant", "sync_rounds", "buffer_size", "max_releases", "repeat")
        rows = [r for r in rows if any(r.get(k, 0) != row[k] for k in key)] + [row]
        print(json.dumps({k: v for k, v in row.items() if not k.endswith(("accuracy", "times"))}))
        path.write_text(json.dumps(rows, indent=2))
        (OUT / "async.md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
