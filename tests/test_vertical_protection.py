"""Protected embeddings (secure sum) and labels (randomised response), and the label-leakage
attacks they defend against."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from umbra.config import resolve_config
from umbra.federation.server_app import initial_arrays
from umbra.privacy.randomness import SecureRandom
from umbra.run.prepare import model_spec_for, prepare_data
from umbra.secure.secagg.crypto import generate_keypair
from umbra.secure.secagg.quantize import QuantizationSpec, dequantize_sum
from umbra.vertical import protocol as P
from umbra.vertical.build import VerticalSetup, build_vertical
from umbra.vertical.label_dp import keep_probability, randomized_response, rr_epsilon_pld
from umbra.vertical.leakage import direction_attack_auc, norm_attack_auc
from umbra.vertical.party import FeatureParty
from umbra.vertical.secure_sum import encode_rows, mask_for, masked_share, pair_seeds, unmask_sum
from umbra.vertical.split_step import top_step
from umbra.vertical.top_model import TopModel
from umbra.vertical.trainer import local_exchange, train_epoch

SETS = ["data.source=synthetic", "data.n_train=160", "data.n_test=40", "federation.batch_size=32",
        'vertical.parties=[["image"], ["audio", "tabular"], ["text"]]']  # fmt: skip


def _setup(tmp: Path, *extra: str) -> tuple[VerticalSetup, list[FeatureParty]]:
    cfg = resolve_config(preset="vertical", overrides=[*SETS, *extra]).config
    prep = prepare_data(cfg)
    spec = model_spec_for(cfg, prep.train)
    init = initial_arrays(spec, 0)
    setup = build_vertical(cfg, prep.train, spec, work_dir=tmp / "w", state_root=tmp / "s",
                           init=init)  # fmt: skip
    return setup, [FeatureParty(s) for s in setup.specs]


def _keys(parties: list[FeatureParty]) -> None:
    publics = {p.spec.index: p.public_key() for p in parties}
    for p in parties:
        p.set_peers(publics)


def test_masks_cancel_and_the_secure_sum_is_the_plaintext_sum() -> None:
    keys = [generate_keypair() for _ in range(3)]
    publics = {i: k.public for i, k in enumerate(keys)}
    seeds = [pair_seeds(i, keys[i], publics) for i in range(3)]
    masks = [mask_for(i, seeds[i], step=5, length=1000) for i in range(3)]
    assert not (masks[0] == 0).all()
    assert (masks[0] + masks[1] + masks[2] == 0).all()  # mod 2^32
    spec = QuantizationSpec(clip=8.0, num_clients=3)
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(20, 6)) for _ in range(3)]
    x[1][:5] = 0.0  # rows this party does not hold
    # the same stochastic rounding in both: the integer sums agree exactly
    enc = [encode_rows(x[i], spec, np.random.default_rng(10 + i)) for i in range(3)]
    shares = [masked_share(x[i], own=i, seeds=seeds[i], step=5, spec=spec,
                           rng=np.random.default_rng(10 + i)) for i in range(3)]  # fmt: skip
    ring = shares[0] + shares[1] + shares[2]
    assert (ring == enc[0] + enc[1] + enc[2]).all()
    total = unmask_sum(shares, spec=spec, shape=(20, 6))
    # and the decoded sum is the float sum up to one rounding step per party
    assert np.abs(total - (x[0] + x[1] + x[2])).max() <= 3 / spec.scale
    # each single share decodes to noise, not to that party's embedding
    alone = dequantize_sum(shares[1], spec=spec, num_summed=1).reshape(20, 6)
    assert np.abs(alone - x[1]).mean() > 1.0


def test_label_holder_receives_only_sums_and_trains_the_same(tmp_path: Path) -> None:
    plain, plain_parties = _setup(tmp_path / "plain")
    secure, secure_parties = _setup(tmp_path / "secure")
    _keys(secure_parties)
    received: list[tuple[int, dict[str, np.ndarray]]] = []
    stats = train_epoch(secure.holder, local_exchange(secure_parties, received), epoch=1,
                        first_step=0, secure=True, clip=64.0)  # fmt: skip
    train_epoch(plain.holder, local_exchange(plain_parties), epoch=1, first_step=0,
                secure=False, clip=64.0)  # fmt: skip
    # what the label holder received: one uint32 share per party per step, never rows
    steps = [r for r in received if r[1]]
    assert len(steps) == 3 * stats.steps
    assert all(set(arrs) == {P.SHARE} and arrs[P.SHARE].dtype == np.uint32 for _, arrs in steps)
    # a party's first-step embedding rows, recomputed from the initial model: no share
    # (decoded alone) comes near them, while the three shares together decode to the sum
    fresh, _ = _setup(tmp_path / "fresh")
    batch = fresh.holder.batches(1)[0]
    spec = QuantizationSpec(clip=64.0, num_clients=3)
    first = {p: arrs[P.SHARE] for p, arrs in steps[:3]}
    rows = {}
    for p, s in enumerate(fresh.specs):
        req = fresh.holder.request(batch, p)
        emb = FeatureParty(s)._forward(req.positions, 0).detach().numpy()
        full = np.zeros((len(batch), emb.shape[1]))
        full[req.slots] = emb
        rows[p] = full
        alone = dequantize_sum(first[p], spec=spec, num_summed=1).reshape(full.shape)
        assert np.abs(alone - full).mean() > 1.0
    together = unmask_sum([first[p] for p in range(3)], spec=spec, shape=rows[0].shape)
    assert np.abs(together - sum(rows.values())).max() < 1e-6
    # the secure sum is exact to 1e-7 per step: the trained models agree closely
    pairs = [(a.export(), b.export()) for a, b in zip(plain_parties, secure_parties, strict=True)]
    pairs.append((plain.holder.export(), secure.holder.export()))
    for pa, pb in pairs:
        for k in pa:
            assert np.allclose(pa[k], pb[k], atol=1e-4), k


def test_randomized_response_epsilon_and_rates() -> None:
    assert keep_probability(math.log(9), 10) == pytest.approx(0.5)
    assert rr_epsilon_pld(1.5, 10) == pytest.approx(1.5, abs=1e-3)
    y = np.arange(20000) % 10
    z = randomized_response(y, num_classes=10, epsilon=math.log(9), rng=SecureRandom.for_testing(1))
    kept = np.mean(z == y)
    assert abs(kept - 0.5) < 4 * math.sqrt(0.25 / len(y))
    # the others are spread uniformly: each wrong class about (1 - 0.5) / 9
    wrong = np.bincount((z - y)[z != y] % 10, minlength=10)[1:] / len(y)
    assert np.abs(wrong - 0.5 / 9).max() < 0.01


def _toy_gradients(labels_for_training: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Gradients a feature party receives from a binary top model trained briefly."""
    from umbra.models import ModelSpec

    spec = ModelSpec(input_shapes={"text": (8,)}, num_classes=2, hidden=8, embed_dim=8, dropout=0.0)
    torch.manual_seed(0)
    top = TopModel(spec)
    opt = torch.optim.SGD(top.parameters(), lr=0.1)
    count = np.ones(len(x), dtype=np.int64)
    for i in range(0, len(x), 100):
        top_step(top, opt, x[i : i + 100], count[i : i + 100], labels_for_training[i : i + 100])
    _, grad = top_step(top, None, x, count, labels_for_training)
    return grad * len(x)  # per-record gradients (the mean loss divides by the batch)


def test_leakage_attacks_succeed_unprotected_and_fail_protected() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    y = (rng.random(n) < 0.1).astype(np.int64)  # imbalanced binary labels, as in Li et al.
    x = rng.normal(size=(n, 8)).astype(np.float32) + 0.3 * y[:, None]
    open_grads = _toy_gradients(y, x)
    assert norm_attack_auc(open_grads, y, positive=1) > 0.8
    assert direction_attack_auc(open_grads, y) > 0.8
    noisy = randomized_response(y, num_classes=2, epsilon=0.1, rng=SecureRandom.for_testing(7))
    protected = _toy_gradients(noisy, x)
    # no better than a coin either way (an attacker may also flip the score)
    assert abs(norm_attack_auc(protected, y, positive=1) - 0.5) <= 0.1
    assert abs(direction_attack_auc(protected, y) - 0.5) <= 0.1


def test_label_release_is_in_the_ledger_before_any_label_is_randomised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import umbra.vertical.build as build
    from umbra.privacy.ledger import PrivacyLedger, read_ledger, replay

    path = tmp_path / "ledger.jsonl"
    ledger = PrivacyLedger(path, unit="example", delta=1e-5)
    seen: list[str] = []

    def randomise(
        labels: np.ndarray, *, num_classes: int, epsilon: float, rng: SecureRandom | None = None
    ) -> np.ndarray:
        # the release is on disk (fsynced) before the labels are touched
        seen.append(f"rr after {len(read_ledger(path).label_releases)} label release(s)")
        return randomized_response(labels, num_classes=num_classes, epsilon=epsilon, rng=rng)

    monkeypatch.setattr(build, "randomized_response", randomise)
    cfg = resolve_config(preset="vertical", overrides=[*SETS, "vertical.label_dp=randomized-response",
                                                       "vertical.label_epsilon=1.5"]).config  # fmt: skip
    prep = prepare_data(cfg)
    spec = model_spec_for(cfg, prep.train)
    setup = build_vertical(cfg, prep.train, spec, work_dir=tmp_path / "w", state_root=tmp_path / "s",
                           init=initial_arrays(spec, 0), on_label_release=ledger.record_label)  # fmt: skip
    assert seen == ["rr after 1 label release(s)"]
    (release,) = read_ledger(path).label_releases
    assert (release.party, release.round, release.epsilon) == ("party-2", 0, 1.5)
    assert release.num_classes == setup.holder.num_classes
    assert replay(path).per_party["party-2"]["label"] == pytest.approx(1.5, abs=2e-3)
