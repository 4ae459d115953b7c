"""Fault injection: organisations that poison the federation, as a policy the ClientApp's
``train`` applies (``attack.*`` of the config; docs/robustness.md).

Runs inside an organisation, in simulation and deployment alike, before DP and before
any secure-aggregation masking: an attacker runs the honest protocol on poisoned data or
a poisoned update. One policy per ``attack.kind`` behind a name registry:

* ``sign-flip``: sends ``x − Δ`` instead of ``x + Δ`` (Δ = trained − global);
* ``scale``: sends ``x + s·Δ`` (``attack.scale``);
* ``label-flip``: trains on labels ``C − 1 − y`` (Tolpegin et al. 2020,
  https://arxiv.org/abs/2007.08432);
* ``backdoor``: stamps a trigger on ``attack.poison_fraction`` of its records holding
  ``attack.trigger_modality`` and relabels them ``attack.target_class`` (Bagdasaryan et
  al. 2020, https://arxiv.org/abs/1807.00459); the trigger is a bright square in the
  last two axes of an image-like feature, or a fixed value on the last entries of a
  vector (a text embedding offset).

The attackers are ``attack.clients``, or ``attack.fraction`` of the organisations drawn
from ``run.seed`` (an experimental design choice, not privacy randomness).
:func:`backdoor_success_rate` measures a backdoor on the held-out test set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from umbra.data.dataset import MultimodalData
from umbra.federation.train import Batchable, evaluate
from umbra.models import MultimodalNet

__all__ = [
    "ATTACKS",
    "AttackPolicy",
    "AttackSpec",
    "Backdoor",
    "Honest",
    "LabelFlip",
    "Scale",
    "SignFlip",
    "apply_trigger",
    "attack_policy",
    "attacker_ids",
    "backdoor_success_rate",
    "register_attack",
]

Arrays = dict[str, np.ndarray]
#: mixed into run.seed so the attackers' draw is independent of everything else seeded
_DRAW = 0xA77AC


def attacker_ids(
    *, clients: list[int], fraction: float, num_clients: int, seed: int
) -> tuple[int, ...]:
    """The attacking partition ids: ``clients``, or ``max(1, round(fraction · n))`` of the
    ``num_clients`` drawn without replacement from ``seed`` (none when both are empty)."""
    if clients:
        return tuple(sorted(clients))
    if fraction <= 0:
        return ()
    k = min(num_clients, max(1, round(fraction * num_clients)))
    rng = np.random.default_rng([seed, _DRAW])
    return tuple(sorted(int(i) for i in rng.choice(num_clients, size=k, replace=False)))


@dataclass(frozen=True)
class AttackSpec:
    """``attack.*`` of the config with the attackers resolved (picklable, ClientSpec's)."""

    kind: str = "none"
    attackers: tuple[int, ...] = ()
    scale: float = 10.0
    target_class: int = 0
    trigger_modality: str = "image"
    trigger_size: int = 4
    trigger_value: float = 2.5
    poison_fraction: float = 0.5

    @classmethod
    def from_config(cls, cfg: Any) -> AttackSpec:
        """The spec of a :class:`~umbra.config.Config`'s ``attack`` section."""
        a = cfg.attack
        attackers = attacker_ids(clients=list(a.clients), fraction=a.fraction,
                                 num_clients=cfg.federation.num_clients, seed=cfg.run.seed)  # fmt: skip
        return cls(
            kind=a.kind,
            attackers=attackers,
            scale=a.scale,
            target_class=a.target_class,
            trigger_modality=a.trigger_modality,
            trigger_size=a.trigger_size,
            trigger_value=a.trigger_value,
            poison_fraction=a.poison_fraction,
        )


def apply_trigger(features: np.ndarray, *, size: int, value: float) -> np.ndarray:
    """A copy of ``features`` ``(N, *shape)`` with the trigger set to ``value``: the last
    ``size × size`` block of the last two axes, or the last ``size²`` entries of 1-D rows."""
    out = np.array(features, copy=True)
    if out.ndim >= 3:
        out[..., -size:, -size:] = value
    elif out.ndim == 2:
        out[:, -size * size :] = value
    else:
        raise ValueError(f"features of shape {features.shape}: need (N, ...) rows")
    return out


class AttackPolicy:
    """What one organisation does to its data before training and to its update after.
    The defaults are honest."""

    name: ClassVar[str]

    def __init__(self, spec: AttackSpec) -> None:
        self.spec = spec

    def poison_data(self, data: Batchable, *, num_classes: int, seed: int) -> Batchable:
        """The records to train on (default: ``data``)."""
        return data

    def poison_update(self, x: Mapping[str, np.ndarray], y: Arrays) -> Arrays:
        """The model to send for global ``x`` and trained ``y`` (default: ``y``)."""
        return y


def _map_delta(x: Mapping[str, np.ndarray], y: Arrays, factor: float) -> Arrays:
    out = dict(y)
    for k, v in y.items():
        if k in x and np.issubdtype(v.dtype, np.floating):
            x64 = np.asarray(x[k], dtype=np.float64)
            out[k] = (x64 + factor * (v.astype(np.float64) - x64)).astype(v.dtype)
    return out


class Honest(AttackPolicy):
    name = "none"


class SignFlip(AttackPolicy):
    """Sends ``x − Δ``."""

    name = "sign-flip"

    def poison_update(self, x: Mapping[str, np.ndarray], y: Arrays) -> Arrays:
        return _map_delta(x, y, -1.0)


class Scale(AttackPolicy):
    """Sends ``x + scale · Δ``."""

    name = "scale"

    def poison_update(self, x: Mapping[str, np.ndarray], y: Arrays) -> Arrays:
        return _map_delta(x, y, self.spec.scale)


class LabelFlip(AttackPolicy):
    """Trains on ``C − 1 − y``."""

    name = "label-flip"

    def poison_data(self, data: Batchable, *, num_classes: int, seed: int) -> Batchable:
        return dataclasses.replace(data, labels=(num_classes - 1) - data.labels)


class Backdoor(AttackPolicy):
    """Triggers ``poison_fraction`` of the records holding the trigger modality (chosen
    once per organisation from ``seed``) and relabels them ``target_class``."""

    name = "backdoor"

    def poison_data(self, data: Batchable, *, num_classes: int, seed: int) -> Batchable:
        s = self.spec
        if s.target_class >= num_classes:
            raise ValueError(f"attack.target_class = {s.target_class} but the data has "
                             f"{num_classes} classes")  # fmt: skip
        if s.trigger_modality not in data.inputs:
            raise ValueError(f"attack.trigger_modality = {s.trigger_modality!r} is not among "
                             f"the data's modalities {sorted(data.inputs)}")  # fmt: skip
        col = list(data.inputs).index(s.trigger_modality)
        holders = np.flatnonzero(data.mask[:, col].numpy())
        k = round(s.poison_fraction * len(holders))
        chosen = np.random.default_rng(seed).choice(holders, size=k, replace=False)
        feats = data.inputs[s.trigger_modality]
        x = feats.numpy().copy()
        x[chosen] = apply_trigger(x[chosen], size=s.trigger_size, value=s.trigger_value)
        labels = data.labels.clone()
        labels[torch.from_numpy(chosen)] = s.target_class
        inputs = {**data.inputs, s.trigger_modality: torch.from_numpy(x).to(feats.dtype)}
        return dataclasses.replace(data, inputs=inputs, labels=labels)


ATTACKS: dict[str, type[AttackPolicy]] = {}


def register_attack(policy: type[AttackPolicy]) -> None:
    """Register an attack policy under its ``name``; duplicates raise."""
    if policy.name in ATTACKS:
        raise ValueError(f"attack {policy.name!r} is already registered")
    ATTACKS[policy.name] = policy


for _policy in (Honest, SignFlip, Scale, LabelFlip, Backdoor):
    register_attack(_policy)


def attack_policy(spec: AttackSpec, partition_id: int) -> AttackPolicy:
    """The policy organisation ``partition_id`` follows: its attack if it is an attacker,
    else honest."""
    if spec.kind not in ATTACKS:
        raise ValueError(f"unknown attack.kind {spec.kind!r}; registered: {', '.join(ATTACKS)}")
    if partition_id not in spec.attackers:
        return Honest(spec)
    return ATTACKS[spec.kind](spec)


def backdoor_success_rate(
    model: MultimodalNet, test: MultimodalData, spec: AttackSpec
) -> tuple[float | None, int]:
    """Share of triggered test records whose true class is not the target that the model
    classifies as the target, and how many records that is (None, 0: no such record).

    Only records holding the trigger modality are triggered; everything else about them
    stays as recorded.
    """
    if spec.trigger_modality not in test.modalities:
        raise ValueError(f"attack.trigger_modality = {spec.trigger_modality!r} is not among "
                         f"the test modalities {list(test.modalities)}")  # fmt: skip
    col = list(test.modalities).index(spec.trigger_modality)
    idx = np.flatnonzero(test.mask[:, col] & (test.labels != spec.target_class))
    if len(idx) == 0:
        return None, 0
    sub = test.subset(idx)
    features = dict(sub.features)
    features[spec.trigger_modality] = apply_trigger(
        features[spec.trigger_modality], size=spec.trigger_size, value=spec.trigger_value
    )
    target = np.full(len(idx), spec.target_class, dtype=sub.labels.dtype)
    triggered = dataclasses.replace(sub, features=features, labels=target)
    # accuracy against the target label = the share classified as the target
    ev = evaluate(model, Batchable.from_data(triggered), subsets=[])
    accuracy = ev["accuracy"]
    return (float(accuracy) if isinstance(accuracy, int | float) else None), len(idx)
