"""The centralized baseline: the same model and training settings on the pooled records."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from umbra.config import Config
from umbra.federation.checkpoint import load_latest, save_checkpoint
from umbra.federation.server_app import RunResult
from umbra.federation.train import Batchable, evaluate, get_arrays, train_local
from umbra.run.prepare import PreparedData
from umbra.run.simulation import RoundCallback, train_settings

__all__ = ["run_centralized"]


def run_centralized(
    cfg: Config,
    run_dir: Path,
    prep: PreparedData,
    model_spec: dict[str, Any],
    on_round: RoundCallback | None,
) -> RunResult:
    """The same model and training settings on the pooled (still partially missing) data.

    One "round" = ``local_epochs`` epochs over the pooled records, so the centralized run
    sees each record as often as the federated one.
    """
    from umbra.federation.server_app import initial_arrays, load_model

    idx = np.concatenate(prep.parts)
    pooled = prep.train.subset(idx).with_mask(np.concatenate(prep.masks))
    data = Batchable.from_data(pooled)
    test = Batchable.from_data(prep.test)
    ckpt_dir = run_dir / "checkpoints"
    latest = load_latest(ckpt_dir)
    if latest is None:
        arrays, history, start = initial_arrays(model_spec, cfg.run.seed), [], 0
    else:
        arrays, history, start = latest.arrays, list(latest.state["history"]), latest.round
    model = load_model(model_spec, arrays)
    torch.set_num_threads(cfg.run.threads)  # as each client: one thread unless configured
    for rnd in range(start + 1, cfg.federation.rounds + 1):
        t0 = time.perf_counter()
        metrics = train_local(model, data, train_settings(cfg), seed=cfg.run.seed * 100003 + rnd)
        ev = evaluate(model, test, subsets=[])
        row = {
            "round": rnd, "clients": 1, "bytes_up": 0, "bytes_down": 0,
            "train_loss": metrics["train-total"], "accuracy": ev["accuracy"],
            "macro_f1": ev["macro_f1"], "loss": ev["loss"],
            "wall_s": time.perf_counter() - t0,
        }  # fmt: skip
        history.append(row)
        arrays = get_arrays(model)
        save_checkpoint(ckpt_dir, server_round=rnd, arrays=arrays, strategy={},
                        state={"history": history})  # fmt: skip
        if on_round is not None:
            on_round(row)
    return RunResult(arrays=arrays, history=history)
