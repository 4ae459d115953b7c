"""The discriminant generator (synth.model = "discriminant"): its per-record bounds against
autograd and numpy, the ledger's replay against dp-accounting, the density against scipy,
and a toy set whose answer is known (``umbra synth`` with it: tests/test_synth.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from scipy.stats import multivariate_normal

from umbra.data.sources.synthetic import make_synthetic
from umbra.privacy.ledger import PrivacyLedger, read_ledger, replay
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
from umbra.synth.discriminant_fit import fit_discriminant, plan_discriminant_noise
from umbra.synth.feature_map import FeatureMap, feature_map_for
from umbra.synth.generator import GaussianGenerator
from umbra.synth.secure_release import SecureNoise
from umbra.synth.tstr import tstr_accuracy

DELTA = 1e-5


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    u = np.abs(rng.normal(size=(n, d))) * np.linspace(0.01, 1, d)
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def test_scale_vectors_are_bounded_and_give_each_channels_mean_and_rms() -> None:
    rng = np.random.default_rng(0)
    fmap = FeatureMap((3, 4, 4), None)
    sizes = channel_sizes(fmap)
    assert (
        sizes.tolist() == [16, 16, 16] and channel_sizes(FeatureMap((5,), None)).tolist() == [1] * 5
    )
    u = _unit(rng, 500, 48)
    vec = scale_vectors(u, sizes)
    assert np.all(np.linalg.norm(vec, axis=1) <= math.sqrt(3) + 1e-12)
    std = Standardiser.from_sums(vec.sum(0), sizes, noise_std=0.0)
    blocks = u.reshape(500, 3, 16)
    assert np.allclose(std.centre, np.repeat(blocks.mean(axis=(0, 2)), 16))
    rms = np.sqrt((blocks**2).sum(2)).mean(0) / 4  # mean root energy per number
    assert np.allclose(std.scale, np.repeat(rms * math.sqrt(48), 16))
    assert np.allclose(std.inverse(std.forward(u)), u)


def test_clipped_gradient_sum_matches_per_record_autograd() -> None:
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(size=(40, 6)), dtype=torch.float64)
    y = torch.tensor(rng.integers(0, 3, 40))
    w = torch.tensor(rng.normal(size=(6, 3)), dtype=torch.float64)
    want = torch.zeros(6, 3, dtype=torch.float64)
    norms = []
    for i in range(40):
        wi = w.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy((x[i : i + 1] @ wi), y[i : i + 1]).backward()
        g = wi.grad
        assert g is not None
        norms.append(float(g.norm()))
        want += g * min(1.0, 0.5 / float(g.norm()))
    assert max(norms) > 0.5  # the clip binds for some records
    got = clipped_gradient_sum(x, y, w, 0.5)
    assert torch.allclose(got, want, atol=1e-10)


def test_subspace_statistics_respect_their_bounds() -> None:
    rng = np.random.default_rng(2)
    v = rng.normal(size=(200, 12))
    basis = subspace_of(rng.normal(size=(13, 4)))
    assert basis.shape == (12, 3) and np.allclose(basis.T @ basis, np.eye(3))
    full = subspace_statistics(v, rng.integers(0, 4, 200), np.full(200, 0.5), basis, 0.3, 4, 3)
    assert full["rows"].shape == (3, 3) and full["cols"].shape == (4, 4)
    for i in range(5):  # one record at a time: each sum within its bound
        one = subspace_statistics(v[i : i + 1], np.array([1]), np.array([0.7]), basis, 0.3, 4, 3)
        assert np.linalg.norm(one["count"]) <= math.sqrt(2) + 1e-12
        assert np.linalg.norm(one["mean"]) <= 0.3 + 1e-12
        assert np.linalg.norm(one["cov"]) <= 0.09 + 1e-12
        rest = v[i] - basis @ (basis.T @ v[i])
        assert np.allclose(np.trace(one["rows"]), min(1.0, float(rest @ rest)))
        for g in ("rows", "cols"):
            assert np.linalg.norm(one[g]) <= RESIDUAL_CLIP**2 + 1e-12


@pytest.mark.parametrize("secure", [False, True], ids=["local", "distributed"])
def test_ledger_replays_to_epsilon_as_dp_accounting_composes_it(
    tmp_path: Path, secure: bool
) -> None:
    data = make_synthetic(n=300, num_classes=3, modalities=("image", "text"), seed=4)
    maps = {m: feature_map_for(s, max_dim=8192) for m, s in data.feature_shapes().items()}
    plan = plan_discriminant_noise(
        epsilon=2.0, delta=DELTA, modalities=list(maps), steps=5, clip=0.4, zclip=0.3
    )
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl", delta=DELTA)
    parts = [np.arange(0, 120), np.arange(120, 300)]
    fit_discriminant(data, parts, [data.mask[p] for p in parts], maps, plan=plan, ledger=ledger,
                     secure=SecureNoise(2, shares=2, records=300) if secure else None,
                     make_rng=lambda: SecureRandom.for_testing(5))  # fmt: skip
    lines = read_ledger(tmp_path / "ledger.jsonl").releases
    assert len(lines) == 2 * (1 + 5 + 1)  # two organisations: scale, 5 steps, subspace
    assert all(r.sample_rate == 1.0 and r.steps == 1 for r in lines)
    acc = PLDAccountant()  # the reference: every group of one party's rounds composed
    for g, s in plan.sigmas.items():
        for _ in range(5 if g.endswith(".teacher") else 1):
            acc.compose(dp_event.GaussianDpEvent(s))
    reference = float(acc.get_epsilon(DELTA))
    report = replay(tmp_path / "ledger.jsonl")
    assert report.per_party.keys() == {"0", "1"}
    assert report.epsilon["total"] == pytest.approx(reference, rel=1e-3)
    assert reference == pytest.approx(2.0, rel=0.01) and reference <= 2.0 + 1e-6


def test_each_round_is_in_the_ledger_before_its_sums_are_computed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Write-ahead: the first organisation's first classifier step fails while computing
    its gradient; the ledger already holds that round (and round 0 of both)."""
    import umbra.synth.discriminant_fit as fit_module

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("organisation stopped")

    monkeypatch.setattr(fit_module, "clipped_gradient_sum", fail)
    data = make_synthetic(n=200, num_classes=3, modalities=("image",), seed=4)
    maps = {m: feature_map_for(s, max_dim=8192) for m, s in data.feature_shapes().items()}
    plan = plan_discriminant_noise(
        epsilon=2.0, delta=DELTA, modalities=list(maps), steps=3, clip=0.4, zclip=0.3
    )
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl", delta=DELTA)
    parts = [np.arange(0, 100), np.arange(100, 200)]
    with pytest.raises(RuntimeError, match="organisation stopped"):
        fit_discriminant(data, parts, [data.mask[p] for p in parts], maps, plan=plan,
                         ledger=ledger)  # fmt: skip
    lines = read_ledger(tmp_path / "ledger.jsonl").releases
    assert [(r.round, r.party) for r in lines] == [(0, "0"), (0, "1"), (1, "0")]


def test_log_density_is_the_models_gaussian_with_the_rest_on_the_complement() -> None:
    """Reference: scipy's densities of z and of the rest in an explicit orthonormal basis of
    the complement of B, with the covariance ``rows ⊗ cols`` there."""
    rng = np.random.default_rng(3)
    c, p = 2, 3
    d = c * p
    basis = np.linalg.qr(rng.normal(size=(d, 2)))[0]
    a, b = rng.normal(size=(c, c)), rng.normal(size=(p, p))
    model = DiscriminantModel(
        centre=0.1 * rng.normal(size=d), scale=rng.uniform(0.05, 0.2, d), basis=basis,
        means=rng.normal(size=(3, 2)), cov=np.array([[0.5, 0.1], [0.1, 0.3]]),
        rows=a @ a.T + np.eye(c), cols=b @ b.T + np.eye(p), rho=np.full(3, 0.5),
        teacher=rng.normal(size=(d + 1, 3)), prior=np.array([0.5, 0.3, 0.2]),
    )  # fmt: skip
    labels = rng.integers(0, 3, 50)
    u = rng.normal(size=(50, d))
    comp = np.linalg.svd(np.eye(d) - basis @ basis.T)[0][:, : d - 2]  # (D, D − k)
    kron = np.kron(model.rows, model.cols)
    for i in range(5):
        v = (u[i] - model.centre) / model.scale
        want = (
            multivariate_normal(model.means[labels[i]], model.cov).logpdf(basis.T @ v)
            + multivariate_normal(np.zeros(d - 2), comp.T @ kron @ comp).logpdf(comp.T @ v)
            - np.log(model.scale).sum()
        )
        assert model.log_density(u[i : i + 1], labels[i : i + 1])[0] == pytest.approx(want)
    # samples: z has the model's moments, and every record has norm 1 as real ones do
    many = model.sample(np.zeros(20000, dtype=int), rng)
    assert np.allclose(np.linalg.norm(many, axis=1), 1.0)
    z = ((many - model.centre) / model.scale) @ basis
    assert np.allclose(z.mean(0), model.means[0], atol=0.03)
    assert np.allclose(np.cov(z.T), model.cov, atol=0.03)


def test_guided_model_is_the_marginal_reweighted_by_the_teachers_softmax() -> None:
    """Classifier guidance against two references: its density against scipy's mixture of
    the class Gaussians times the rest times ``softmax(γ ℓ)_y / P_γ(y)``, and its rejection
    sampler's class means of z against importance-weighted draws of the marginal."""
    rng = np.random.default_rng(5)
    c, p, k = 2, 3, 3
    d = c * p
    basis = np.linalg.qr(rng.normal(size=(d, 2)))[0]
    plain = DiscriminantModel(
        centre=np.zeros(d), scale=np.full(d, 0.1), basis=basis,
        means=np.array([[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.8]]), cov=0.4 * np.eye(2),
        rows=np.eye(c), cols=np.eye(p), rho=np.full(k, 0.5),
        teacher=np.vstack([basis @ rng.normal(size=(2, k)) * 0.3, np.zeros(k)]),
        prior=np.array([0.5, 0.3, 0.2]),
    )  # fmt: skip
    model = plain._guided(2.0)
    assert model.label_mass is not None and model.label_mass.sum() == pytest.approx(1.0)
    u = rng.normal(size=(5, d)) * 0.05
    labels = np.array([0, 1, 2, 1, 0])
    v = u / 0.1
    comp = np.linalg.svd(np.eye(d) - basis @ basis.T)[0][:, : d - 2]
    for i in range(5):
        z = basis.T @ v[i]
        mix = sum(w * multivariate_normal(m, plain.cov).pdf(z)
                  for w, m in zip(plain.prior, plain.means, strict=True))  # fmt: skip
        logits = 2.0 * (v[i] @ plain.teacher[:-1] + plain.teacher[-1])
        soft = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        want = (
            np.log(mix)
            + multivariate_normal(np.zeros(d - 2), comp.T @ comp).logpdf(comp.T @ v[i])
            - np.log(plain.scale).sum()
            + np.log(soft[labels[i]] / model.label_mass[labels[i]])
        )
        assert model.log_density(u[i : i + 1], labels[i : i + 1])[0] == pytest.approx(want)
    # sampler: class 2's guided draws against the marginal's draws weighted by softmax_2
    draws = plain._draw(rng.choice(k, size=200_000, p=plain.prior), rng)
    weights = np.exp(2.0 * plain.logits(draws))
    weights = (weights / weights.sum(axis=1, keepdims=True))[:, 2]
    z_all = ((draws - plain.centre) / plain.scale) @ basis
    reference = (weights[:, None] * z_all).sum(0) / weights.sum()
    guided = model.sample(np.full(20_000, 2), rng)
    z_guided = ((guided - model.centre) / model.scale) @ basis
    assert np.allclose(z_guided.mean(0), reference, atol=0.03)
    assert not np.allclose(reference, plain.means[2], atol=0.1)  # guidance moved the class


@pytest.mark.parametrize(
    ("secure", "guidance"), [(False, 0.0), (True, 10.0)], ids=["local", "distributed-guided"]
)
def test_fits_a_toy_set_whose_classes_a_linear_rule_separates(
    tmp_path: Path, secure: bool, guidance: float
) -> None:
    """Well-separated classes: at ε = 8 the synthetic records teach a classifier that is
    right on nearly all real held-out records, and the generator survives save and load;
    with each organisation's noise and unguided, or through the secure sum and guided."""
    data = make_synthetic(n=3000, num_classes=4, modalities=("image", "text"), seed=6)
    test = make_synthetic(n=3000, num_classes=4, modalities=("image", "text"), seed=6)
    test = test.subset(np.arange(2000, 3000))
    data = data.subset(np.arange(2000))
    maps = {m: feature_map_for(s, max_dim=8192) for m, s in data.feature_shapes().items()}
    plan = plan_discriminant_noise(
        epsilon=8.0, delta=DELTA, modalities=list(maps), steps=40, clip=1.0, zclip=0.5
    )
    parts = [np.arange(0, 1000), np.arange(1000, 2000)]
    gen = fit_discriminant(
        data, parts, [data.mask[p] for p in parts], maps, plan=plan,
        ledger=PrivacyLedger(tmp_path / "ledger.jsonl", delta=DELTA), guidance=guidance,
        secure=SecureNoise(2, shares=2, records=2000) if secure else None,
    )  # fmt: skip
    syn = gen.sample(4000, np.random.default_rng(0))
    assert set(np.unique(syn.labels)) == {0, 1, 2, 3}
    acc = tstr_accuracy(syn, test, maps, [("image",), ("text",)])
    real = tstr_accuracy(data, test, maps, [("image",), ("text",)])
    assert acc["fused"] is not None and real["fused"] is not None
    assert acc["fused"] > 0.9 and acc["fused"] >= real["fused"] - 0.08
    gen.save(tmp_path / "generator.npz")
    back = GaussianGenerator.load(tmp_path / "generator.npz")
    assert back.models["image"].kind == "discriminant"
    assert back.models["image"].guidance == guidance
    u, _ = maps["image"].forward(np.asarray(test.features["image"])[:20])
    assert np.allclose(
        back.models["image"].log_density(u, test.labels[:20]),
        gen.models["image"].log_density(u, test.labels[:20]),
    )
