"""``umbra synth DIR --n N``: fit the DP generator across a finished run's organisations,
write N synthetic records, and measure them.

Steps: check the run folder and the settings (before anything is computed); prepare the
run's data as the run did; plan each statistic's noise for ``synth.epsilon``; every
organisation releases its noised statistics, each release in the output folder's
ledger.jsonl first (:func:`~umbra.synth.federated_fit.fit_federated`); sample; render some
images; then TSTR accuracy, the Fréchet distance per modality and a membership attack on
the generator, written to ``synth.json``. The run folder itself is only read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from umbra.config import Config, apply_override, validate_config
from umbra.errors import ConfigError, DataError
from umbra.privacy.randomness import SecureRandom

__all__ = [
    "CLASSIFIER_NAMES",
    "DEFAULT_MAX_DIM",
    "MODEL_NAMES",
    "SUMMARY_FILE",
    "epsilon_with_run",
    "fit_generator",
    "generator_maps",
    "image_value_range",
    "load_synth_settings",
    "noise_claim",
    "noise_mode",
    "secure_sum",
    "synthesize",
    "tstr_classifier",
]

SUMMARY_FILE = "synth.json"
LEDGER_FILE = "ledger.jsonl"
#: What each ``synth.classifier`` is, as synth.json states it.
CLASSIFIER_NAMES = {
    "linear": "logistic regression on the standardised feature maps",
    "network": "the run's model architecture trained from scratch on the synthetic records",
}


#: What each ``synth.model`` is, as synth.json states it.
MODEL_NAMES = {
    "gaussian": "class-conditional Gaussian, shared low-rank covariance",
    "discriminant": "class-conditional Gaussian in the subspace of a DP linear classifier",
}
#: ``synth.max_dim`` when unset, per model: a D × D covariance needs few dimensions, the
#: discriminant model none of its statistics grows faster than D·K.
DEFAULT_MAX_DIM = {"gaussian": 729, "discriminant": 8192}


def generator_maps(cfg: Config, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """The feature map of every modality (``shapes``: per-record feature shapes) for
    ``synth.model`` and ``synth.max_dim``."""
    from umbra.synth.feature_map import feature_map_for

    s = cfg.synth
    max_dim = s.max_dim if s.max_dim is not None else DEFAULT_MAX_DIM[s.model]
    return {m: feature_map_for(shape, max_dim=max_dim) for m, shape in shapes.items()}


def noise_mode(cfg: Config) -> str:
    """``synth.noise``, or its default: the run's own choice (distributed noise when the
    run trained with ``privacy.noise = "distributed"``)."""
    if cfg.synth.noise is not None:
        return cfg.synth.noise
    if cfg.privacy.mode != "none" and cfg.privacy.noise == "distributed":
        return "distributed"
    return "local"


def noise_claim(cfg: Config, organisations: int) -> dict[str, Any]:
    """How the noise was added and against whom ε holds (``synth.json``'s ``privacy.noise``)."""
    from umbra.privacy.client_dp import shares_needed

    if noise_mode(cfg) == "local":
        return {
            "mode": "local",
            "holds_against": "every observer (the coordinator, other organisations, whoever "
            "receives the generator), under any collusion: each message carries the full noise",
        }
    t = shares_needed(cfg.secure.threshold, organisations)
    return {
        "mode": "distributed",
        "shares": t,
        "organisations": organisations,
        "holds_against": "other organisations and whoever receives the generator: always; "
        f"the coordinator: while at most {organisations - t} organisations collude with it "
        f"(each message carries 1/{t} of the noise variance inside a secure sum)",
    }


def secure_sum(cfg: Config, organisations: int, records: int) -> Any:
    """The organisations' secure sum when :func:`noise_mode` is distributed, else None
    (``records``: the public bound on an organisation's records, the data set's size)."""
    from umbra.privacy.client_dp import shares_needed
    from umbra.synth.secure_release import SecureNoise

    if noise_mode(cfg) != "distributed":
        return None
    t = shares_needed(cfg.secure.threshold, organisations)
    return SecureNoise(organisations, shares=t, records=records)


def fit_generator(
    cfg: Config,
    train: Any,
    parts: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    maps: dict[str, Any],
    *,
    epsilon: float,
    delta: float,
    ledger: Any,
    make_rng: Callable[[], SecureRandom] = SecureRandom,
) -> tuple[Any, dict[str, float]]:
    """The ``synth.model`` generator of ``train``'s records split as ``parts`` at
    (``epsilon``, ``delta``), each release in ``ledger`` first; and the noise multiplier
    of every group (per step for the discriminant model's teacher)."""
    import math

    from umbra.synth.discriminant_fit import fit_discriminant, plan_discriminant_noise
    from umbra.synth.federated_fit import fit_federated
    from umbra.synth.noise_plan import plan_noise
    from umbra.synth.statistics import statistics_groups

    s = cfg.synth
    if s.model == "discriminant":
        root = math.sqrt(epsilon)
        plan = plan_discriminant_noise(
            epsilon=epsilon,
            delta=delta,
            modalities=list(maps),
            steps=s.teacher_steps if s.teacher_steps is not None else max(1, round(60 * root)),
            clip=s.teacher_clip if s.teacher_clip is not None else 0.6 * math.sqrt(root),
            zclip=s.subspace_clip,
            accountant=cfg.privacy.accountant,
        )
        gen = fit_discriminant(
            train, parts, masks, maps, plan=plan, ledger=ledger, make_rng=make_rng,
            secure=secure_sum(cfg, len(parts), len(train)), guidance=s.guidance,
        )  # fmt: skip
        return gen, plan.sigmas
    sigmas = plan_noise(
        epsilon=epsilon,
        delta=delta,
        groups=statistics_groups(maps),
        cov_weight=s.cov_weight,
        accountant=cfg.privacy.accountant,
    )
    gen = fit_federated(
        train,
        parts,
        masks,
        maps,
        noise_multipliers=sigmas,
        ledger=ledger,
        rank=s.rank,
        secure=secure_sum(cfg, len(parts), len(train)),
        make_rng=make_rng,
    )
    return gen, sigmas


def tstr_classifier(cfg: Config, maps: dict[str, Any], kind: str | None = None) -> Any:
    """The TSTR classifier ``kind`` (default ``synth.classifier``) of :data:`CLASSIFIER_NAMES`,
    set up from the run's config."""
    from umbra.run.prepare import text_encoder_options
    from umbra.synth.network_classifier import NetworkClassifier
    from umbra.synth.tstr import LinearClassifier

    kind = cfg.synth.classifier if kind is None else kind
    if kind not in CLASSIFIER_NAMES:
        raise ValueError(f"unknown TSTR classifier {kind!r}; known: {', '.join(CLASSIFIER_NAMES)}")
    if kind == "linear":
        return LinearClassifier(maps)
    return NetworkClassifier(
        hidden=cfg.model.hidden,
        embed_dim=cfg.model.embed_dim,
        dropout=cfg.model.dropout,
        encoders=dict(cfg.model.encoders),
        encoder_options=text_encoder_options(cfg),
        epochs=cfg.synth.classifier_epochs,
        seed=cfg.run.seed,
        maps=maps,
    )


def load_synth_settings(run_dir: Path, n: int, overrides: Sequence[str] = ()) -> Config:
    """The finished run's config with the ``synth.*`` ``overrides`` applied.

    Raises a one-line UmbraError when ``n`` < 1, ``run_dir`` holds no finished run, an
    override is not a ``synth.*`` setting, or the run was trained without DP while
    ``synth.require_dp`` holds.
    """
    from umbra.audit.run import load_finished_run

    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    cfg, _ = load_finished_run(run_dir)
    raw = cfg.model_dump(mode="json")
    for o in overrides:
        if not o.strip().startswith("synth."):
            raise ConfigError(f"--set {o!r}: umbra synth changes only synth.* settings")
        apply_override(raw, o)
    cfg = validate_config(raw)
    if cfg.privacy.mode == "none" and cfg.synth.require_dp:
        raise ConfigError(
            f"{run_dir} was trained without differential privacy (privacy.mode = 'none'): its "
            "records are unprotected already; set synth.require_dp=false to fit the DP "
            "generator anyway"
        )
    return cfg


def epsilon_with_run(run_ledger: Path, synth_ledger: Path) -> float | None:
    """ε of each organisation's run releases and generator releases composed (the worst
    organisation's), at the generator's δ; None when the run kept no example-level ledger."""
    from umbra.privacy.ledger import compute_report, read_ledger

    if not run_ledger.exists():
        return None
    run, synth = read_ledger(run_ledger), read_ledger(synth_ledger)
    if run.unit != synth.unit:
        return None
    run.releases.extend(synth.releases)
    return compute_report(run, delta=synth.delta, accountant=synth.accountant).epsilon["total"]


def _fidelity(syn: Any, real: Any, maps: dict[str, Any]) -> dict[str, float | None]:
    from umbra.synth.fidelity import frechet_distance

    out: dict[str, float | None] = {}
    for j, m in enumerate(real.modalities):
        a = np.asarray(syn.features[m])[syn.mask[:, j]]
        b = np.asarray(real.features[m])[real.mask[:, j]]
        if len(a) < 2 or len(b) < 2:
            out[m] = None
            continue
        out[m] = frechet_distance(maps[m].forward(a)[0], maps[m].forward(b)[0])
    return out


def image_value_range(cfg: Config) -> tuple[float, float]:
    """Feature values of black and white pixels (fmnist-avt standardises its images)."""
    if cfg.data.source == "fmnist-avt":
        from umbra.data.sources.fmnist import FMNIST_MEAN, FMNIST_STD

        return (-FMNIST_MEAN / FMNIST_STD, (1 - FMNIST_MEAN) / FMNIST_STD)
    return (0.0, 1.0)


def _render(cfg: Config, syn: Any, out: Path, fmap: Any, image_shape: tuple[int, int, int]) -> int:
    """Render up to ``synth.render`` synthetic images; returns how many were written."""
    from umbra.synth.render import render_scattering, write_png
    from umbra.synth.synthetic_set import write_image_manifest

    if cfg.synth.render == 0 or "image" not in syn.modalities:
        return 0
    have = np.flatnonzero(syn.mask[:, syn.modality_index("image")])[: cfg.synth.render]
    if len(have) == 0:
        return 0
    feats = np.asarray(syn.features["image"])[have]
    if cfg.data.image_features == "scattering":
        images = render_scattering(
            feats, fmap, image_shape, value_range=image_value_range(cfg),
            steps=cfg.synth.render_steps,
        )  # fmt: skip
    else:
        lo, hi = image_value_range(cfg)
        images = np.clip((feats - lo) / (hi - lo), 0.0, 1.0)
    ids = [f"s{i:06d}" for i in have]
    paths = [out / "images" / f"{i}.png" for i in ids]
    for img, p in zip(images, paths, strict=True):
        write_png(img, p)
    labels = [syn.class_names[syn.labels[i]] for i in have]
    write_image_manifest(out, ids, labels, paths)
    return len(have)


def synthesize(
    run_dir: Path,
    n: int,
    *,
    out: Path | None = None,
    overrides: Sequence[str] = (),
    on_status: Callable[[str], None] | None = None,
    make_rng: Callable[[], SecureRandom] = SecureRandom,
) -> dict[str, Any]:
    """Fit, sample, write and measure (see the module docstring); returns ``synth.json``'s
    object. ``out`` defaults to ``run_dir/synthetic``; it must not hold a generator yet
    (its ledger would count the new releases on top of the old)."""
    from umbra.privacy.ledger import PrivacyLedger, replay
    from umbra.run.prepare import prepare_data
    from umbra.synth.membership_attack import generator_membership, sample_records
    from umbra.synth.synthetic_set import save_synthetic
    from umbra.synth.tstr import tstr_accuracy

    say = on_status or (lambda s: None)
    started = time.perf_counter()
    cfg = load_synth_settings(run_dir, n, overrides)
    s = cfg.synth
    out = Path(out) if out is not None else run_dir / "synthetic"
    if (out / LEDGER_FILE).exists():
        raise DataError(f"{out} holds a generator already; choose another --out")
    delta = s.delta if s.delta is not None else cfg.privacy.delta
    say(f"preparing the run's data ({cfg.data.source}) as the run did")
    prep = prepare_data(cfg)
    maps = generator_maps(cfg, prep.train.feature_shapes())
    ledger = PrivacyLedger(
        out / LEDGER_FILE, unit="example", delta=delta, accountant=cfg.privacy.accountant
    )
    say(f"fitting the generator across {len(prep.parts)} organisations (ε = {s.epsilon:g})")
    gen, sigmas = fit_generator(
        cfg,
        prep.train,
        prep.parts,
        prep.masks,
        maps,
        epsilon=s.epsilon,
        delta=delta,
        ledger=ledger,
        make_rng=make_rng,
    )
    gen.save(out / "generator.npz")
    spent = replay(out / LEDGER_FILE)
    rng = np.random.default_rng(cfg.run.seed)
    syn = gen.sample(n, rng)
    save_synthetic(syn, out)
    rendered = 0
    if "image" in prep.train.modalities and len(prep.train.features["image"]):
        say(f"rendering up to {s.render} images")
        pixel_shape = _pixel_shape(cfg, prep.train.feature_shapes()["image"])
        if pixel_shape is not None:
            rendered = _render(cfg, syn, out, maps["image"], pixel_shape)
    say("measuring: train on synthetic, test on real; fidelity; membership attack")
    tstr = tstr_accuracy(syn, prep.test, maps, classifier=tstr_classifier(cfg, maps))
    members = prep.train.subset(np.concatenate(prep.parts)).with_mask(np.concatenate(prep.masks))
    membership = generator_membership(
        gen,
        sample_records(members, s.audit_records, rng),
        sample_records(prep.test, s.audit_records, rng),
        epsilon=spent.epsilon["total"],
        delta=delta,
        rng=rng,
    )
    summary: dict[str, Any] = {
        "run": str(run_dir),
        "records": n,
        "rendered_images": rendered,
        "generator": {
            "model": s.model,
            "kind": MODEL_NAMES[s.model],
            **({"rank": s.rank} if s.model == "gaussian" else {}),
            "dims": {m: f.dim for m, f in maps.items()},
            "organisations": len(prep.parts),
        },
        "privacy": {
            "epsilon": spent.epsilon["total"],
            "delta": delta,
            "accountant": cfg.privacy.accountant,
            "noise_multipliers": sigmas,
            "epsilon_with_run": epsilon_with_run(run_dir / LEDGER_FILE, out / LEDGER_FILE),
            "ledger": LEDGER_FILE,
            "noise": noise_claim(cfg, len(prep.parts)),
        },
        "tstr": {"classifier": CLASSIFIER_NAMES[s.classifier], "accuracy": tstr},
        "fidelity": {
            "metric": "Fréchet distance to the held-out records",
            "per_modality": _fidelity(syn, prep.test, maps),
        },
        "membership": membership,
        "seconds": time.perf_counter() - started,
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def _pixel_shape(cfg: Config, feature_shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """The ``(C, H, W)`` of the images behind ``feature_shape`` (None: not images)."""
    if cfg.data.image_features == "pixels":
        return (int(feature_shape[0]), int(feature_shape[1]), int(feature_shape[2]))
    from umbra.data.scattering import SCATTERING_J, scattering_shape

    c = feature_shape[0] // scattering_shape((1, 4, 4))[0]
    side = 2**SCATTERING_J
    return (c, feature_shape[1] * side, feature_shape[2] * side)
