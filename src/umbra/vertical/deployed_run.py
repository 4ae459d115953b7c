"""The label holder's ServerApp on the Deployment Engine: a vertical run over ``flwr run``.

Runs at the label-holding organisation, the ServerApp's side (`umbra.apps.server`
dispatches here when ``federation.layout = 'vertical'``). It reads its own ids and labels
(run config ``vertical-labels``, a folder of :mod:`umbra.vertical.party_folder` without
features) and the held-out test set (``test-dir``), and never any party's features: every
party, its own modality's node included, runs in a SuperNode of its own and reads only its
own folder (`umbra.vertical.node_party`).

The run, all of it over Flower messages:

1. hello: which node is which party, and its modalities;
2. alignment (:func:`align_over_grid`): a two-party ECDH PSI session with every other
   party (the label holder is the client that learns, one ``query.vertical_psi`` round
   trip for all of them), then one ``query.vertical_align`` carrying each party the
   digests of its shared ids in the canonical order and the model spec, so that every
   party builds the same rows and the same initial model as the simulation's
   `umbra.vertical.build.build_vertical`;
3. the simulation's loop (`umbra.vertical.server_app.run_label_holder`): key set-up under
   the secure sum, the epochs, the export and evaluation after each;
4. the audit: each feature party returns the gradients it kept (``query.vertical_observed``;
   gradients the label holder itself computed and sent), scored against the true labels.

It writes what ``umbra run`` writes into the run folder: ``progress.jsonl`` rows,
``vertical.json``, ``ledger.jsonl`` under embedding or label DP and the outcome
(`umbra.apps.outcome`), from which the launcher makes ``results.json`` and the report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.serverapp import Grid

from umbra.apps.outcome import write_outcome
from umbra.apps.run_config import AppRunConfig
from umbra.config import Config
from umbra.errors import ConfigError
from umbra.federation.checkpoint import atomic_write_text
from umbra.federation.client_data import load_client_data
from umbra.federation.common import config_bytes, config_int
from umbra.federation.server_app import RunResult, initial_arrays, load_model
from umbra.federation.train import Batchable, evaluate
from umbra.models import ModelSpec
from umbra.privacy.ledger import LabelRelease
from umbra.run.prepare import model_spec_for
from umbra.services.psi import PsiClient, PsiConfig
from umbra.services.psi_errors import PsiError
from umbra.services.psi_ids import IdSet
from umbra.vertical import protocol as P
from umbra.vertical.alignment import Alignment
from umbra.vertical.errors import VerticalError
from umbra.vertical.label_dp import randomized_response
from umbra.vertical.label_holder import LabelHolder
from umbra.vertical.party_folder import PartyFolder, read_labels
from umbra.vertical.runner import (
    SUMMARY_FILE,
    check_vertical_config,
    embedding_ledger,
    label_ledger,
    layout_summary,
    leakage_scores,
    ledger_privacy,
)
from umbra.vertical.server_app import (
    GridExchange,
    Traffic,
    VerticalServerSpec,
    history_row,
    reply_arrays,
    run_label_holder,
)
from umbra.vertical.trainer import EpochStats

__all__ = ["AlignedParties", "align_over_grid", "run_deployed_vertical"]


@dataclass(frozen=True)
class AlignedParties:
    """The label holder's view after alignment: the :class:`Alignment` (on a deployment
    its ``slots`` and ``party_rows`` are positions in each party's aligned list: a party's
    own row numbers never leave it), each party's id count, and the messages' traffic."""

    alignment: Alignment
    sizes: list[int]
    traffic: Traffic


def align_over_grid(
    grid: Grid,
    nodes: dict[int, int],
    *,
    own: PartyFolder,
    lead: int,
    model_spec: dict[str, Any],
    timeout_s: float,
) -> AlignedParties:
    """PSI with every other party, then each party's shared digests (module docstring).

    Raises:
        VerticalError: duplicate ids, a party sharing no id with the label holder, PSI
            messages that do not parse, a party that aligned another number of rows.
    """
    try:
        ids = IdSet.from_ids(own.ids, source="the label holder's ids")
    except PsiError as err:
        raise VerticalError(str(err)) from None
    traffic = Traffic()
    exchange = GridExchange(grid, nodes, timeout_s, traffic)
    k, n = len(nodes), len(ids)
    others = [p for p in range(k) if p != lead]
    t0 = time.perf_counter()
    clients = {p: PsiClient(ids, PsiConfig()) for p in others}
    requests = {p: c.request() for p, c in clients.items()}
    got = exchange.send("query", P.PSI, {p: ({P.CLIENT_SIZE: n, P.PSI_REQUEST: requests[p]}, {})
                                         for p in others})  # fmt: skip
    psi_bytes = 0
    positions: list[np.ndarray] = []
    sizes: list[int] = []
    digests: dict[int, np.ndarray] = {}
    for p in range(k):
        if p == lead:
            lead_rows = np.arange(n)
            sizes.append(n)
        else:
            cfg = got[p].content.config_records["config"]
            setup, response = config_bytes(cfg, P.PSI_SETUP), config_bytes(cfg, P.PSI_RESPONSE)
            try:
                _, found = clients[p].finish(setup, response)
            except PsiError as err:
                raise VerticalError(f"party-{p}: PSI failed: {err}") from None
            assert found is not None  # full-result mode
            lead_rows = np.asarray(ids.canonical(found), dtype=np.int64)
            if len(lead_rows) == 0:
                raise VerticalError(f"party-{p} shares no entity with the label holder "
                                    f"party-{lead}: its ids do not overlap")  # fmt: skip
            psi_bytes += len(setup) + len(response) + len(requests[p]) + 32 * len(lead_rows)
            sizes.append(config_int(cfg, P.SERVER_SIZE))
        pos = np.full(n, -1, dtype=np.int64)
        pos[lead_rows] = np.arange(len(lead_rows))
        positions.append(pos)
        digests[p] = np.frombuffer(b"".join(ids.digests[r] for r in lead_rows),
                                   dtype=np.uint8).reshape(len(lead_rows), 32)  # fmt: skip
    psi_s = time.perf_counter() - t0
    spec_json = json.dumps(model_spec)
    replies = exchange.send("query", P.ALIGN, {p: ({P.MODEL_SPEC: spec_json}, {P.DIGESTS: digests[p]})
                                               for p in range(k)})  # fmt: skip
    for p, m in replies.items():
        rows = config_int(m.content.config_records["config"], P.ROWS)
        if rows != len(digests[p]):
            raise VerticalError(f"party-{p} aligned {rows} rows, not the {len(digests[p])} "
                                "shared ids")  # fmt: skip
    counts = [np.arange(int((pos >= 0).sum())) for pos in positions]
    alignment = Alignment(label_party=lead, entities=np.arange(n), slots=positions,
                          party_rows=counts, positions=positions, psi_s=psi_s,
                          psi_bytes=psi_bytes)  # fmt: skip
    return AlignedParties(alignment=alignment, sizes=sizes, traffic=traffic)


def _labels_at(positions: np.ndarray, true_labels: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """True labels of the entities at positions ``kept`` of one party's aligned list."""
    have = np.flatnonzero(positions >= 0)
    inverse = np.full(len(have), -1, dtype=np.int64)
    inverse[positions[have]] = have
    return true_labels[inverse[np.asarray(kept, dtype=np.int64)]]


def run_deployed_vertical(
    grid: Grid, run: AppRunConfig, on_row: Callable[[dict[str, Any]], None]
) -> RunResult:
    """The whole deployed run (module docstring); ``on_row`` gets each epoch's row.
    Writes ``vertical.json`` and the outcome into ``run.out`` and returns the result."""
    cfg: Config = run.cfg
    v = cfg.vertical
    check_vertical_config(cfg, run.out)
    if len(v.label_parties) != 1:
        raise ConfigError(f"vertical.label_parties = {v.label_parties}: a deployment runs "
                          "with one label party")  # fmt: skip
    if run.labels is None:
        raise ConfigError("run config vertical-labels is empty: give the absolute path of the "
                          "label holder's folder (ids.txt, labels.npy)")  # fmt: skip
    lead = v.label_parties[0]
    own = read_labels(run.labels)
    if own.party != lead:
        raise VerticalError(f"label folder {str(run.labels)!r} is party {own.party}; "
                            f"vertical.label_parties names {lead}")  # fmt: skip
    test = load_client_data(str(run.test_dir), 0)
    model_spec = model_spec_for(cfg, test)
    init = initial_arrays(model_spec, cfg.run.seed)
    test_set = Batchable.from_data(test)
    ledger = embedding_ledger(cfg, run.out)
    k = len(v.parties)
    names = [f"party-{p}" for p in range(k)]
    views: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    finished: list[dict[str, np.ndarray]] = []
    audits: list[dict[str, Any]] = []

    def align(grid: Grid, nodes: dict[int, int], mods: dict[int, tuple[str, ...]]) -> LabelHolder:
        aligned = align_over_grid(grid, nodes, own=own, lead=lead, model_spec=model_spec,
                                  timeout_s=cfg.federation.reply_timeout_s)  # fmt: skip
        a = aligned.alignment
        assert own.labels is not None
        true_labels = own.labels[a.entities]
        spec = ModelSpec.from_dict(model_spec)
        train_labels = true_labels
        if v.label_dp == "randomized-response":
            label_ledger(cfg, run.out)(LabelRelease(round=0, party=names[lead],
                                                    epsilon=v.label_epsilon,
                                                    num_classes=spec.num_classes))  # fmt: skip
            train_labels = randomized_response(true_labels, num_classes=spec.num_classes,
                                               epsilon=v.label_epsilon)  # fmt: skip
        views.update(aligned=aligned, mods=mods, true=true_labels, train=train_labels)
        fed = cfg.federation
        return LabelHolder(spec, init, train_labels, a.positions, [len(mods[p]) for p in range(k)],
                           batch_size=fed.batch_size, lr=fed.lr, momentum=fed.momentum,
                           weight_decay=fed.weight_decay, seed=cfg.run.seed)  # fmt: skip

    def on_epoch(
        stats: EpochStats, arrays: dict[str, np.ndarray], traffic: Traffic
    ) -> dict[str, Any]:
        ev = evaluate(load_model(model_spec, {**init, **arrays}), test_set, subsets=[])
        row = history_row(stats, traffic, rows, k, ev)
        rows.append(row)
        on_row(row)
        return row

    def collect(exchange: GridExchange) -> None:
        others = [p for p in range(k) if p != lead]
        got = exchange.send("query", P.OBSERVED, {p: ({}, {}) for p in others})
        positions = views["aligned"].alignment.positions
        for p in others:
            arrays = reply_arrays(got[p])
            kept = arrays.get(P.POSITIONS, np.zeros(0, dtype=np.int64))
            grads = arrays.get(P.GRAD, np.zeros((0, 0), dtype=np.float32))
            audits.append(leakage_scores(p, grads, _labels_at(positions[p], views["true"], kept)))

    spec = VerticalServerSpec(
        holder=None, parties=k, epochs=cfg.federation.rounds, secure=v.secure_sum, clip=v.clip,
        timeout_s=cfg.federation.reply_timeout_s, on_epoch=on_epoch,
        on_finish=lambda arrays, _rows: finished.append(arrays),
        before_epoch=None if ledger is None else (lambda e: ledger(e, names)),
        align=align, collect=collect,
    )  # fmt: skip
    t0 = time.perf_counter()
    run_label_holder(grid, spec)
    train_s = time.perf_counter() - t0
    aligned: AlignedParties = views["aligned"]
    mods: dict[int, tuple[str, ...]] = views["mods"]
    parties = [{"party": names[p], "modalities": list(mods[p]), "ids": aligned.sizes[p],
                "labels": p == lead} for p in range(k)]  # fmt: skip
    setup_trips = 3 if v.secure_sum else 1  # hello (+ keys and peers), as in the simulation
    extra = {
        "round_trips": int(sum(r["round_trips"] for r in rows)) + setup_trips,
        "bytes_per_epoch": float(np.mean([r["bytes_up"] + r["bytes_down"] for r in rows])),
        "seconds_per_epoch": float(np.mean([r["wall_s"] for r in rows])),
        "train_s": train_s,
        "label_leakage": audits,
        # over Flower's Deployment Engine the alignment is messages too (PSI, then digests)
        "engine": "deployment",
        "alignment_messages": {"round_trips": aligned.traffic.round_trips,
                               "bytes": aligned.traffic.bytes_down + aligned.traffic.bytes_up},
        "privacy": ledger_privacy(cfg, run.out, names[lead]),
    }  # fmt: skip
    changed = float(np.mean(views["train"] != views["true"]))
    summary = layout_summary(cfg, aligned.alignment, parties,
                             num_classes=ModelSpec.from_dict(model_spec).num_classes,
                             labels_changed=changed, extra=extra)  # fmt: skip
    atomic_write_text(run.out / SUMMARY_FILE, json.dumps(summary, indent=2))
    result = RunResult(arrays={**init, **finished[0]}, history=rows)
    write_outcome(run.out, result)
    return result
