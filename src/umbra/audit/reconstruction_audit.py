"""The reconstruction audit of a trained model: a curious server that sees one
organisation's update tries to recover the records it was computed from (docs/audit.md).

The update is what the organisation would send in plaintext FedAvg: one local SGD step
with the run's optimiser settings (no modality dropout: the organisation's worst case)
from the final model on a few of its
records, re-derived from the run's config and seed. Four views of the same round:

* ``single``: the update of one record; the first linear layer on each modality's fixed
  features gives the record in closed form (:mod:`~umbra.audit.reconstruction_analytic`);
* ``batch``: the update of ``audit.reconstruction_batch`` records; closed form on the
  rows one record dominates, the records separated through the scattering encoder's
  GroupNorm statistics (:mod:`~umbra.audit.reconstruction_separation`), and gradient
  matching (Geiping et al. 2020) on every input;
* ``secagg``: the sum of every organisation's one-step update on as many records (what
  the server of SecAgg+ learns), attacked in closed form for the audited records;
* ``dp``: the one-record update as DP-SGD releases it at the run's privacy settings: each
  parameter group clipped to its ``C_g`` and noised with ``σ_g·C_g`` (the run's plan; a
  run without DP: σ calibrated to ``privacy.epsilon``), attacked in closed form.

Images are mapped back from scattering coefficients to pixels
(:mod:`~umbra.audit.reconstruction_scattering`: from the nearest held-out images, the
attacker's public prior, by L-BFGS-B; the restart whose coefficients fit best is kept)
and scored by PSNR/SSIM against the originals, beside references: the prior image the
fit started from, the mean held-out image of the record's class, and the label floor (one
mean held-out image per label the view's observer learns, paired like its
reconstructions). Every view is scored by one rule: the observer puts forward at most its
update's rank of reconstructions, paired one-to-one with all records inside the update
(a SecAgg+ sum's included). ``inversion_ceiling`` is the same inversion from the true features, the best any
view can reach. Texts are scored by whether the nearest sentence embedding of the data set
is the record's; other modalities by the cosine of the recovered to the true features.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from umbra.audit.reconstruction_analytic import distinct_candidates, idlg_label, linear_inputs
from umbra.audit.reconstruction_matching import match_gradients
from umbra.audit.reconstruction_metrics import psnr, ssim
from umbra.audit.reconstruction_scattering import invert_scattering, nearest_prior
from umbra.audit.reconstruction_separation import separate_records, update_rank
from umbra.config import Config
from umbra.data.dataset import MultimodalData
from umbra.federation.train import Batchable, TrainSettings, batch_loss, train_local
from umbra.models import MultimodalNet, parameter_groups
from umbra.run.prepare import PreparedData

__all__ = ["ATTACKER", "FixedInput", "fixed_inputs", "one_step_update", "reconstruction_audit"]

#: Who the attacker is, in results.json and the report.
ATTACKER = (
    "the server (honest-but-curious): it sees one organisation's update of one local SGD "
    "step in plaintext FedAvg, the sum of all updates under SecAgg+, or a noised update "
    "under DP-SGD; it knows the model and, for a batch, the records' labels and modalities"
)
#: Second word of the audit's seed sequence [run.seed, _STREAM]: apart from the run's own.
_STREAM = 0x4EC0
#: PNG of the reconstructed images, relative to the run folder.
GRID_FILE = "audit/reconstruction.png"
#: The DP view's label in the grid (its noise is fresh in every audit).
_DP_LABEL = "DP-SGD"
#: Restarts of the pixel inversion, one from each of the prior's nearest images.
PRIOR_NEIGHBOURS = 3
#: RMS residual (in mean-square units) up to which a separated point counts as a record:
#: the steady groups' mean squares are 1 within 1 %.
SEPARATION_FIT = 0.02
#: Cosine distance within which a separated record is replaced by a candidate row.
SNAP_COSINE = 1e-3


@dataclass(frozen=True)
class _Prior:
    """Public images the attacker starts the pixel inversion from (the held-out records,
    disjoint from every training record): ``(P, C, H, W)`` pixels in [0, 1] and their raw
    ``(P, C·81, H/4, W/4)`` scattering coefficients, ``(P,)`` classes."""

    pixels: np.ndarray
    coefficients: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class FixedInput:
    """A modality whose encoder's first linear layer sees fixed features through
    parameter-free or normalising layers only: ``prefix`` maps the modality's features
    to that layer's input; ``weight``/``bias`` are the layer's parameter names."""

    modality: str
    prefix: nn.Sequential
    weight: str
    bias: str


def fixed_inputs(model: MultimodalNet) -> dict[str, FixedInput]:
    """Each modality whose first linear layer the closed form applies to (no convolution
    or other learnt feature extractor before it); conv encoders are left out."""
    out: dict[str, FixedInput] = {}
    for m in model.modalities:
        before: list[nn.Module] = []
        for name, mod in model.encoders[m].named_modules():
            if isinstance(mod, nn.Sequential):
                continue
            if isinstance(mod, nn.Linear):
                if mod.bias is not None:
                    base = f"encoders.{m}.{name}"
                    out[m] = FixedInput(m, nn.Sequential(*before), f"{base}.weight", f"{base}.bias")
                break
            if isinstance(mod, nn.Conv2d | nn.Conv1d):
                break
            before.append(mod)
    return out


def one_step_update(
    model: MultimodalNet, data: MultimodalData, settings: TrainSettings, *, seed: int
) -> dict[str, Tensor]:
    """The update (new − old weights) of one local SGD step on all of ``data`` as one
    batch, with the run's optimiser settings; ``model`` is left unchanged. No modality
    dropout: every modality a record holds reaches the update (the organisation's worst
    case; with the run's dropout a hidden modality leaves no trace in that step)."""
    local = copy.deepcopy(model)
    before = {k: p.detach().clone() for k, p in local.named_parameters()}
    one = replace(settings, epochs=1.0, batch_size=len(data), modality_dropout=0.0)
    train_local(local, Batchable.from_data(data), one, seed=seed)
    return {k: p.detach() - before[k] for k, p in local.named_parameters()}


def _gradient(
    update: Mapping[str, Tensor], model: nn.Module, settings: TrainSettings
) -> dict[str, Tensor]:
    """The gradient behind a first SGD step: Δ = −lr·(∇ + wd·w)."""
    params = dict(model.named_parameters())
    return {
        k: -d / settings.lr - settings.weight_decay * params[k].detach() for k, d in update.items()
    }


def _layer_input(fixed: FixedInput, x: np.ndarray) -> np.ndarray:
    """What the first linear layer sees of features ``x``, flattened, ``(B, in)``."""
    with torch.no_grad():
        return (
            fixed.prefix.eval()(torch.as_tensor(np.asarray(x), dtype=torch.float32))
            .reshape(len(x), -1)
            .double()
            .numpy()
        )


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))


class _Scorer:
    """Turns recovered first-layer inputs (or features) into per-modality figures."""

    def __init__(
        self,
        model: MultimodalNet,
        fixed: dict[str, FixedInput],
        pool: MultimodalData,
        pixels: np.ndarray | None,
        value_range: tuple[float, float],
    ) -> None:
        self.value_range = value_range
        self.model = model
        self.fixed = fixed
        self.pixels = pixels  # (N_all, C, H, W) originals of the training set, or None
        self.text_pool: np.ndarray | None = None
        if "text" in fixed:
            texts = np.unique(np.asarray(pool.features["text"], dtype=np.float32), axis=0)
            self.text_pool = _layer_input(fixed["text"], texts)  # (P, in)
        # (view label, original pixels, recovered normalised coefficients, record's class)
        self.images: list[tuple[str, np.ndarray, np.ndarray, int]] = []
        # view label -> (training rows, classes) of every record inside the view's update
        # that holds an image (the audited ones first): what the label floor pairs over
        self.update_records: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def image_target(self, y: np.ndarray) -> np.ndarray:
        """Group-normalised scattering coefficients from the GroupNorm's output ``y``."""
        norm = self.fixed["image"].prefix[0]
        assert isinstance(norm, nn.GroupNorm)
        gamma = norm.weight.detach().double().numpy()[:, None, None]
        beta = norm.bias.detach().double().numpy()[:, None, None]
        shape = self.model.spec.input_shapes["image"]
        z = (y.reshape(len(y), *shape) - beta) / np.where(np.abs(gamma) < 1e-6, np.inf, gamma)
        return z

    def score(
        self,
        label: str,
        recovered: Mapping[str, np.ndarray],
        truth: MultimodalData,
        rows: np.ndarray,
        rest: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> dict[str, Any]:
        """Figures of ``recovered`` (modality -> ``(B, in)`` first-layer inputs) against
        the records ``truth`` (training indices ``rows``); ``rest``: training rows and
        classes of the update's other records holding an image (a SecAgg+ sum's)."""
        out: dict[str, Any] = {}
        if "image" in recovered and "image" in truth.modalities:
            held = truth.mask[:, truth.modality_index("image")]
            mine = (rows[held], np.asarray(truth.labels)[held])
            if rest is not None:
                mine = (np.concatenate([mine[0], rest[0]]), np.concatenate([mine[1], rest[1]]))
            self.update_records[label] = mine
        for m, y in recovered.items():
            held = truth.mask[:, truth.modality_index(m)]
            if not held.any():
                continue
            y, truth_m, rows_m = y[held], truth.subset(np.flatnonzero(held)), rows[held]
            classes = np.asarray(truth_m.labels)
            true_y = _layer_input(self.fixed[m], truth_m.features[m])
            cos = [_cosine(a, b) for a, b in zip(y, true_y, strict=True)]
            err = [
                float(np.linalg.norm(a - b)) / max(float(np.linalg.norm(b)), 1e-300)
                for a, b in zip(y, true_y, strict=True)
            ]
            entry: dict[str, Any] = {
                "feature_cosine": float(np.median(cos)),
                "exact": int(sum(e < 1e-3 for e in err)),
                "records": len(y),
            }
            if m == "text" and self.text_pool is not None:

                def nearest(v: np.ndarray) -> int:
                    assert self.text_pool is not None
                    return int(
                        np.argmax(
                            self.text_pool
                            @ v
                            / np.maximum(np.linalg.norm(self.text_pool, axis=1), 1e-300)
                        )
                    )

                hits = [nearest(a) == nearest(b) for a, b in zip(y, true_y, strict=True)]
                entry["text_recovery_rate"] = float(np.mean(hits))
            if m == "image" and self.pixels is not None:
                for k, r in enumerate(rows_m):
                    target = self.image_target(y[k : k + 1])[0]
                    self.images.append((label, self.pixels[r], target, int(classes[k])))
            out[m] = entry
        return out


@dataclass(frozen=True)
class _DPNoise:
    """DP-SGD's per-group clip norms and noise multipliers, and where they came from."""

    clip_norms: dict[str, float]
    noise_multipliers: dict[str, float]
    source: str


def _dp_noise(
    cfg: Config,
    privacy: Mapping[str, Any] | None,
    groups: list[str],
    org: int,
    n_org: int,
    settings: TrainSettings,
) -> _DPNoise:
    """The clip norm ``C_g`` and noise multiplier ``σ_g`` of each parameter group: the
    audited organisation's plan in the run's results (example-level DP-SGD: one σ per
    group, from the budget's split among modalities), else ``privacy.noise_multiplier``,
    else the σ that reaches ``privacy.epsilon`` over the run's steps at its sampling rate
    (a run without DP: "what DP-SGD at this ε would have shown")."""
    clips = {g: float(cfg.privacy.clip_norms.get(g, cfg.privacy.clip_norm)) for g in groups}
    info = privacy or {}
    plans = info.get("plans")
    plan = plans.get(str(org)) if isinstance(plans, dict) else None
    sigmas = plan.get("noise_multipliers") if isinstance(plan, dict) else None
    if isinstance(sigmas, dict) and set(groups) <= set(sigmas):
        ran = info.get("clip_norms")
        if isinstance(ran, dict) and set(groups) <= set(ran):
            clips = {g: float(ran[g]) for g in groups}
        return _DPNoise(clips, {g: float(sigmas[g]) for g in groups}, "the run's DP-SGD plan")
    if cfg.privacy.noise_multiplier is not None:
        sigma = float(cfg.privacy.noise_multiplier)
        return _DPNoise(clips, dict.fromkeys(groups, sigma), "privacy.noise_multiplier")
    from umbra.privacy.budget import calibrate_noise_multiplier

    sigma = calibrate_noise_multiplier(
        epsilon=cfg.privacy.epsilon,
        delta=cfg.privacy.delta,
        sample_rate=min(1.0, settings.batch_size / max(n_org, 1)),
        steps=cfg.federation.rounds * settings.steps(n_org),
        accountant=cfg.privacy.accountant,
    )
    return _DPNoise(
        clips,
        dict.fromkeys(groups, sigma),
        f"calibrated to privacy.epsilon = {cfg.privacy.epsilon}",
    )


def _dp_update(
    grads: Mapping[str, Tensor], groups: Mapping[str, list[str]], dp: _DPNoise
) -> dict[str, Tensor]:
    """One record's gradient as DP-SGD releases it: each group clipped to ``C_g``, plus
    Gaussian noise of std ``σ_g·C_g`` per coordinate from ``SecureRandom``."""
    from umbra.privacy.randomness import SecureRandom

    noise = SecureRandom()
    out: dict[str, Tensor] = {}
    for g, names in groups.items():
        clip, sigma = dp.clip_norms[g], dp.noise_multipliers[g]
        norm = float(np.sqrt(sum(float((grads[k] ** 2).sum()) for k in names)))
        scale = min(1.0, clip / max(norm, 1e-12))
        for k in names:
            drawn = noise.normal(tuple(grads[k].shape), std=sigma * clip)
            out[k] = grads[k] * scale + torch.from_numpy(np.asarray(drawn)).float()
    return out


#: A normalisation group constrains the separation when the public images' median
#: ``σ²/(σ² + eps)`` there is at least this: its records' mean square is then 1 within 1 %.
STEADY_MEAN_SQUARE = 0.99


def steady_groups(coefficients: np.ndarray, norm: nn.GroupNorm) -> np.ndarray:
    """Per channel, its GroupNorm group where the public images' (``(P, C, H, W)``) median
    ``σ²/(σ² + eps)`` reaches :data:`STEADY_MEAN_SQUARE`, else -1: groups of faint
    coefficients (variance near the layer's eps) normalise to a mean square below 1 that
    the observer cannot know, so they are left out of the separation's equations."""
    c = np.asarray(coefficients, dtype=np.float64)
    per_group = c.reshape(len(c), norm.num_groups, -1).var(axis=2)  # (P, G)
    ms = np.median(per_group / (per_group + norm.eps), axis=0)  # (G,)
    group = np.arange(norm.num_channels) // (norm.num_channels // norm.num_groups)
    return np.where(ms[group] >= STEADY_MEAN_SQUARE, group, -1)


def _reconstructions(
    fixed: FixedInput, weight: np.ndarray, bias: np.ndarray, steady: np.ndarray | None
) -> np.ndarray:
    """What the observer of a first layer's update puts forward as its records: the
    records separated through the normalisation's statistics
    (:func:`~umbra.audit.reconstruction_separation.separate_records`; ``steady``: the
    channels' groups from :func:`steady_groups`, where the layer follows a GroupNorm) when
    its steady groups outnumber the update's rank, else the distinct closed-form
    candidates; never more than the update's rank (the number of records the observer can
    tell it mixes)."""
    cands = distinct_candidates(linear_inputs(weight, bias))
    rank = update_rank(weight, bias)
    norm = fixed.prefix[0] if len(fixed.prefix) else None
    if (
        steady is not None
        and isinstance(norm, nn.GroupNorm)
        and norm.weight is not None
        and norm.bias is not None
        and len(cands)
    ):
        per = weight.shape[1] // norm.num_channels  # a channel's entries are contiguous
        sep = separate_records(
            weight,
            bias,
            gamma=np.repeat(norm.weight.detach().double().numpy(), per),
            beta=np.repeat(norm.bias.detach().double().numpy(), per),
            groups=np.repeat(steady, per),
            starts=cands,
            fit_tol=SEPARATION_FIT,
        )
        if sep is not None:
            # A candidate row that agrees with a separated record is that record exactly
            # (a row it alone reached); the separation itself is exact only to the 1 %
            # by which the steady groups' mean squares miss 1.
            unit = cands / np.linalg.norm(cands, axis=1, keepdims=True)
            for i, r in enumerate(sep):
                cos = unit @ (r / np.linalg.norm(r))
                if cos.max() > 1.0 - SNAP_COSINE:
                    sep[i] = cands[int(cos.argmax())]
            return sep
    return cands[: max(rank, 1)]


def _pair(recon: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """One reconstruction per record of ``pool`` (``(n, in)``), one-to-one, maximising the
    summed cosine (Hungarian; the evaluation's pairing, the same for every view: it grants
    the observer which reconstruction is which record, never one reconstruction twice);
    zeros for the records left over when there are fewer reconstructions."""
    out = np.zeros_like(pool)
    if len(recon) == 0 or len(pool) == 0:
        return out
    un = recon / np.maximum(np.linalg.norm(recon, axis=1, keepdims=True), 1e-300)
    up = pool / np.maximum(np.linalg.norm(pool, axis=1, keepdims=True), 1e-300)
    rows, cols = linear_sum_assignment(-(un @ up.T))  # (k, n) cosines
    out[cols] = recon[rows]
    return out


def _analytic(
    grads: Mapping[str, Tensor],
    fixed: dict[str, FixedInput],
    truth: MultimodalData,
    others: list[MultimodalData] | None = None,
    *,
    steady: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Each modality's reconstructions paired with ``truth`` (the audited records; rows of
    records lacking the modality are zeros). ``others``: the other records inside the
    same update (the rest of a SecAgg+ sum), which the pairing must also cover;
    ``steady``: modality -> :func:`steady_groups` where the separation applies."""
    out = {}
    for m, f in fixed.items():
        w, b = grads[f.weight].numpy(), grads[f.bias].numpy()
        recon = _reconstructions(f, w, b, steady.get(m))
        j = truth.modality_index(m)
        held = truth.mask[:, j]
        mine = _layer_input(f, truth.features[m])  # (B, in)
        rest = [
            _layer_input(f, o.features[m])[o.mask[:, j]] for o in others or [] if o.mask[:, j].any()
        ]
        paired = _pair(recon, np.concatenate([mine[held], *rest]))
        found = np.zeros_like(mine)
        found[held] = paired[: int(held.sum())]
        out[m] = found
    return out


def _matching(
    model: MultimodalNet,
    grads: Mapping[str, Tensor],
    data: MultimodalData,
    settings: TrainSettings,
    *,
    steps: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Geiping et al.'s attack on every modality's features of ``data`` (labels and
    presence masks known), from standard-normal noise."""
    net = copy.deepcopy(model).eval()
    names = [k for k, _ in net.named_parameters()]
    params = [p for _, p in net.named_parameters()]
    target = [grads[k] for k in names]
    batch = Batchable.from_data(data)
    _, mask, labels = batch.take(torch.arange(len(data)))
    gen = torch.Generator().manual_seed(seed)
    init = {
        m: torch.randn((len(data), *net.spec.input_shapes[m]), generator=gen)
        for m in net.modalities
    }

    def grad_fn(x: dict[str, Tensor]) -> list[Tensor]:
        loss, _ = batch_loss(net, x, mask, labels, settings)
        return list(torch.autograd.grad(loss, params, create_graph=True))

    found = match_gradients(grad_fn, target, init, steps=steps, lr=0.1, tv_weight=1e-3)
    return {m: v.numpy() for m, v in found.items()}


def reconstruction_audit(
    model: MultimodalNet,
    prep: PreparedData,
    cfg: Config,
    settings: TrainSettings,
    *,
    run_dir: Path,
    privacy: Mapping[str, Any] | None = None,
    on_status: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the four views of the attack and return results.json's
    ``audit.reconstruction`` object; writes the image grid to ``run_dir``/``GRID_FILE``."""
    say = on_status or (lambda s: None)
    t0 = time.perf_counter()
    a = cfg.audit
    rng = np.random.default_rng([cfg.run.seed, _STREAM])
    fixed = fixed_inputs(model)
    mods = list(model.modalities)
    img = mods.index("image") if "image" in mods else None
    # The audited organisation: one with enough records holding an image (if any).
    usable = []
    for c, (idx, mask) in enumerate(zip(prep.parts, prep.masks, strict=True)):
        ok = np.flatnonzero(mask[:, img]) if img is not None else np.arange(len(idx))
        if len(ok) >= a.reconstruction_batch:
            usable.append((c, ok))
    if not usable:
        raise ValueError(f"no organisation holds {a.reconstruction_batch} records for the audit")
    org, ok = usable[int(rng.integers(len(usable)))]
    pick = rng.choice(ok, size=a.reconstruction_batch, replace=False)
    idx, mask = prep.parts[org], prep.masks[org]

    def records(local: np.ndarray, c: int = org) -> MultimodalData:
        return prep.train.subset(prep.parts[c][local]).with_mask(prep.masks[c][local])

    pixels, value_range = None, (0.0, 1.0)
    prior: _Prior | None = None
    if (
        "image" in fixed
        and len(fixed["image"].prefix) > 0
        and isinstance(fixed["image"].prefix[0], nn.GroupNorm)
        and cfg.data.image_features == "scattering"
        and cfg.data.source != "manifest"
    ):
        from umbra.data.scattering import scattering_features
        from umbra.run.prepare import DATA_SOURCES

        train, test = DATA_SOURCES[cfg.data.source](cfg)
        train_px, test_px = (np.asarray(d.features["image"]) for d in (train, test))
        # Standardised pixels: the data set's extremes are black and white.
        value_range = (float(train_px.min()), float(train_px.max()))
        span = max(value_range[1] - value_range[0], 1e-12)
        pixels = (train_px - value_range[0]) / span
        # The attacker's public prior: the held-out images (no training record among them).
        prior = _Prior(
            pixels=np.clip((test_px - value_range[0]) / span, 0.0, 1.0),
            coefficients=np.asarray(scattering_features(test_px, cfg.data.cache_dir)),
            labels=np.asarray(test.labels),
        )
    # Which GroupNorm groups the separation may trust, from the public images only.
    steady: dict[str, np.ndarray] = {}
    if prior is not None and isinstance(fixed["image"].prefix[0], nn.GroupNorm):
        steady["image"] = steady_groups(prior.coefficients, fixed["image"].prefix[0])
    scorer = _Scorer(model, fixed, prep.train, pixels, value_range)
    seed = int(rng.integers(2**31))
    say(f"reconstruction audit: organisation {org}, {a.reconstruction_batch} of its records")

    one = records(pick[:1])
    g1 = _gradient(one_step_update(model, one, settings, seed=seed), model, settings)
    last_bias = [k for k, _ in model.named_parameters()][-1]
    views: dict[str, Any] = {}
    views["single"] = {
        "records": 1,
        "label_inferred": idlg_label(g1[last_bias].numpy()) == int(one.labels[0]),
        "analytic": scorer.score(
            "plaintext, 1 record", _analytic(g1, fixed, one, steady=steady), one, idx[pick[:1]]
        ),
    }
    batch = records(pick)
    gb = _gradient(one_step_update(model, batch, settings, seed=seed), model, settings)
    say(f"gradient matching on {len(batch)} records ({a.reconstruction_steps} steps)")
    matched = _matching(model, gb, batch, settings, steps=a.reconstruction_steps, seed=seed)
    views["batch"] = {
        "records": len(batch),
        "analytic": scorer.score(
            "plaintext, batch (closed form)",
            _analytic(gb, fixed, batch, steady=steady),
            batch,
            idx[pick],
        ),
        "matching": scorer.score(
            "plaintext, batch (matching)",
            {m: _layer_input(fixed[m], matched[m]) for m in fixed},
            batch,
            idx[pick],
        ),
    }
    total = {k: v.clone() for k, v in gb.items()}
    others: list[MultimodalData] = []
    rest_rows: list[np.ndarray] = []  # training rows of the others' records with an image
    for c, part in enumerate(prep.parts):
        if c != org and len(part):
            size = min(len(part), a.reconstruction_batch)
            local = rng.choice(len(part), size=size, replace=False)
            other = records(local, c)
            others.append(other)
            if img is not None:
                rest_rows.append(part[local][prep.masks[c][local][:, img]])
            for k, v in _gradient(
                one_step_update(model, other, settings, seed=seed + c + 1), model, settings
            ).items():
                total[k] += v
    rest_all = np.concatenate(rest_rows) if rest_rows else np.zeros(0, dtype=np.int64)
    views["secagg"] = {
        "records": sum(min(len(p), a.reconstruction_batch) for p in prep.parts if len(p)),
        "analytic": scorer.score(
            "SecAgg+ sum",
            _analytic(total, fixed, batch, others, steady=steady),
            batch,
            idx[pick],
            rest=(rest_all, np.asarray(prep.train.labels)[rest_all]),
        ),
    }
    if "image" in fixed:
        exact = {"image": _layer_input(fixed["image"], batch.features["image"])}
        views["inversion_ceiling"] = {
            "records": len(batch),
            "exact": scorer.score("exact features (ceiling)", exact, batch, idx[pick]),
        }
    groups = parameter_groups(model)
    dp = _dp_noise(cfg, privacy, list(groups), org, len(idx), settings)
    views["dp"] = {
        "records": 1,
        "noise_multiplier": dp.noise_multipliers.get("image", max(dp.noise_multipliers.values())),
        "clip_norm": dp.clip_norms.get("image", max(dp.clip_norms.values())),
        "noise_multipliers": dp.noise_multipliers,
        "clip_norms": dp.clip_norms,
        "noise_from": dp.source,
        "analytic": scorer.score(
            _DP_LABEL,
            _analytic(_dp_update(g1, groups, dp), fixed, one, steady=steady),
            one,
            idx[pick[:1]],
        ),
    }
    grid = _images(scorer, views, run_dir, prior=prior, steps=a.reconstruction_steps)
    return {
        "attacker": ATTACKER,
        "organisation": org,
        "modalities": sorted(fixed),
        # how many GroupNorm groups the separation's equations use (see steady_groups)
        "steady_groups": {m: len(np.unique(g[g >= 0])) for m, g in steady.items()},
        "views": views,
        "grid": grid,
        "seconds": time.perf_counter() - t0,
    }


def _label_floor(
    audited: np.ndarray,
    update: tuple[np.ndarray, np.ndarray] | None,
    class_mean: Mapping[int, np.ndarray],
    pixels: np.ndarray | None,
) -> float:
    """Median PSNR of the audited records (``audited``: their pixels, the first records of
    ``update``) against what the view's observer gets from the labels it learns without
    the records' features: one mean public image per label of the update (the update's
    class counts), paired one-to-one with the update's records the way the attack's
    reconstructions are (Hungarian, here on pixel MSE). One record or a plaintext batch:
    the records' own class means; a SecAgg+ sum: the sum's class counts."""
    if update is None or pixels is None or not len(update[0]):
        return float("nan")
    rows, classes = update
    everyone = pixels[rows].reshape(len(rows), -1)  # (n, C·H·W)
    guesses = np.stack([class_mean[int(c)] for c in classes]).reshape(len(rows), -1)
    mse = ((everyone[:, None, :] - guesses[None, :, :]) ** 2).mean(axis=2)  # (n, n)
    rec, guess = linear_sum_assignment(mse)
    paired = dict(zip(rec.tolist(), guess.tolist(), strict=True))
    return float(
        np.median(
            [
                psnr(audited[i], guesses[paired[i]].reshape(audited[i].shape))
                for i in range(len(audited))
            ]
        )
    )


_VIEW_OF = {
    "plaintext, 1 record": ("single", "analytic"),
    "plaintext, batch (closed form)": ("batch", "analytic"),
    "plaintext, batch (matching)": ("batch", "matching"),
    "SecAgg+ sum": ("secagg", "analytic"),
    "exact features (ceiling)": ("inversion_ceiling", "exact"),
    _DP_LABEL: ("dp", "analytic"),
}


def _images(
    scorer: _Scorer, views: dict[str, Any], run_dir: Path, *, prior: _Prior | None, steps: int
) -> str | None:
    """Invert the recovered scattering coefficients of every scored image (one restart
    from each of the prior's ``PRIOR_NEIGHBOURS`` nearest images, the restart whose
    coefficients fit best kept), add median PSNR/SSIM to each view's image entry, draw
    the grid; its path or None."""
    if not scorer.images or prior is None:
        return None
    norm = scorer.fixed["image"].prefix[0]
    assert isinstance(norm, nn.GroupNorm)
    originals = np.stack([o for _, o, _, _ in scorer.images]).astype(np.float64)
    targets = np.nan_to_num(np.stack([t for _, _, t, _ in scorer.images]))  # (N, C·81, h, w)
    # What the label alone gives: the mean public image of the record's class.
    class_mean = {c: prior.pixels[prior.labels == c].mean(axis=0) for c in np.unique(prior.labels)}
    n, k = len(targets), min(PRIOR_NEIGHBOURS, len(prior.pixels))
    near, weights = nearest_prior(targets, prior.coefficients, groups=norm.num_groups, k=k)
    labels = [lab for lab, _, _, _ in scorer.images]
    found = np.zeros((n, k, *originals.shape[1:]))  # (N, k, C, H, W)
    misfit = np.zeros((n, k))
    # One L-BFGS-B fits its images jointly (a shared line search): the DP view, whose
    # noise is fresh in every audit, is fitted apart so the other views are reproducible.
    noisy = [i for i, lab in enumerate(labels) if lab == _DP_LABEL]
    for part in ([i for i in range(n) if i not in noisy], noisy):
        if not part:
            continue
        inv = invert_scattering(
            np.repeat(targets[part], k, axis=0),
            originals.shape[1:],
            groups=norm.num_groups,
            init=prior.pixels[near[part].ravel()],
            weights=weights[part].reshape(len(part) * k, -1),
            value_range=scorer.value_range,
            steps=steps,
        )
        found[part] = inv.images.reshape(len(part), k, *originals.shape[1:])
        misfit[part] = inv.misfit.reshape(len(part), k)
    best = misfit.argmin(axis=1)
    recon = found[np.arange(n), best]
    classes = [c for _, _, _, c in scorer.images]
    for lab in dict.fromkeys(labels):
        sel = [i for i, x in enumerate(labels) if x == lab]
        view, how = _VIEW_OF[lab]
        entry = views[view][how]["image"]
        entry["psnr"] = float(np.median([psnr(originals[i], recon[i]) for i in sel]))
        entry["ssim"] = float(np.median([ssim(originals[i], recon[i]) for i in sel]))
        entry["prior_psnr"] = float(
            np.median([psnr(originals[i], prior.pixels[near[i, best[i]]]) for i in sel])
        )
        entry["label_floor_psnr"] = _label_floor(
            originals[sel], scorer.update_records.get(lab), class_mean, scorer.pixels
        )
        entry["class_mean_psnr"] = float(
            np.median(
                [
                    psnr(originals[i], class_mean[classes[i]])
                    for i in sel
                    if classes[i] in class_mean
                ]
                or [float("nan")]
            )
        )
    from umbra.audit.reconstruction_grid import save_grid

    save_grid(run_dir / GRID_FILE, originals, recon, labels)
    return GRID_FILE
