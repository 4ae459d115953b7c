"""Round time and server memory at 10 to 1,000 simulated clients: ``umbra run`` vs a
minimal Flower FedAvg app on the same simulation engine.

Umbra runs the ``default`` preset's model (scattering image encoder, spectral-stats audio,
text; fmnist-avt with 48,000 training records, Dirichlet(0.5) split) with
``privacy.mode = none`` and ``secure.aggregation = none`` (a plaintext round: the cost of
the federation itself), ``federation.fraction_train`` of the clients sampled per round and
an evaluation on the held-out test set only in the last round. The Flower app is what a
user would write to measure the engine: a ClientApp that returns arrays of the same
names and shapes as Umbra's model after a trivial local step (a 1 % shrink), Flower's own
``FedAvg`` (``flwr.serverapp.strategy``) with the same fraction, no evaluation. Both use
the same backend config (one CPU per client actor, ``run.num_cpus`` CPUs for Ray).

Every (system, size) pair runs in a fresh Python process, so one run's memory does not
carry into the next.

    PYTHONPATH=src .venv/bin/python bench/scale.py [--sizes 10,100,300,1000] [--rounds 5] [--fraction 0.1]

What is measured, per run:

* ``round_s``: wall time of each round as the server sees it (Umbra: the round loop's
  ``wall_s``; Flower: between consecutive calls of the strategy's ``evaluate_fn``, a
  no-op). Round 1 includes the client actors' start-up (importing the ClientApp, first
  data load) and is reported apart (``first_round_s``); ``steady_round_s`` is the median
  of rounds 2..R-1 (Umbra's round R also evaluates and is left out).
* ``driver_cpu_s_per_round`` / ``all_cpu_s_per_round``: CPU seconds (user + system) per
  steady round used by the benchmark's process (the server side), and by it plus the Ray
  processes (the client actors): on a loaded 2-core machine wall time depends on the
  neighbours, CPU time much less.
* ``startup_s``: from starting the federation to the start of round 1's clock. Umbra:
  writing the client data, Ray start-up, waiting for every node to register. Flower's
  FedAvg waits for the nodes inside round 1, so its start-up is in ``first_round_s``:
  compare ``startup_s + first_round_s``.
* ``driver_peak_rss_mb``: peak RSS of the benchmark's own process, sampled every 50 ms.
  That process holds the ServerApp (round loop, strategy, aggregation), Flower's
  in-process SuperLink/simulation engine and the Ray driver: the server side.
  Umbra's also holds the prepared data set (``run_experiment`` keeps it for the results),
  Flower's only the initial arrays. ``driver_rss_after_round_mb`` is its RSS at the end
  of each round: what grows with rounds and clients.
* ``all_peak_rss_mb``: peak of the summed RSS of that process and all its descendants
  (Ray's GCS, raylet and the client actors): the whole simulation on this machine.

Writes bench/results/scale.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import umbra  # noqa: F401  (silences protobuf gencode warnings)

BACKEND = {
    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    "init_args": {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False,
                  "logging_level": "error"},
}  # fmt: skip
#: records each simulated client reports in the Flower app (48,000 / 1,000)
FLOWER_RECORDS = 48


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) used so far by this process, and by it plus its
    descendants (the Ray processes)."""
    me = psutil.Process()
    t = me.cpu_times()
    own = t.user + t.system
    total = own
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            c = child.cpu_times()
            total += c.user + c.system
    return own, total


class RssSampler:
    """Peak RSS of this process and of this process plus its descendants."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.driver = 0
        self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                rss = me.memory_info().rss
                total = rss
                for child in me.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        total += child.memory_info().rss
            except psutil.Error:
                continue
            self.driver = max(self.driver, rss)
            self.total = max(self.total, total)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _config(clients: int, rounds: int, fraction: float):  # type: ignore[no-untyped-def]
    from umbra.config import load_config

    return load_config("default", overrides=[
        f"federation.num_clients={clients}", f"federation.fraction_train={fraction}",
        f"federation.rounds={rounds}", f"run.eval_every={rounds}", "privacy.mode=none",
        "secure.aggregation=none", "run.progress=false",
    ])  # fmt: skip


def one_umbra(clients: int, rounds: int, fraction: float) -> dict[str, Any]:
    """``umbra run`` (run_experiment) of the default model at ``clients`` clients."""
    from umbra.experiment import run_experiment

    cfg = _config(clients, rounds, fraction)
    me = psutil.Process()
    federation_start: list[float] = []
    round_end: list[float] = []
    rss_after: list[float] = []
    cpu: list[tuple[float, float]] = []

    def on_status(line: str) -> None:
        if line.startswith("federated training"):  # said just before the federation starts
            federation_start.append(time.perf_counter())

    def on_round(row: dict[str, Any]) -> None:
        round_end.append(time.perf_counter())
        rss_after.append(me.memory_info().rss / 2**20)
        cpu.append(cpu_seconds())

    with tempfile.TemporaryDirectory() as tmp, RssSampler() as rss:
        res = run_experiment(cfg, Path(tmp) / "run", on_round=on_round, on_status=on_status)
    rows = res["rounds"]
    per_round = [float(r["wall_s"]) for r in rows]
    return _summary(
        per_round,
        [int(r["clients"]) for r in rows],
        startup_s=round_end[0] - per_round[0] - federation_start[0],
        rss=rss,
        rss_after=rss_after,
        cpu=cpu,
    ) | {"final_accuracy": res["final"].get("accuracy")}


def _summary(
    per_round: list[float],
    sampled: list[int],
    *,
    startup_s: float,
    rss: RssSampler,
    rss_after: list[float],
    cpu: list[tuple[float, float]],
) -> dict[str, Any]:
    # CPU used in rounds 2..R-1 (from the end of round 1 to the end of round R-1)
    steady = len(per_round) - 2
    return {
        "round_s": per_round,
        "clients_per_round": sampled,
        "startup_s": startup_s,
        "first_round_s": per_round[0],
        "steady_round_s": statistics.median(per_round[1:-1]),
        "driver_peak_rss_mb": rss.driver / 2**20,
        "all_peak_rss_mb": rss.total / 2**20,
        "driver_rss_after_round_mb": rss_after,
        "driver_cpu_s_per_round": (cpu[-2][0] - cpu[0][0]) / steady,
        "all_cpu_s_per_round": (cpu[-2][1] - cpu[0][1]) / steady,
    }


def one_flower(clients: int, rounds: int, fraction: float, arrays_file: Path) -> dict[str, Any]:
    """Flower's FedAvg app with arrays shaped like Umbra's model, under run_simulation."""
    import logging

    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    with np.load(arrays_file) as npz:
        initial = ArrayRecord({k: Array(npz[k]) for k in npz.files})
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = {k: Array(v.numpy() * np.float32(0.99)) for k, v in msg.content["arrays"].items()}
        content = RecordDict({
            "arrays": ArrayRecord(arrays),
            "metrics": MetricRecord({"num-examples": FLOWER_RECORDS}),
        })  # fmt: skip
        return Message(content=content, reply_to=msg)

    stamps: list[float] = []
    sampled: list[int] = []

    class CountingFedAvg(FedAvg):
        def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
            replies = list(replies)
            sampled.append(len(replies))
            return super().aggregate_train(server_round, replies)

    me = psutil.Process()
    rss_after: list[float] = []

    cpu: list[tuple[float, float]] = []

    def clock(rnd: int, arrays: ArrayRecord) -> None:
        stamps.append(time.perf_counter())
        if rnd > 0:
            rss_after.append(me.memory_info().rss / 2**20)
            cpu.append(cpu_seconds())

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        CountingFedAvg(
            fraction_train=fraction,
            fraction_evaluate=0.0,
            min_train_nodes=max(1, round(fraction * clients)),
            min_evaluate_nodes=0,
            min_available_nodes=clients,
        ).start(grid=grid, initial_arrays=initial, num_rounds=rounds, evaluate_fn=clock)  # fmt: skip

    logging.getLogger("flwr").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    t0 = time.perf_counter()
    with RssSampler() as rss:
        run_simulation(server_app=server, client_app=client, num_supernodes=clients,
                       backend_config=BACKEND)  # type: ignore[arg-type]  # fmt: skip
    per_round = [b - a for a, b in itertools.pairwise(stamps)]  # eval r-1 -> eval r
    return _summary(per_round, sampled, startup_s=stamps[0] - t0, rss=rss, rss_after=rss_after,
                    cpu=cpu)  # fmt: skip


def _child(args: argparse.Namespace) -> None:
    if args.one == "umbra":
        out = one_umbra(args.clients, args.rounds, args.fraction)
    else:
        out = one_flower(args.clients, args.rounds, args.fraction, Path(args.arrays))
    Path(args.result).write_text(json.dumps(out))


def _model_arrays(path: Path, fraction: float) -> int:
    """Save the default model's initial arrays to ``path``; returns its parameter count."""
    from umbra.federation.server_app import initial_arrays
    from umbra.run.prepare import model_spec_for, prepare_data

    cfg = _config(10, 3, fraction)
    arrays = initial_arrays(model_spec_for(cfg, prepare_data(cfg).train), cfg.run.seed)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return int(sum(a.size for a in arrays.values()))


def _run_child(which: str, clients: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    result = tmp / f"{which}_{clients}.json"
    cmd = [sys.executable, __file__, "--one", which, "--clients", str(clients),
           "--rounds", str(args.rounds), "--fraction", str(args.fraction),
           "--arrays", str(tmp / "arrays.npz"), "--result", str(result)]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    out: dict[str, Any] = json.loads(result.read_text())
    out["process_s"] = time.perf_counter() - t0
    print(f"{which:6s} {clients:5d} clients: {out['steady_round_s']:.2f} s/round, "
          f"driver {out['driver_peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,100,300,1000")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per run (>= 3)")
    ap.add_argument("--fraction", type=float, default=0.1, help="clients sampled per round")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--one", choices=["umbra", "flower"], help=argparse.SUPPRESS)
    ap.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--arrays", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rounds < 3:
        ap.error("--rounds must be >= 3 (round 1 starts the actors, round R evaluates)")
    if args.one:
        _child(args)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.perf_counter()
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        params = _model_arrays(tmp / "arrays.npz", args.fraction)
        for n in sizes:
            flower = _run_child("flower", n, args, tmp)
            umbra_ = _run_child("umbra", n, args, tmp)
            rows.append({
                "clients": n,
                "sampled_per_round": max(1, round(args.fraction * n)),
                "umbra": umbra_,
                "flower": flower,
                "round_ratio": umbra_["steady_round_s"] / flower["steady_round_s"],
                "driver_rss_ratio": umbra_["driver_peak_rss_mb"] / flower["driver_peak_rss_mb"],
            })  # fmt: skip
    out = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.python_version()}",
        "command": "bench/scale.py " + " ".join(sys.argv[1:]),
        "rounds": args.rounds,
        "fraction_train": args.fraction,
        "model_parameters": params,
        "sizes": rows,
        "bench_s": time.perf_counter() - started,
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(out, indent=2) + "\n")
    print()
    print(markdown(out))


def markdown(out: dict[str, Any]) -> str:
    """The table for docs/benchmarks.md (U = Umbra, F = Flower's FedAvg app)."""
    lines = [
        "| clients | sampled/round | U s/round | F s/round | ratio | U server CPU s/round "
        "| F server CPU s/round | U all CPU s/round | F all CPU s/round | U server peak RSS MB "
        "| F server peak RSS MB | U all peak RSS MB | F all peak RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in out["sizes"]:
        u, f = r["umbra"], r["flower"]
        lines.append(
            f"| {r['clients']} | {r['sampled_per_round']} | {u['steady_round_s']:.2f} "
            f"| {f['steady_round_s']:.2f} | {r['round_ratio']:.2f} "
            f"| {u['driver_cpu_s_per_round']:.2f} | {f['driver_cpu_s_per_round']:.2f} "
            f"| {u['all_cpu_s_per_round']:.2f} | {f['all_cpu_s_per_round']:.2f} "
            f"| {u['driver_peak_rss_mb']:.0f} | {f['driver_peak_rss_mb']:.0f} "
            f"| {u['all_peak_rss_mb']:.0f} | {f['all_peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
