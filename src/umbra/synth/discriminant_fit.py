"""Fitting the discriminant generator across a run's organisations: three stages of noised
sums (:mod:`umbra.synth.discriminant`), each organisation adding the full noise to its own
or a share of it inside a secure sum (:mod:`umbra.synth.secure_release`).

Round 0 releases every modality's scale sums; rounds 1..T each release one step of every
modality's teacher gradient; round T + 1 releases the subspace sums and the pattern
counts. Before an organisation computes a round's sums, that round's release (sample rate
1, one step, σ and C per group) is appended to the ledger and fsynced (write-ahead), so ε
replayed from ledger.jsonl covers every release that may have happened. The coordinator
adds the organisations' messages up and broadcasts what the next round needs (the
standardisers, then the teacher's weights, then the subspaces): post-processing of
released sums. The organisations run in this process, one after the other, each round's
noise from its own privacy stream.

The budget (:func:`plan_discriminant_noise`): every release is a Gaussian mechanism on the
whole data at sample rate 1, so all of them compose as one Gaussian with
``σ_eff⁻² = Σ σ_g⁻²`` (per step); σ_eff is calibrated to (ε, δ) by dp-accounting and
shared out by :data:`WEIGHTS` (the teacher's share split evenly over its ``T`` steps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from umbra.data.dataset import MultimodalData
from umbra.privacy.accounting import DEFAULT_ACCOUNTANT
from umbra.privacy.budget import calibrate_noise_multiplier
from umbra.privacy.ledger import PrivacyLedger, Release
from umbra.privacy.randomness import SecureRandom
from umbra.synth.discriminant import (
    RESIDUAL_CLIP,
    DiscriminantModel,
    Standardiser,
    channel_sizes,
    clipped_gradient_sum,
    scale_vectors,
    subspace_of,
    subspace_statistics,
)
from umbra.synth.feature_map import FeatureMap
from umbra.synth.generator import GaussianGenerator
from umbra.synth.secure_release import GroupNoise, LocalNoise, SecureNoise, SecureRound
from umbra.synth.statistics import pattern_index

#: What a round's messages go through: each organisation's noise, or the secure sum.
Aggregate = LocalNoise | SecureRound

__all__ = [
    "LEARNING_RATE",
    "MOMENTUM",
    "WEIGHTS",
    "DiscriminantPlan",
    "fit_discriminant",
    "plan_discriminant_noise",
]

#: Share of the privacy loss (Gaussian-DP μ²) of each kind of group, per modality; the
#: pattern counts once. The teacher needs most: its gradient has ``(D + 1) K`` numbers.
WEIGHTS: dict[str, float] = {
    "scale": 0.03,
    "teacher": 0.85,
    "count": 0.01,
    "mean": 0.04,
    "cov": 0.03,
    "rows": 0.015,
    "cols": 0.015,
    "pattern": 0.01,
}
#: Per-record L2 bound of the groups whose bound is fixed (the teacher's and the subspace
#: sums' come from the plan's ``clip`` and ``zclip``).
FIXED_CLIPS = {"scale": math.sqrt(3.0), "count": math.sqrt(2.0), "pattern": 1.0}
#: The teacher's step size (on the mean gradient) and momentum.
LEARNING_RATE = 64.0
MOMENTUM = 0.9


@dataclass(frozen=True)
class DiscriminantPlan:
    """σ of every group (per step for the teacher) and the clips.

    Attributes:
        sigmas: ``<m>.scale``, ``<m>.teacher``, ``<m>.count``, ``<m>.mean``, ``<m>.cov``,
            ``<m>.rows``, ``<m>.cols`` per modality and ``pattern`` -> noise multiplier.
        steps: the teacher's steps T.
        clip: the teacher's per-record gradient bound.
        zclip: the per-record bound of ``z`` (``zclip²`` for Σ z zᵀ).
    """

    sigmas: dict[str, float]
    steps: int
    clip: float
    zclip: float

    def clip_norm(self, group: str) -> float:
        """The per-record L2 bound of ``group``."""
        kind = group.rsplit(".", 1)[-1]
        if kind in FIXED_CLIPS:
            return FIXED_CLIPS[kind]
        return {
            "teacher": self.clip,
            "mean": self.zclip,
            "cov": self.zclip**2,
            "rows": RESIDUAL_CLIP**2,
            "cols": RESIDUAL_CLIP**2,
        }[kind]

    def groups(self, kinds: Sequence[str]) -> list[str]:
        """The groups of ``kinds`` (``"teacher"``, ``"mean"``, ...), every modality's."""
        return [g for g in self.sigmas if g.rsplit(".", 1)[-1] in kinds]

    def release(self, round: int, party: str, kinds: Sequence[str]) -> Release:
        """The ledger entry of one organisation's round releasing ``kinds``' groups."""
        groups = self.groups(kinds)
        return Release.dpsgd(
            round=round,
            party=party,
            sample_rate=1.0,
            steps=1,
            noise_multipliers={g: self.sigmas[g] for g in groups},
            clip_norms={g: self.clip_norm(g) for g in groups},
        )


def plan_discriminant_noise(
    *,
    epsilon: float,
    delta: float,
    modalities: Sequence[str],
    steps: int,
    clip: float,
    zclip: float,
    accountant: str = DEFAULT_ACCOUNTANT,
) -> DiscriminantPlan:
    """The plan whose releases, all composed, spend at most (``epsilon``, ``delta``).

    Raises:
        ConfigError: ε or δ out of range (from the calibration).
        ValueError: ``steps`` < 1 or a clip not > 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not (clip > 0 and zclip > 0):
        raise ValueError(f"clips must be > 0, got {clip} and {zclip}")
    sigma = calibrate_noise_multiplier(
        epsilon=epsilon, delta=delta, sample_rate=1.0, steps=1, accountant=accountant
    )
    per_modality = sum(w for k, w in WEIGHTS.items() if k != "pattern")
    total = len(modalities) * per_modality + WEIGHTS["pattern"]
    sigmas: dict[str, float] = {}
    for m in modalities:
        for kind in ("scale", "teacher", "count", "mean", "cov", "rows", "cols"):
            share = WEIGHTS[kind] / (steps if kind == "teacher" else 1)
            sigmas[f"{m}.{kind}"] = sigma * math.sqrt(total / share)
    sigmas["pattern"] = sigma * math.sqrt(total / WEIGHTS["pattern"])
    return DiscriminantPlan(sigmas, steps, clip, zclip)


def fit_discriminant(
    train: MultimodalData,
    parts: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    maps: Mapping[str, FeatureMap],
    *,
    plan: DiscriminantPlan,
    ledger: PrivacyLedger,
    secure: SecureNoise | None = None,
    guidance: float = 0.0,
    make_rng: Callable[[], SecureRandom] = SecureRandom,
) -> GaussianGenerator:
    """The discriminant generator of ``train``'s records split as ``parts`` (organisation
    i holds ``train.subset(parts[i])`` with presence ``masks[i]``).

    Args:
        plan: σ and clips (:func:`plan_discriminant_noise`).
        ledger: where each organisation's round is recorded before it happens.
        secure: the organisations' secure sum (``synth.noise = "distributed"``), or None:
            each adds the full noise to its own sums (:mod:`umbra.synth.secure_release`).
        guidance: γ of the sampler's classifier guidance (0: none; :class:`DiscriminantModel`).
        make_rng: a privacy stream per organisation and round (tests pass a seeded one).
    """
    if not parts:
        raise ValueError("no organisation holds records")
    k = train.num_classes
    orgs = len(parts)
    # each organisation's unit vectors, norm ratios and labels per modality: its own data
    held: list[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]] = []
    for idx, mask in zip(parts, masks, strict=True):
        own = train.subset(idx)
        mine = {}
        for j, (m, fmap) in enumerate(maps.items()):
            have = np.asarray(mask, dtype=bool)[:, j]
            u, rho = fmap.forward(np.asarray(own.features[m])[have])
            mine[m] = (u, rho, np.asarray(own.labels)[have])
        held.append(mine)

    def each_org(round: int, kinds: Sequence[str], compute: Callable[[int], dict[str, np.ndarray]]
                 ) -> tuple[dict[str, np.ndarray], Aggregate]:  # fmt: skip
        noise = {g: GroupNoise(plan.sigmas[g], plan.clip_norm(g)) for g in plan.groups(kinds)}
        channel: Aggregate = (
            LocalNoise(orgs, noise) if secure is None else secure.round(round, noise)
        )
        for i in range(orgs):
            ledger.record(plan.release(round, str(i), kinds))
            channel.add(i, compute(i), make_rng())
        return channel.total(), channel

    sizes = {m: channel_sizes(f) for m, f in maps.items()}
    scales, channel = each_org(
        0,
        ("scale",),
        lambda i: {f"{m}.scale": scale_vectors(held[i][m][0], sizes[m]).sum(0) for m in maps},
    )
    std: dict[str, Standardiser] = {}
    for m in maps:
        released = scales[f"{m}.scale"]
        noise = channel.noise_std(f"{m}.scale", released.size)
        std[m] = Standardiser.from_sums(released, sizes[m], noise)
    inputs = [
        {
            m: (
                torch.as_tensor(np.c_[std[m].forward(u), np.ones(len(u))], dtype=torch.float32),
                torch.as_tensor(y),
            )
            for m, (u, _, y) in mine.items()
        }
        for mine in held
    ]
    weights = {m: torch.zeros(f.dim + 1, k) for m, f in maps.items()}
    velocity = {m: torch.zeros_like(w) for m, w in weights.items()}
    counts = {m: max(float(scales[f"{m}.scale"][-1]), 1.0) for m in maps}  # noised records
    for step in range(plan.steps):
        grads, _ = each_org(
            1 + step,
            ("teacher",),
            lambda i: {
                f"{m}.teacher": clipped_gradient_sum(x, y, weights[m], plan.clip).double().numpy()
                for m, (x, y) in inputs[i].items()
            },
        )
        for m in maps:
            g = torch.as_tensor(grads[f"{m}.teacher"], dtype=torch.float32)
            velocity[m] = MOMENTUM * velocity[m] + g / counts[m]
            weights[m] = weights[m] - LEARNING_RATE * velocity[m]
    bases = {m: subspace_of(weights[m].double().numpy()) for m in maps}

    def subspace_sums(i: int) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for m, (u, rho, y) in held[i].items():
            v = std[m].forward(u)
            c = len(sizes[m])
            sums = subspace_statistics(v, y, rho, bases[m], plan.zclip, k, channels=c)
            out.update({f"{m}.{g}": x for g, x in sums.items()})
        mask = np.asarray(masks[i], dtype=bool)
        patterns = np.zeros((k, 1 << len(maps)))
        np.add.at(patterns, (np.asarray(train.labels)[parts[i]], pattern_index(mask)), 1.0)
        out["pattern"] = patterns
        return out

    sums, channel = each_org(
        1 + plan.steps, ("count", "mean", "cov", "rows", "cols", "pattern"), subspace_sums
    )
    models = {}
    for m in maps:
        records = max(float(sums[f"{m}.count"][:, 0].sum()), 1.0)
        # the noise's standard deviation on a second moment's entries, per record
        floors = {
            g: channel.noise_std(f"{m}.{g}", sums[f"{m}.{g}"].size) / records
            for g in ("cov", "rows", "cols")
        }
        models[m] = DiscriminantModel.fit(
            std[m], bases[m], {g: sums[f"{m}.{g}"] for g in ("count", "mean", "cov", "rows", "cols")},
            floors=floors, teacher=weights[m].double().numpy(), guidance=guidance,
        )  # fmt: skip
    return GaussianGenerator.from_models(maps, train.class_names, models, sums["pattern"])
