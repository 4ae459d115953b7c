"""DP synthetic data (umbra.synth): statistics and their bounds, the noise, the ledger's
replay, the generator's fit, TSTR on toy sets with known answers, and ``umbra synth`` on a
small finished run (its bad inputs: one line, exit 2)."""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant

from umbra.config import resolve_config
from umbra.data.dataset import MultimodalData
from umbra.data.sources.synthetic import make_synthetic
from umbra.privacy.ledger import PrivacyLedger, read_ledger, replay
from umbra.privacy.randomness import SecureRandom
from umbra.synth import load_synthetic
from umbra.synth.feature_map import FeatureMap, feature_map_for
from umbra.synth.federated_fit import fit_federated
from umbra.synth.generator import GaussianGenerator
from umbra.synth.noise_plan import plan_noise
from umbra.synth.release import noised_statistics
from umbra.synth.secure_release import SecureNoise
from umbra.synth.statistics import CLIP_NORMS, clipped_statistics, statistics_groups
from umbra.synth.tstr import tstr_accuracy

DELTA = 1e-5


def _maps(data: MultimodalData, max_dim: int = 729) -> dict[str, FeatureMap]:
    return {m: feature_map_for(s, max_dim=max_dim) for m, s in data.feature_shapes().items()}


def test_feature_map_round_trip_and_pooling() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    flat = feature_map_for((16,), max_dim=729)
    u, rho = flat.forward(x)
    assert np.allclose(np.linalg.norm(u, axis=1), 1.0)
    assert np.allclose(flat.inverse(u, rho), x, atol=1e-4)
    maps = rng.standard_normal((3, 2, 8, 8)).astype(np.float32)
    pooled = feature_map_for((2, 8, 8), max_dim=32)  # 2 · 4² = 32
    assert pooled.pool == 4 and pooled.dim == 32
    u, rho = pooled.forward(maps)
    # the reference pooling: means of 2×2 blocks, then unit norm
    blocks = maps.reshape(3, 2, 4, 2, 4, 2).mean(axis=(3, 5)).reshape(3, -1)
    assert np.allclose(u, blocks / np.linalg.norm(blocks, axis=1, keepdims=True), atol=1e-6)
    flat_maps = np.full((1, 2, 8, 8), 0.25, np.float32)  # constant: upsampling is exact
    assert np.allclose(pooled.inverse(*pooled.forward(flat_maps)), flat_maps, atol=1e-5)
    # a pooled vector survives the way back and forth, also with overlapping windows (7 -> 3)
    odd = feature_map_for((4, 7, 7), max_dim=36)
    v = rng.standard_normal((6, 36))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    again, _ = odd.forward(odd.inverse(v, np.full(6, 0.3)))
    assert np.allclose(again, v, atol=1e-5)
    assert pooled.forward(maps[:0])[0].shape == (0, 32)


def test_one_record_stays_within_each_clip_norm_and_sums_add() -> None:
    data = make_synthetic(n=40, num_classes=3, seed=1)
    maps = _maps(data)
    mask = data.mask.copy()
    mask[::3, 0] = False
    for i in range(5):
        one = clipped_statistics(
            {m: data.features[m][i : i + 1] for m in data.modalities},
            mask[i : i + 1], data.labels[i : i + 1], maps, 3,
        )  # fmt: skip
        for m in maps:
            assert np.linalg.norm(one.means[m]) <= CLIP_NORMS["mean"] + 1e-9
            assert np.linalg.norm(one.counts[m]) <= CLIP_NORMS["count"] + 1e-9
            assert np.linalg.norm(np.triu(one.covs[m])) <= CLIP_NORMS["cov"] + 1e-9
        assert np.linalg.norm(one.patterns) == pytest.approx(CLIP_NORMS["pattern"])
    whole = clipped_statistics(data.features, mask, data.labels, maps, 3)
    a = clipped_statistics({m: f[:25] for m, f in data.features.items()}, mask[:25],
                           data.labels[:25], maps, 3)  # fmt: skip
    b = clipped_statistics({m: f[25:] for m, f in data.features.items()}, mask[25:],
                           data.labels[25:], maps, 3)  # fmt: skip
    both = a + b
    for m in maps:
        assert np.allclose(both.means[m], whole.means[m])
        assert np.allclose(both.counts[m], whole.counts[m])
        assert np.allclose(both.covs[m], whole.covs[m])
    assert np.array_equal(both.patterns, whole.patterns)
    # the records lacking the image add nothing to the image's counts
    counts = whole.counts["image"][:, 0]
    assert np.array_equal(counts, np.bincount(data.labels[mask[:, 0]], minlength=3))


def test_noise_has_the_planned_spread_and_keeps_covariances_symmetric() -> None:
    data = make_synthetic(n=30, num_classes=2, modalities=("image",), seed=2)
    maps = _maps(data)
    stats = clipped_statistics(data.features, data.mask, data.labels, maps, 2)
    sig = {"image.mean": 2.0, "image.count": 4.0, "image.cov": 3.0, "pattern": 5.0}
    noisy = noised_statistics(stats, noise_multipliers=sig, rng=SecureRandom.for_testing(3))
    dm = (noisy.means["image"] - stats.means["image"]).ravel()
    dc = noisy.covs["image"] - stats.covs["image"]
    assert np.allclose(dc, dc.T)
    upper = dc[np.triu_indices(len(dc))]
    assert abs(dm.mean()) < 4 * 2.0 / math.sqrt(dm.size)
    assert dm.std() == pytest.approx(2.0, rel=0.1)  # 128 entries
    assert upper.std() == pytest.approx(3.0, rel=0.06)  # 2,080 entries
    with pytest.raises(ValueError, match="pattern"):
        noised_statistics(stats, noise_multipliers={**sig, "pattern": 0.0},
                          rng=SecureRandom.for_testing(3))  # fmt: skip


def _pld_epsilon(sigmas: dict[str, float], delta: float) -> float:
    """The independent reference: dp-accounting's PLD of the groups' Gaussians composed."""
    acc = PLDAccountant()
    for s in sigmas.values():
        acc.compose(dp_event.GaussianDpEvent(s))
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize("secure", [False, True], ids=["local", "distributed"])
def test_the_generators_ledger_replays_to_its_epsilon(tmp_path: Path, secure: bool) -> None:
    data = make_synthetic(n=300, num_classes=3, seed=4)
    maps = _maps(data)
    sig = plan_noise(epsilon=2.0, delta=DELTA, groups=statistics_groups(maps))
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl", delta=DELTA)
    parts = [np.arange(0, 120), np.arange(120, 300)]
    seeds = itertools.count(5)  # each organisation its own stream
    gen = fit_federated(
        data, parts, [data.mask[p] for p in parts], maps, noise_multipliers=sig, ledger=ledger,
        rank=4, secure=SecureNoise(2, shares=2, records=300) if secure else None,
        make_rng=lambda: SecureRandom.for_testing(next(seeds)),
    )  # fmt: skip
    # the secure sum decodes to the statistics: each class mean within the noise of numpy's
    u, _ = maps["image"].forward(np.asarray(data.features["image"])[data.mask[:, 0]])
    exact = np.stack([u[data.labels[data.mask[:, 0]] == c].mean(0) for c in range(3)])
    assert np.abs(gen.models["image"].means - exact).max() < 0.5
    report = replay(tmp_path / "ledger.jsonl")
    assert report.per_party.keys() == {"0", "1"}
    reference = _pld_epsilon(sig, DELTA)
    assert report.epsilon["total"] == pytest.approx(reference, rel=1e-3)
    assert reference <= 2.0 + 1e-9 and reference == pytest.approx(2.0, rel=0.01)
    lines = read_ledger(tmp_path / "ledger.jsonl").releases
    assert all(r.sample_rate == 1.0 and r.steps == 1 for r in lines)


def test_generator_of_exact_statistics_reproduces_the_class_means() -> None:
    data = make_synthetic(n=2000, num_classes=4, modalities=("image", "text"), seed=6)
    maps = _maps(data)
    stats = clipped_statistics(data.features, data.mask, data.labels, maps, 4)
    gen = GaussianGenerator.fit(stats, maps, data.class_names, rank=8)
    syn = gen.sample(8000, np.random.default_rng(0))
    assert set(np.unique(syn.labels)) == {0, 1, 2, 3} and syn.mask.all()
    for m in ("image", "text"):
        u_real, _ = maps[m].forward(data.features[m])
        u_syn, _ = maps[m].forward(syn.features[m])
        for c in range(4):
            want = u_real[data.labels == c].mean(axis=0)
            got = u_syn[syn.labels == c].mean(axis=0)
            assert np.linalg.norm(got - want) < 0.1 * np.linalg.norm(want)
        # the scale comes back: norms of the synthetic features match the real ones
        ratio = (
            np.linalg.norm(syn.features[m].reshape(8000, -1), axis=1).mean()
            / np.linalg.norm(data.features[m].reshape(2000, -1), axis=1).mean()
        )
        assert ratio == pytest.approx(1.0, rel=0.1)


def test_membership_attack_sees_overfitting_and_not_missing_modalities() -> None:
    """Fitted without noise on 60 records of 64 dimensions, the generator overfits: its
    members score higher (AUC well above 0.5). Fitted on other records, members and
    non-members are alike, even when the members lack modalities the non-members hold."""
    from umbra.synth.membership_attack import generator_membership

    kw = {"num_classes": 2, "modalities": ("image", "text"), "noise": 1.0}
    pool = make_synthetic(n=2000, seed=10, **kw)  # type: ignore[arg-type]
    maps = _maps(pool)
    members, others = pool.subset(np.arange(60)), pool.subset(np.arange(1000, 2000))

    def fitted(data: MultimodalData) -> GaussianGenerator:
        stats = clipped_statistics(data.features, data.mask, data.labels, maps, 2)
        return GaussianGenerator.fit(stats, maps, data.class_names, rank=8)

    rng = np.random.default_rng(0)
    over = generator_membership(fitted(members), members, pool.subset(np.arange(500, 560)),
                                epsilon=1.0, delta=DELTA, rng=rng)  # fmt: skip
    assert over["auc"] > 0.8
    fair = fitted(others)
    lacking = pool.subset(np.arange(0, 500))
    mask = lacking.mask.copy()
    mask[::2, 1] = False  # half the members lack their text
    fair_run = generator_membership(fair, lacking.with_mask(mask), pool.subset(np.arange(500, 1000)),
                                    epsilon=1.0, delta=DELTA, rng=rng)  # fmt: skip
    assert abs(fair_run["auc"] - 0.5) < 0.06


def _swap(data: MultimodalData, perm: list[int]) -> MultimodalData:
    return MultimodalData(data.features, data.mask, np.asarray(perm)[data.labels],
                          data.modalities, data.class_names)  # fmt: skip


def test_tstr_on_toy_sets_with_known_answers() -> None:
    """Two classes whose prototypes a linear rule separates: a fresh sample from the same
    law scores ~1, the same sample with its labels swapped ~0, labels drawn at random
    ~0.5; a subset missing on the real side gives None."""
    kw = {"num_classes": 2, "modalities": ("image", "text"), "noise": 0.3}
    real = make_synthetic(n=400, seed=7, **kw)  # type: ignore[arg-type]
    fresh = make_synthetic(n=400, seed=8, **kw)  # type: ignore[arg-type]
    maps = _maps(real)
    good = tstr_accuracy(fresh, real, maps)
    assert set(good) == {"image", "text", "image+text", "fused"}
    assert all(v is not None and v >= 0.97 for v in good.values())
    bad = tstr_accuracy(_swap(fresh, [1, 0]), real, maps)
    assert all(v is not None and v <= 0.03 for v in bad.values())
    labels = np.random.default_rng(9).integers(0, 2, len(fresh))
    noise = MultimodalData(fresh.features, fresh.mask, labels, fresh.modalities,
                           fresh.class_names)  # fmt: skip
    chance = tstr_accuracy(noise, real, maps)["fused"]
    assert chance is not None and 0.35 <= chance <= 0.65
    no_text = real.with_mask(np.c_[real.mask[:, 0], np.zeros(len(real), bool)])
    assert tstr_accuracy(fresh, no_text, maps)["text"] is None


def test_network_classifier_on_toy_sets_with_known_answers() -> None:
    """The run's architecture as TSTR classifier: trained on a fresh sample of the real
    law it scores ~1 on the real set, with the labels swapped ~0, on random labels ~0.5;
    it sees only the subset's modalities (an empty real side gives None)."""
    from umbra.synth.network_classifier import NetworkClassifier

    kw = {"num_classes": 2, "modalities": ("image", "text"), "noise": 0.3}
    real = make_synthetic(n=300, seed=7, **kw)  # type: ignore[arg-type]
    fresh = make_synthetic(n=300, seed=8, **kw)  # type: ignore[arg-type]
    net = NetworkClassifier(hidden=16, embed_dim=16, epochs=15, batch_size=32, min_steps=1)
    good = tstr_accuracy(fresh, real, _maps(real), [("image",), ("text",)], classifier=net)
    assert set(good) == {"image", "text", "fused"}
    assert all(v is not None and v >= 0.95 for v in good.values()), good
    bad = tstr_accuracy(_swap(fresh, [1, 0]), real, _maps(real), [], classifier=net)["fused"]
    assert bad is not None and bad <= 0.05, bad
    labels = np.random.default_rng(9).integers(0, 2, len(fresh))
    noise = MultimodalData(fresh.features, fresh.mask, labels, fresh.modalities,
                           fresh.class_names)  # fmt: skip
    chance = net.fit_score(noise, real, ("image",))
    assert chance is not None and 0.3 <= chance <= 0.7
    # the text column of the training set carries the label, the image column noise: a
    # classifier restricted to the image cannot use it
    leak = MultimodalData({"image": np.zeros_like(fresh.features["image"]),
                           "text": fresh.features["text"]}, fresh.mask, fresh.labels,
                          fresh.modalities, fresh.class_names)  # fmt: skip
    only_image = net.fit_score(leak, real, ("image",))
    assert only_image is not None and only_image <= 0.7
    assert net.fit_score(fresh, real.subset(np.arange(0)), ("image",)) is None
    # one epoch of 300 records at batch 256 is 2 steps: min_steps keeps training going
    one_epoch = NetworkClassifier(hidden=16, embed_dim=16, epochs=1)
    assert (one_epoch.fit_score(fresh, real, ("image", "text")) or 0.0) >= 0.95
    with pytest.raises(ValueError, match="epochs"):
        NetworkClassifier(hidden=8, embed_dim=8, epochs=0)
    # with the generator's maps, every record is seen pooled and spread back: detail finer
    # than the pooled map (which no synthetic record has) is gone, the pooled map kept
    pooled = {"image": feature_map_for((1, 8, 8), max_dim=16), "text": _maps(real)["text"]}
    seen = NetworkClassifier(hidden=8, embed_dim=8, maps=pooled)._seen(real)
    x = real.features["image"]
    blocks = x.reshape(len(x), 1, 4, 2, 4, 2).mean(axis=(3, 5))
    want = np.repeat(np.repeat(blocks, 2, axis=2), 2, axis=3)  # each 2×2 block its mean
    assert np.allclose(seen.features["image"], want, atol=1e-4)
    assert np.allclose(seen.features["text"], real.features["text"], atol=1e-4)


def test_synth_classifier_setting_picks_the_runs_architecture() -> None:
    from umbra.synth.network_classifier import NetworkClassifier
    from umbra.synth.synthesis import tstr_classifier
    from umbra.synth.tstr import LinearClassifier

    cfg = resolve_config("default", overrides=["synth.classifier=network",
                                               "synth.classifier_epochs=3"]).config  # fmt: skip
    net = tstr_classifier(cfg, {})
    assert isinstance(net, NetworkClassifier)
    assert (net.hidden, net.embed_dim, net.epochs) == (cfg.model.hidden, cfg.model.embed_dim, 3)
    assert net.encoders["image"] == "scattering"
    assert isinstance(tstr_classifier(cfg, {}, "linear"), LinearClassifier)
    with pytest.raises(ValueError, match="unknown TSTR classifier"):
        tstr_classifier(cfg, {}, "forest")


def _finished_run(folder: Path, privacy: str = "example") -> Path:
    """A run folder as ``umbra run`` leaves it, for the synthetic source (the generator
    needs the run's config and data, not its model)."""
    cfg = resolve_config("smoke", overrides=[
        "data.source=synthetic", "data.n_train=600", "data.n_test=200",
        "federation.num_clients=2", f"privacy.mode={privacy}", "data.missing={image=0.3}",
    ]).config  # fmt: skip
    raw = cfg.model_dump(mode="json")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(raw))
    (folder / "results.json").write_text(json.dumps({"config": raw, "final": {"accuracy": 0.5}}))
    return folder


def test_umbra_synth_writes_a_manifest_compatible_set(tmp_path: Path) -> None:
    from umbra.data.manifest import load_manifest
    from umbra.synth.synthesis import synthesize

    run = _finished_run(tmp_path / "run")
    out = tmp_path / "syn"
    summary = synthesize(run, 300, out=out, overrides=["synth.epsilon=4", "synth.render=5"])
    assert summary["privacy"]["epsilon"] == pytest.approx(
        replay(out / "ledger.jsonl").epsilon["total"]
    )
    assert summary["privacy"]["epsilon"] <= 4.0 + 1e-9
    syn = load_synthetic(out)
    assert len(syn) == 300 and syn.modalities == ("image", "audio", "text", "tabular")
    assert syn.feature_shapes()["image"] == (1, 8, 8)
    assert (~syn.mask[:, 0]).any() and syn.mask.any(axis=1).all()  # the missing image kept
    listed = load_manifest(out / "manifest.csv")
    assert len(listed.data) == summary["rendered_images"] == 5
    assert listed.data.modalities == ("image",)
    assert summary["tstr"]["accuracy"]["fused"] > 0.9  # well-separated classes
    assert 0.0 <= summary["membership"]["auc"] <= 1.0
    assert "ledger" in summary["privacy"] and not list(run.glob("synthetic"))
    # the run trained with each client's own noise: so does the generator, by default
    assert summary["privacy"]["noise"]["mode"] == "local"


def test_umbra_synth_with_the_discriminant_model(tmp_path: Path) -> None:
    from umbra.synth.synthesis import synthesize

    run = _finished_run(tmp_path / "run")
    out = tmp_path / "syn"
    seeds = itertools.count(11)  # a seeded stream per organisation and round: repeatable
    summary = synthesize(
        run, 300, out=out,
        overrides=["synth.epsilon=4", "synth.render=2", "synth.model=discriminant",
                   "synth.noise=distributed"],
        make_rng=lambda: SecureRandom.for_testing(next(seeds)),
    )  # fmt: skip
    assert summary["generator"]["model"] == "discriminant"
    noise = summary["privacy"]["noise"]
    assert noise["mode"] == "distributed" and noise["shares"] == 2  # ⌈0.67 · 2⌉
    assert "at most 0 organisations collude" in noise["holds_against"]
    assert summary["privacy"]["epsilon"] == pytest.approx(
        replay(out / "ledger.jsonl").epsilon["total"]
    )
    assert summary["privacy"]["epsilon"] <= 4.0 + 1e-6
    # steps: 60·√4 = 120 teacher rounds between the scale and the subspace rounds
    assert max(r.round for r in read_ledger(out / "ledger.jsonl").releases) == 121
    syn = load_synthetic(out)
    assert len(syn) == 300 and (~syn.mask[:, 0]).any()
    # four modalities share ε = 4 over 600 records: far above chance (4 classes), not exact
    assert summary["tstr"]["accuracy"]["fused"] > 0.6


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("empty", "holds no finished run"),
        ("no-dp", "without differential privacy"),
        ("n0", "--n must be at least 1"),
        ("set", "only synth.* settings"),
        ("classifier", "synth.classifier"),
        ("model", "synth.model"),
        ("noise", "synth.noise"),
        ("guidance", "synth.guidance"),
    ],
)
def test_cli_refuses_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    case: str, needle: str,
) -> None:  # fmt: skip
    from umbra.cli import main

    run = tmp_path / "empty"
    run.mkdir()
    if case != "empty":
        run = _finished_run(tmp_path / "run", privacy="none" if case == "no-dp" else "example")
    args = ["umbra", "synth", str(run), "--n", "0" if case == "n0" else "10"]
    if case == "set":
        args += ["--set", "privacy.epsilon=1"]
    if case == "classifier":
        args += ["--set", "synth.classifier=forest"]
    if case == "model":
        args += ["--set", "synth.model=gan"]
    if case == "noise":
        args += ["--set", "synth.noise=central"]
    if case == "guidance":
        args += ["--set", "synth.guidance=-1"]
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0]
