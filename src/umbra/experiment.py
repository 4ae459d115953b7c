"""Resolve a config into data, Flower apps and an output folder, and run it.

``run_experiment(cfg, out)`` is what ``umbra run`` calls: it prepares the data
(`umbra.run.prepare`), runs the ServerApp/ClientApp pair on Flower's simulation engine
(`umbra.run.simulation`) or the centralized baseline (`umbra.run.centralized`), and writes
``results.json`` (`umbra.run.results`), ``checkpoints/`` and the report into the run
folder (`umbra.run.folder`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from umbra.config import Config
from umbra.errors import ConfigError, ResumeError
from umbra.federation.checkpoint import atomic_write_text
from umbra.federation.server_app import RunResult
from umbra.run.centralized import run_centralized
from umbra.run.folder import CONFIG_FILE, check_ledger
from umbra.run.prepare import PreparedData, model_spec_for, prepare_data
from umbra.run.results import results_object
from umbra.run.simulation import RoundCallback, run_federated

__all__ = ["Runner", "run_experiment"]

#: Runs the federation of a prepared config into a run folder: the simulation engine
#: (`run_federated`), the centralized baseline or a deployment (`umbra.run.deploy`).
Runner = Callable[[Config, Path, PreparedData, dict[str, Any], RoundCallback | None], RunResult]


def _privacy_line(cfg: Config) -> str:
    """One status line saying what the DP run does each round."""
    p = cfg.privacy
    head = f"differential privacy: ε = {p.epsilon:g} (for the model holder), δ = {p.delta:g} per "
    if p.mode == "client":
        return head + f"client, client-level DP ({p.noise} noise, client rate {p.client_rate:g})"
    batch = p.batch_size or cfg.federation.batch_size
    if p.noise == "distributed":
        k, n = cfg.federation.num_clients, cfg.data.n_train
        expected = f"expected batch {batch} per client"
        if cfg.data.source != "manifest" and batch * k >= n:
            # the joint rate B·K/N is capped at 1: every record is in every step
            expected = f"every record in every step: {batch} x {k} clients >= {n} records"
        return head + (
            f"record, one joint DP-SGD step per round ({expected}; "
            f"each adds a share of the noise under {cfg.secure.aggregation}; "
            "federation.local_epochs does not apply)"
        )
    return head + (
        f"record, DP-SGD in each client ({cfg.federation.local_epochs:g} local epochs "
        f"per round, expected batch {batch})"
    )


def _with_tensorboard(writer: Any, inner: RoundCallback | None) -> RoundCallback:
    """Also write each round's numbers as TensorBoard scalars."""

    def on_round(row: dict[str, Any]) -> None:
        step = int(row["round"])
        for key in (
            "accuracy",
            "macro_f1",
            "loss",
            "train_loss",
            "bytes_up",
            "bytes_down",
            "wall_s",
        ):
            if isinstance(row.get(key), int | float):
                writer.add_scalar(f"round/{key}", row[key], step)
        for group, eps in (row.get("epsilon") or {}).items():
            writer.add_scalar(f"epsilon/{group}", eps, step)
        writer.flush()
        if inner is not None:
            inner(row)

    return on_round


def run_experiment(
    cfg: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    on_round: RoundCallback | None = None,
    on_status: Callable[[str], None] | None = None,
    runner: Runner | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` into ``run_dir`` (or resume it) and return the results object.

    ``runner`` trains the federation (default: Flower's simulation engine; the centralized
    baseline when ``federation.mode`` says so)."""
    from umbra.federation.server_app import load_model

    say = on_status or (lambda s: None)
    if cfg.hetero.organisations:
        raise ConfigError("hetero.organisations gives organisations their own architectures: "
                          "run it with umbra hetero")  # fmt: skip
    t_start = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        if (run_dir / "checkpoints" / "latest.json").exists():
            raise ResumeError(
                f"{run_dir} already holds a run; use --resume {run_dir} or another --out"
            )
        atomic_write_text(run_dir / CONFIG_FILE, json.dumps(cfg.model_dump(mode="json"), indent=2))
    else:
        check_ledger(run_dir, cfg)
    say(f"preparing data ({cfg.data.source})")
    t0 = time.perf_counter()
    prep = prepare_data(cfg)
    data_s = time.perf_counter() - t0
    model_spec = model_spec_for(cfg, prep.train)
    if cfg.federation.layout == "vertical":  # vertical federation (docs/vertical.md)
        say(f"vertical training: {len(cfg.vertical.parties)} parties, "
            f"{cfg.federation.rounds} epochs of split learning")  # fmt: skip
    else:
        say(
            f"{cfg.federation.mode} training: {cfg.federation.num_clients} clients, "
            f"{cfg.federation.rounds} rounds, strategy {cfg.federation.strategy}"
        )
    if cfg.privacy.mode != "none":
        say(_privacy_line(cfg))
    writer = None
    if cfg.run.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        on_round = _with_tensorboard(writer, on_round)
    t1 = time.perf_counter()
    if runner is None:
        runner = run_centralized if cfg.federation.mode == "centralized" else run_federated
    # vertical federation (docs/vertical.md): its own runner; its facts join results.json
    if cfg.federation.layout == "vertical" and runner is run_federated:
        from umbra.vertical.runner import run_vertical

        runner = run_vertical
    outcome = runner(cfg, run_dir, prep, model_spec, on_round)
    train_s = time.perf_counter() - t1
    if writer is not None:
        writer.close()
    model = load_model(model_spec, outcome.arrays)
    results = results_object(cfg, prep, run_dir, outcome, model,
                             data_s=data_s, train_s=train_s, started=t_start)  # fmt: skip
    if cfg.federation.layout == "vertical":  # vertical federation: layout, traffic, leakage
        from umbra.vertical.runner import merge_vertical_results

        merge_vertical_results(results, run_dir)
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
    from umbra.report import render_report

    render_report(run_dir)
    from umbra.federation.server_app import check_some_round_completed

    check_some_round_completed(outcome.history)  # exit code 2 when nothing was learned
    return results
