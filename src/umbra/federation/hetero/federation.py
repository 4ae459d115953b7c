"""A heterogeneous federation, in process: organisations train their own architectures,
the server averages what matches and distils the ensemble into every architecture.

One round (FedDF, Lin et al. NeurIPS 2020, https://arxiv.org/abs/2006.07242):

1. every organisation trains its current model locally (the same local step as the
   ClientApp's, :func:`umbra.federation.train.train_local`);
2. the server averages each parameter group over the organisations whose architecture of
   that group matches (:func:`~umbra.federation.strategies.architecture.grouped_average`;
   modality-aware within a group);
3. each architecture's averaged model is distilled towards the mean logits of all the
   round's local models (``hetero.teachers = "local"``, FedDF's ensemble) or of every
   architecture's averaged model (``"averaged"``) on the unlabeled transfer set
   (:func:`~umbra.federation.hetero.distillation.distil`), and sent back to its
   organisations.

The global model is the ensemble of the architectures' models
(:func:`~umbra.federation.hetero.ensemble.evaluate_ensemble`); with one architecture for
everybody and no distillation the rounds are the plaintext modality-aware FedAvg of
``umbra run``. Runs without privacy, secure aggregation or a deployment: the
configuration must ask for none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from umbra.config import Config
from umbra.errors import ConfigError
from umbra.federation.common import NUM_EXAMPLES, count_key
from umbra.federation.hetero.distillation import DistillSettings, distil, kl_to_ensemble
from umbra.federation.hetero.ensemble import evaluate_ensemble
from umbra.federation.hetero.organisations import organisation_specs
from umbra.federation.hetero.retrieval import cross_modal_recall
from umbra.federation.hetero.transfer import transfer_set
from umbra.federation.strategies.architecture import architecture_signature, grouped_average
from umbra.federation.train import (
    Batchable,
    TrainSettings,
    evaluate,
    get_arrays,
    set_arrays,
    train_local,
)
from umbra.models import ModelSpec, MultimodalNet, parameter_modality
from umbra.run.prepare import PreparedData

__all__ = ["HeteroResult", "check_hetero_config", "run_hetero"]

RoundCallback = Callable[[dict[str, Any]], None]
#: Transfer records on which each round's KL(ensemble || student) is reported.
KL_PROBE = 500


@dataclass
class HeteroResult:
    """What a heterogeneous run reports (``hetero.json``).

    Attributes:
        history: one row per evaluated round: the global (ensemble) accuracy and the
            distillation losses.
        architectures: one entry per architecture: its organisations, encoders, width and
            its model's accuracy (fused and per modality subset).
        organisations: one entry per organisation: its architecture, the accuracy of its
            last local model and of the model it holds after the last round.
        global_model: the ensemble's accuracy, fused and per modality subset.
        retrieval: image<->audio recall@1/10 of each architecture's model (when the data
            has both), keyed by architecture index.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    architectures: list[dict[str, Any]] = field(default_factory=list)
    organisations: list[dict[str, Any]] = field(default_factory=list)
    global_model: dict[str, Any] = field(default_factory=dict)
    retrieval: dict[str, dict[str, float]] = field(default_factory=dict)
    transfer_records: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "global": self.global_model,
            "architectures": self.architectures,
            "organisations": self.organisations,
            "retrieval": self.retrieval,
            "transfer_records": self.transfer_records,
            "history": self.history,
        }


def check_hetero_config(cfg: Config) -> None:
    """ConfigError for what the in-process heterogeneous federation does not run."""
    fed = cfg.federation
    unsupported = [
        (cfg.privacy.mode != "none", f"privacy.mode = {cfg.privacy.mode!r}"),
        (cfg.secure.aggregation != "none", f"secure.aggregation = {cfg.secure.aggregation!r}"),
        (cfg.compression.method != "none", f"compression.method = {cfg.compression.method!r}"),
        (fed.mode != "federated", f"federation.mode = {fed.mode!r}"),
        (fed.strategy != "fedavg", f"federation.strategy = {fed.strategy!r}"),
        (fed.aggregator != "mean", f"federation.aggregator = {fed.aggregator!r}"),
        (fed.fraction_train < 1.0, f"federation.fraction_train = {fed.fraction_train:g}"),
        (bool(cfg.attack.clients), "attack.clients"),
    ]
    for bad, what in unsupported:
        if bad:
            raise ConfigError(
                f"{what}: a heterogeneous federation runs plain FedAvg with every "
                "organisation in every round, without privacy, secure aggregation, "
                "compression or attacks"
            )


def _train_settings(cfg: Config) -> TrainSettings:
    f, m = cfg.federation, cfg.model
    return TrainSettings(
        epochs=f.local_epochs,
        batch_size=f.batch_size,
        lr=f.lr,
        momentum=f.momentum,
        weight_decay=f.weight_decay,
        modality_dropout=m.modality_dropout,
        align_weight=m.align_weight,
        temperature=m.temperature,
    )


def _architectures(specs: list[ModelSpec]) -> tuple[list[int], list[ModelSpec]]:
    """Each organisation's architecture index and one spec per architecture."""
    index: dict[str, int] = {}
    of: list[int] = []
    unique: list[ModelSpec] = []
    for spec in specs:
        key = repr(sorted(architecture_signature(spec).items()))
        if key not in index:
            index[key] = len(unique)
            unique.append(spec)
        of.append(index[key])
    return of, unique


def _initial_arrays(
    models: list[MultimodalNet], signatures: list[dict[str, str]]
) -> list[dict[str, np.ndarray]]:
    """Each architecture's initial weights, a part shared with an earlier architecture
    copied from it (so that matching parts start equal, as in one-model FedAvg)."""
    seen: dict[tuple[str, str], np.ndarray] = {}
    out = []
    for model, sig in zip(models, signatures, strict=True):
        arrays = get_arrays(model)
        for k in arrays:
            group = parameter_modality(k) or "shared"
            seen_key = (sig[group], k)
            if seen_key in seen:
                arrays[k] = seen[seen_key].copy()
            else:
                seen[seen_key] = arrays[k]
        out.append(arrays)
    return out


def _copy(model: MultimodalNet) -> MultimodalNet:
    """A frozen teacher: the same weights in a new model (distillation then trains the
    original)."""
    twin = MultimodalNet(model.spec)
    set_arrays(twin, get_arrays(model))
    return twin


def run_hetero(
    cfg: Config,
    prep: PreparedData,
    base_spec: dict[str, Any],
    *,
    on_round: RoundCallback | None = None,
) -> HeteroResult:
    """Run ``cfg``'s heterogeneous federation on ``prep`` (``base_spec``: the ``model``
    section's spec, :func:`umbra.run.prepare.model_spec_for`) and evaluate it."""
    check_hetero_config(cfg)
    specs = organisation_specs(cfg, base_spec)
    arch_of, arch_specs = _architectures(specs)
    shapes = dict(specs[0].input_shapes)
    prep, transfer_data = transfer_set(cfg, prep, shapes)
    transfer = Batchable.from_data(transfer_data)
    # the KL reported each round, on a fixed slice of the transfer set (cheaper than all)
    probe = Batchable.from_data(transfer_data.subset(np.arange(min(KL_PROBE, len(transfer)))))
    test = Batchable.from_data(prep.test)
    clients = [
        Batchable.from_data(prep.train.subset(idx).with_mask(mask))
        for idx, mask in zip(prep.parts, prep.masks, strict=True)
    ]
    counts = [
        {NUM_EXAMPLES: float(len(c)), **{count_key(m): float(c.mask[:, j].sum())
                                          for j, m in enumerate(specs[0].modalities)}}
        for c in clients
    ]  # fmt: skip
    torch.manual_seed(cfg.run.seed)  # initial weights: training noise, not privacy
    arch_models = [MultimodalNet(s) for s in arch_specs]
    signatures = [architecture_signature(s) for s in specs]
    arch_arrays = _initial_arrays(arch_models, [architecture_signature(s) for s in arch_specs])
    state = [arch_arrays[a] for a in arch_of]
    settings = _train_settings(cfg)
    h = cfg.hetero
    distill = DistillSettings(
        steps=h.distill_steps,
        batch_size=h.distill_batch,
        lr=h.distill_lr,
        temperature=h.distill_temperature,
        modality_dropout=cfg.model.modality_dropout,
    )
    result = HeteroResult(transfer_records=len(transfer))
    local: list[MultimodalNet] = []
    for rnd in range(1, cfg.federation.rounds + 1):
        local = []
        for i, (spec, data) in enumerate(zip(specs, clients, strict=True)):
            model = MultimodalNet(spec)
            set_arrays(model, state[i])
            train_local(model, data, settings, seed=cfg.run.seed * 1_000_003 + rnd * 1009 + i)
            local.append(model)
        averaged = grouped_average(
            [get_arrays(m) for m in local], counts, parameter_modality, signatures, state
        )
        row: dict[str, Any] = {"round": rnd}
        for a in range(len(arch_specs)):
            set_arrays(arch_models[a], averaged[arch_of.index(a)])
        teachers = local if h.teachers == "local" else [_copy(m) for m in arch_models]
        for a in range(len(arch_specs)):
            if distill.steps > 0:
                row[f"kl-before/{a}"] = kl_to_ensemble(arch_models[a], teachers, probe)
                stats = distil(arch_models[a], teachers, transfer, distill,
                               seed=cfg.run.seed * 7919 + rnd * 31 + a)  # fmt: skip
                row[f"kl-after/{a}"] = kl_to_ensemble(arch_models[a], teachers, probe)
                row[f"distil-last/{a}"] = stats["distil-last"]
            arch_arrays[a] = get_arrays(arch_models[a])
        state = [arch_arrays[a] for a in arch_of]
        if rnd % cfg.run.eval_every == 0 or rnd == cfg.federation.rounds:
            row["accuracy"] = evaluate_ensemble(arch_models, test)["accuracy"]
            result.history.append(row)
            if on_round is not None:
                on_round(row)
    result.global_model = evaluate_ensemble(arch_models, test)
    for a, spec in enumerate(arch_specs):
        ev = evaluate(arch_models[a], test)
        result.architectures.append(
            {
                "architecture": a,
                "organisations": [i for i, x in enumerate(arch_of) if x == a],
                "encoders": {m: spec.encoders.get(m, m) for m in spec.modalities},
                "hidden": spec.hidden,
                "accuracy": ev["accuracy"],
                "subsets": ev["subsets"],
            }
        )
        if {"image", "audio"} <= set(spec.modalities):
            result.retrieval[str(a)] = cross_modal_recall(arch_models[a], test, "image", "audio")
    for i, model in enumerate(local):
        a = arch_of[i]
        result.organisations.append(
            {
                "organisation": i,
                "architecture": a,
                "records": len(clients[i]),
                "local_accuracy": evaluate(model, test)["accuracy"],
                "model_accuracy": result.architectures[a]["accuracy"],
            }
        )
    return result
