"""Anomaly screening of updates: scores against hand computation, planted attackers found
with precision and recall 1.0 on a clear case, nobody flagged among honest clients."""

from __future__ import annotations

import numpy as np
import pytest

from umbra.federation.detection import (
    UpdateScore,
    detection_quality,
    robust_z,
    score_updates,
    screen_updates,
)
from umbra.federation.strategies import Defence
from umbra.models import parameter_modality

KEYS = {"encoders.image.w": (20,), "encoders.text.w": (10,), "head.0.weight": (30,)}


def _honest(n: int, seed: int, spread: float = 0.3) -> list[dict[str, np.ndarray]]:
    """Updates around one common direction, as from clients on similar data."""
    rng = np.random.default_rng(seed)
    common = {k: rng.normal(size=s) for k, s in KEYS.items()}
    return [
        {k: (1 + 0.2 * rng.uniform(-1, 1)) * v + spread * rng.normal(size=v.shape)
         for k, v in common.items()}
        for _ in range(n)
    ]  # fmt: skip


def test_scores_match_hand_computation() -> None:
    deltas = _honest(4, seed=0)
    scores = score_updates([10, 11, 12, 13], deltas, parameter_modality,
                           holds=[{"image", "text"}, {"image"}, {"text"}, set()])  # fmt: skip
    flat = np.stack([np.concatenate([d[k] for k in KEYS]) for d in deltas])
    ref = np.median(flat, axis=0)
    for s, f, d in zip(scores, flat, deltas, strict=True):
        assert s.norm == pytest.approx(np.linalg.norm(f))
        assert s.cosine == pytest.approx(f @ ref / np.linalg.norm(f) / np.linalg.norm(ref))
        if "image" in s.modality_norms:
            assert s.modality_norms["image"] == pytest.approx(np.linalg.norm(d["encoders.image.w"]))
    assert [sorted(s.modality_norms) for s in scores] == [
        ["image", "text"],
        ["image"],
        ["text"],
        [],
    ]


def test_robust_z_uses_the_mad_with_a_floor() -> None:
    v = [1.0, 2.0, 3.0, 4.0, 100.0]
    z = robust_z(v, floor=0.0)
    assert z[2] == 0 and z[4] == pytest.approx(97 / (1.4826 * 1.0))
    assert robust_z([1.0, 1.0, 1.0, 1.2], floor=0.5)[3] == pytest.approx(0.4)


@pytest.mark.parametrize("seed", range(5))
def test_nobody_is_flagged_among_honest_clients(seed: int) -> None:
    deltas = _honest(8, seed)
    screening = screen_updates(score_updates(list(range(8)), deltas, parameter_modality))
    assert screening.flagged == ()


@pytest.mark.parametrize("kind", ["sign-flip", "scale"])
def test_planted_attackers_are_flagged_with_precision_and_recall_one(kind: str) -> None:
    rounds = []
    attackers = {1, 6}
    for seed in range(4):
        deltas = _honest(8, seed)
        for a in attackers:
            factor = -1.0 if kind == "sign-flip" else 10.0
            deltas[a] = {k: factor * v for k, v in deltas[a].items()}
        screening = screen_updates(score_updates(list(range(8)), deltas, parameter_modality))
        rounds.append((screening.partitions, screening.flagged))
        assert set(screening.flagged) == attackers
    q = detection_quality(rounds, attackers)
    assert q["precision"] == 1.0 and q["recall"] == 1.0
    assert q["true_positives"] == 8 and q["false_positives"] == 0


def test_detection_quality_counts_client_rounds() -> None:
    q = detection_quality([([0, 1, 2], [1, 2]), ([0, 1, 2], []), ([0, 2], [0])], attackers=[1])
    # attacker 1 screened twice, flagged once; honest flags: 2 (round 1), 0 (round 3)
    assert q["precision"] == pytest.approx(1 / 3) and q["recall"] == pytest.approx(1 / 2)
    assert detection_quality([([0, 1], [])], attackers=[5])["recall"] is None


def test_too_few_updates_flag_nobody() -> None:
    scores = [UpdateScore(0, 1.0, 1.0, {}), UpdateScore(1, 100.0, -1.0, {})]
    assert screen_updates(scores).flagged == ()


def test_the_defence_screens_the_updates_as_sent() -> None:
    """Screening sees the deltas before clipping; clipping then bounds them."""
    x = {k: np.zeros(s) for k, s in KEYS.items()}
    arrays = _honest(6, seed=9)
    arrays[3] = {k: 20.0 * v for k, v in arrays[3].items()}
    counts = [{"num-examples": 10.0, "n-image": 10.0, "n-text": 10.0}] * 6
    defence = Defence(clip_updates=1.0, detect=True)
    avg, screening = defence.aggregate(list(range(6)), arrays, counts, parameter_modality, x, x)
    assert screening is not None and screening.flagged == (3,)
    total = np.sqrt(sum(float(np.sum(v**2)) for v in avg.values()))
    assert total <= 1.0 + 1e-9
