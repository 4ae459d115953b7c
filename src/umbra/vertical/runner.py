"""``umbra run`` for ``federation.layout = 'vertical'``: build, align, train on Flower's
simulation engine (one ClientApp per party, the label holder's ServerApp), then the
label-leakage audit; returns the run's :class:`RunResult` and writes ``vertical.json``.

The ledger (``ledger.jsonl``) is written ahead of what it covers. Label DP
(``vertical.label_dp``) writes one randomised-response release of the label holder before
its labels are randomised (round 0; applied once, so it is all the labels spend however
many epochs run). Embedding DP (``vertical.embedding_noise`` > 0) writes one Gaussian
release per party per epoch before the epoch runs (each record's embedding row is released
once per epoch, clipped to ``embedding_clip``; no subsampling amplification is claimed:
sample rate 1). ``vertical.json`` gives ε per party and per observer, recomputed from the
ledger (:mod:`umbra.vertical.observers`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from umbra.config import Config
from umbra.errors import UmbraError
from umbra.federation.checkpoint import atomic_write_text
from umbra.federation.server_app import RunResult, initial_arrays, load_model
from umbra.federation.train import Batchable, evaluate
from umbra.privacy.accounting import ADJACENCY, LABEL_ADJACENCY
from umbra.privacy.ledger import (
    LabelRelease,
    LedgerContents,
    PrivacyLedger,
    Release,
    compute_report,
    read_ledger,
)
from umbra.run.folder import client_state_root
from umbra.run.prepare import PreparedData
from umbra.run.simulation import RoundCallback
from umbra.vertical.alignment import Alignment
from umbra.vertical.build import VerticalSetup, build_vertical, entity_labels
from umbra.vertical.label_dp import keep_probability, rr_epsilon_pld
from umbra.vertical.leakage import direction_attack_auc, norm_attack_auc
from umbra.vertical.observers import vertical_observer_epsilons
from umbra.vertical.party import FeatureParty
from umbra.vertical.trainer import EpochStats

__all__ = [
    "SUMMARY_FILE",
    "check_vertical_config",
    "embedding_ledger",
    "label_ledger",
    "layout_summary",
    "leakage_audit",
    "leakage_scores",
    "ledger_privacy",
    "merge_vertical_results",
    "run_vertical",
    "vertical_summary",
]

#: The run folder's vertical facts (merged into results.json as ``vertical``).
SUMMARY_FILE = "vertical.json"
#: The run's privacy ledger (label and embedding DP).
LEDGER_FILE = "ledger.jsonl"


def leakage_audit(setup: VerticalSetup, party: int) -> dict[str, Any]:
    """Norm and direction attack AUCs on the gradients ``party`` kept (true labels)."""
    pos, grads = FeatureParty(setup.specs[party]).observed()
    return leakage_scores(party, grads, entity_labels(setup, party, pos))


def leakage_scores(party: int, grads: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The attacks' AUCs on the gradients ``(n, D)`` one party kept and the entities' true
    labels ``(n,)`` (fewer than 10 records: only their count)."""
    if len(labels) < 10:
        return {"party": party, "records": len(labels)}
    counts = np.bincount(labels)
    rare = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
    norm = norm_attack_auc(grads, labels, positive=rare)
    return {
        "party": party,
        "records": len(labels),
        "direction_auc": direction_attack_auc(grads, labels),
        "norm_auc": norm,
        "norm_positive_class": rare,
        # an attacker who knows which way the score points takes the better of the two
        "norm_auc_either_sign": max(norm, 1.0 - norm),
    }


def vertical_summary(cfg: Config, setup: VerticalSetup, extra: dict[str, Any]) -> dict[str, Any]:
    """Layout, alignment, protection and (from ``extra``) traffic and audit facts."""
    parties = [
        {"party": p.name, "modalities": list(p.modalities), "ids": len(p),
         "labels": p.labels is not None}
        for p in setup.parties
    ]  # fmt: skip
    changed = float(np.mean(setup.train_labels != setup.true_labels))
    return layout_summary(cfg, setup.alignment, parties, num_classes=setup.holder.num_classes,
                          labels_changed=changed, extra=extra)  # fmt: skip


def layout_summary(
    cfg: Config,
    alignment: Alignment,
    parties: list[dict[str, Any]],
    *,
    num_classes: int,
    labels_changed: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """``vertical.json`` from what the label holder knows: the alignment, each party's
    name, modalities, id count and whether it holds labels (``parties``), the share of
    training labels randomised response changed, and ``extra``."""
    a, v = alignment, cfg.vertical
    holders = a.holders
    label_dp: dict[str, Any] = {"mechanism": v.label_dp}
    if v.label_dp == "randomized-response":
        label_dp |= {
            "epsilon": v.label_epsilon,
            "epsilon_pld": rr_epsilon_pld(v.label_epsilon, num_classes),
            "keep_probability": keep_probability(v.label_epsilon, num_classes),
            "labels_changed": labels_changed,
        }
    single = (holders.sum(axis=1) == 2) if cfg.vertical.secure_sum else np.zeros(0, bool)
    embedding_dp = None
    if v.embedding_noise > 0:
        embedding_dp = {"noise_multiplier": v.embedding_noise, "clip": v.embedding_clip}
    return {
        "parties": parties,
        "label_party": a.label_party,
        "aligned_entities": len(a.entities),
        "held_by_all": int(holders.all(axis=1).sum()),
        "held_by": {q["party"]: int(holders[:, p].sum()) for p, q in enumerate(parties)},
        "psi": {"seconds": a.psi_s, "bytes": a.psi_bytes},
        "secure_sum": v.secure_sum,
        # an entity held by the label holder and one other party: the sum shows that
        # party's embedding to the label holder (who subtracts its own)
        "secure_sum_single_contributor": int(single.sum()),
        "label_dp": label_dp,
        "embedding_dp": embedding_dp,
        **extra,
    }


def merge_vertical_results(results: dict[str, Any], run_dir: Path) -> None:
    """Add ``vertical.json`` to ``results`` as ``vertical``, and the label-leakage attacks'
    AUCs as ``audit.label_leakage`` (which the report shows with the other attacks)."""
    path = run_dir / SUMMARY_FILE
    if not path.exists():
        return
    summary = json.loads(path.read_text(encoding="utf-8"))
    results["vertical"] = summary
    # the organisations are the parties, not the horizontal partition prepare_data drew
    results["data"]["clients"] = [
        {"client": i, "records": p["ids"], "per_modality": dict.fromkeys(p["modalities"], p["ids"])}
        for i, p in enumerate(summary["parties"])
    ]
    keys = ("direction_auc", "norm_auc", "norm_auc_either_sign", "records")
    leakage: dict[str, Any] = {
        f"party-{a['party']}": {k: a[k] for k in keys if k in a}
        for a in summary.get("label_leakage", [])
    }
    if summary["label_dp"].get("epsilon") is not None:
        leakage["label_dp_epsilon"] = summary["label_dp"]["epsilon"]
    results.setdefault("audit", {})["label_leakage"] = leakage


def check_vertical_config(cfg: Config, run_dir: Path) -> None:
    """Refuse what a vertical run cannot do (one line): the horizontal protections, and
    a run folder that already holds a vertical run (it cannot be resumed)."""
    if cfg.privacy.mode != "none" or cfg.secure.aggregation != "none":
        raise UmbraError("a vertical run protects embeddings and labels with vertical.secure_sum, "
                         "vertical.embedding_noise and vertical.label_dp; privacy.mode and "
                         "secure.aggregation must stay 'none'")  # fmt: skip
    if (run_dir / SUMMARY_FILE).exists() or (run_dir / LEDGER_FILE).exists():
        raise UmbraError(f"{run_dir} already holds a vertical run, which cannot be resumed; "
                         "start it again with another --out")  # fmt: skip


def run_vertical(
    cfg: Config,
    run_dir: Path,
    prep: PreparedData,
    model_spec: dict[str, Any],
    on_round: RoundCallback | None,
) -> RunResult:
    """Train ``cfg``'s vertical federation on the simulation engine (see the module doc)."""
    from flwr.simulation import run_simulation

    from umbra.vertical.client_app import VerticalClientSpec, make_vertical_client_app
    from umbra.vertical.server_app import (
        Traffic,
        VerticalServerSpec,
        history_row,
        make_vertical_server_app,
    )

    check_vertical_config(cfg, run_dir)
    init = initial_arrays(model_spec, cfg.run.seed)
    state_root = client_state_root(run_dir) / "vertical"
    shutil.rmtree(state_root, ignore_errors=True)
    work = run_dir / ".vertical"
    setup = build_vertical(cfg, prep.train, model_spec, work_dir=work, state_root=state_root,
                           init=init, on_label_release=label_ledger(cfg, run_dir))  # fmt: skip
    ledger = embedding_ledger(cfg, run_dir)
    names = [p.name for p in setup.parties]
    test = Batchable.from_data(prep.test)
    finished: list[tuple[dict[str, np.ndarray], list[dict[str, Any]]]] = []

    def on_epoch(
        stats: EpochStats, arrays: dict[str, np.ndarray], traffic: Traffic
    ) -> dict[str, Any]:
        model = load_model(model_spec, {**init, **arrays})
        ev = evaluate(model, test, subsets=[])
        row = history_row(stats, traffic, rows, len(setup.parties), ev)
        rows.append(row)
        if on_round is not None:
            on_round(row)
        return row

    rows: list[dict[str, Any]] = []
    spec = VerticalServerSpec(
        holder=setup.holder, parties=len(setup.parties), epochs=cfg.federation.rounds,
        secure=cfg.vertical.secure_sum, clip=cfg.vertical.clip,
        timeout_s=cfg.federation.reply_timeout_s, on_epoch=on_epoch,
        on_finish=lambda arrays, r: finished.append((arrays, r)),
        before_epoch=None if ledger is None else (lambda e: ledger(e, names)),
    )  # fmt: skip
    client = make_vertical_client_app(VerticalClientSpec(parties=tuple(setup.specs)))
    logging.getLogger("flwr").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    t0 = time.perf_counter()
    run_simulation(
        server_app=make_vertical_server_app(spec),
        client_app=client,
        num_supernodes=len(setup.parties),
        backend_config={
            "client_resources": {"num_cpus": cfg.run.num_cpus, "num_gpus": 0.0},
            "init_args": {"num_cpus": cfg.run.num_cpus, "include_dashboard": False,
                          "log_to_driver": False, "logging_level": "error"},
        },
    )  # fmt: skip
    train_s = time.perf_counter() - t0
    if not finished:
        raise UmbraError("the vertical federation stopped before finishing (see the log above)")
    arrays, history = finished[0]
    audits = [leakage_audit(setup, p) for p in range(len(setup.parties))
              if p != setup.alignment.label_party]  # fmt: skip
    extra = {
        "round_trips": int(sum(r["round_trips"] for r in history)) + (3 if cfg.vertical.secure_sum else 1),
        "bytes_per_epoch": float(np.mean([r["bytes_up"] + r["bytes_down"] for r in history])),
        "seconds_per_epoch": float(np.mean([r["wall_s"] for r in history])),
        "train_s": train_s,
        "label_leakage": audits,
        "privacy": ledger_privacy(cfg, run_dir, setup.parties[setup.alignment.label_party].name),
    }  # fmt: skip
    atomic_write_text(
        run_dir / SUMMARY_FILE, json.dumps(vertical_summary(cfg, setup, extra), indent=2)
    )
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(state_root, ignore_errors=True)
    torch.set_grad_enabled(True)
    return RunResult(arrays={**init, **arrays}, history=history)


def _ledger(cfg: Config, run_dir: Path) -> PrivacyLedger:
    """The run's ledger (created with its header, or reopened with what it holds)."""
    return PrivacyLedger(run_dir / LEDGER_FILE, unit="example", delta=cfg.privacy.delta,
                         accountant=cfg.privacy.accountant)  # fmt: skip


def label_ledger(cfg: Config, run_dir: Path) -> Callable[[LabelRelease], None]:
    """``record(release)``: the label holder's randomised-response release, written before
    the labels are randomised. The ledger is created at its first release: a layout the
    alignment refuses leaves no ledger behind, so the same --out can be used again."""

    def record(release: LabelRelease) -> None:
        _ledger(cfg, run_dir).record_label(release)

    return record


def embedding_ledger(cfg: Config, run_dir: Path) -> Callable[[int, list[str]], None] | None:
    """``record(epoch, party_names)``: each party's embedding release of the epoch, written
    ahead; None without embedding DP."""
    v = cfg.vertical
    if v.embedding_noise <= 0:
        return None

    def record(epoch: int, names: list[str]) -> None:
        ledger = _ledger(cfg, run_dir)
        for name in names:
            ledger.record(Release.dpsgd(round=epoch, party=name, sample_rate=1.0, steps=1,
                                        noise_multipliers={"embedding": v.embedding_noise},
                                        clip_norms={"embedding": v.embedding_clip}))  # fmt: skip

    return record


def ledger_privacy(cfg: Config, run_dir: Path, label_party: str) -> dict[str, Any]:
    """``vertical.privacy``: ε per party (groups ``embedding``, ``label``) and per observer,
    recomputed from the run's ledger (an empty ledger: no ε holds against anyone)."""
    path = run_dir / LEDGER_FILE
    empty = LedgerContents(unit="example", delta=cfg.privacy.delta,
                           accountant=cfg.privacy.accountant)  # fmt: skip
    contents = read_ledger(path) if path.exists() else empty
    return {
        "ledger": LEDGER_FILE if path.exists() else None,
        "delta": contents.delta,
        "adjacency": {"features": ADJACENCY, "label": LABEL_ADJACENCY},
        "per_party": compute_report(contents).per_party,
        "observers": vertical_observer_epsilons(contents, label_party=label_party),
    }
