"""``results.json``: the final metrics, the per-organisation summary (what DP lets the
server reveal), the privacy object with ε per observer, and the object itself."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from umbra import __version__
from umbra.config import Config, config_fingerprint
from umbra.data.dataset import MultimodalData, modality_subsets
from umbra.federation.server_app import RunResult
from umbra.federation.train import Batchable, evaluate
from umbra.run.poisoning import poisoning_results
from umbra.run.prepare import PreparedData

__all__ = ["client_summary", "final_metrics", "privacy_results", "results_object"]


def final_metrics(model: torch.nn.Module, test: MultimodalData) -> dict[str, Any]:
    """Fused accuracy, macro-F1, accuracy per single modality and per proper subset."""
    mods = test.modalities
    ev = evaluate(model, Batchable.from_data(test), subsets=modality_subsets(mods))  # type: ignore[arg-type]
    subsets: dict[str, float] = ev["subsets"]  # type: ignore[assignment]
    per_modality = {m: subsets[m] for m in mods}
    per_modality["fused"] = float(ev["accuracy"])  # type: ignore[arg-type]
    missing = {k: v for k, v in subsets.items() if k != "+".join(mods) and "+" in k}
    return {
        "accuracy": ev["accuracy"],
        "macro_f1": ev["macro_f1"],
        "loss": ev["loss"],
        "per_modality_accuracy": per_modality,
        "missing_modality_accuracy": missing,
    }


def client_summary(cfg: Config, prep: PreparedData) -> dict[str, Any]:
    """``data.clients`` of results.json: under DP only what the organisations reveal
    (zero-out: example-level, the record count; client-level, nothing), since per-client
    label and modality counts are un-noised statistics of the records."""
    clients = prep.client_summary()
    if cfg.privacy.mode == "none":
        return {"clients": clients}
    keep = ("client", "records") if cfg.privacy.mode == "example" else ("client",)
    return {
        "clients": [{k: c[k] for k in keep} for c in clients],
        "clients_withheld": "Per-organisation label and modality counts"
        + (" and record counts" if cfg.privacy.mode == "client" else "")
        + " are withheld under differential privacy (they are not noised).",
    }


def privacy_results(cfg: Config, run_dir: Path, summary: dict[str, Any] | None) -> dict[str, Any]:
    """``results.json``'s ``privacy`` object: the controller's summary plus ε per observer.

    ``epsilon`` (the budgeted value) is the one for ``epsilon_observer``; ``observers``
    gives the server's, the other organisations' and the model holder's ε, recomputed from
    the ledger (:mod:`umbra.privacy.observers`); ``None`` means no ε holds against it.
    """
    if summary is None:
        return {"mode": "none", "unit": None, "delta": None, "accountant": None,
                "epsilon": None}  # fmt: skip
    from umbra.privacy.accounting import ADJACENCY
    from umbra.privacy.ledger import read_ledger
    from umbra.privacy.observers import observer_epsilons, observer_views

    views = observer_views(unit=cfg.privacy.mode, noise=cfg.privacy.noise,
                           secure=cfg.secure.aggregation)  # fmt: skip
    observers = observer_epsilons(read_ledger(run_dir / "ledger.jsonl"), views)
    return {**summary, "adjacency": ADJACENCY, "secure": cfg.secure.aggregation,
            "epsilon_observer": "model_holder", "observers": observers}  # fmt: skip


def results_object(
    cfg: Config,
    prep: PreparedData,
    run_dir: Path,
    outcome: RunResult,
    model: torch.nn.Module,
    *,
    data_s: float,
    train_s: float,
    started: float,
) -> dict[str, Any]:
    """The object ``results.json`` holds for a finished (or stopped) run (``started``: the
    run's ``time.perf_counter()`` at its start; ``total_s`` includes the final evaluation)."""
    history = outcome.history
    poisoning = poisoning_results(cfg, history, model, prep.test)
    return {
        "umbra_version": __version__,
        "config": cfg.model_dump(mode="json"),
        "fingerprint": config_fingerprint(cfg),
        "data": {
            "source": cfg.data.source,
            "modalities": list(prep.train.modalities),
            "class_names": list(prep.train.class_names),
            "n_train": len(prep.train),
            "n_test": len(prep.test),
            **client_summary(cfg, prep),
            **prep.extra,
        },
        "rounds": history,
        "final": final_metrics(model, prep.test),
        "privacy": privacy_results(cfg, run_dir, outcome.privacy),
        "stopped": outcome.stopped,
        "secure_aggregation": cfg.secure.aggregation,
        **({"audit": {"poisoning": poisoning}} if poisoning is not None else {}),
        **({"async": _async_summary(cfg, history)} if cfg.federation.mode == "async" else {}),
        "bytes": {
            "up_total": int(sum(r["bytes_up"] for r in history)),
            "down_total": int(sum(r["bytes_down"] for r in history)),
        },
        "timing": {
            "data_s": data_s,
            "train_s": train_s,
            "total_s": time.perf_counter() - started,
        },
    }


def _async_summary(cfg: Config, history: list[dict[str, Any]]) -> dict[str, Any]:
    """federation.mode = "async": the virtual clock the run was timed on (docs/async.md)."""
    from umbra.federation.buffered.loop import async_summary

    return async_summary(cfg.federation, cfg.run.seed, history)
