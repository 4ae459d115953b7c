"""Label releases (randomised response) in the privacy ledger: written ahead, replayed, composed
with Gaussian releases, and the vertical run's ε per observer."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import norm

from umbra.errors import DataError
from umbra.privacy.accounting import (
    compose_steps,
    epsilon_for,
    epsilon_with_labels,
    label_epsilon,
    randomized_response_event,
)
from umbra.privacy.ledger import LabelRelease, LedgerContents, PrivacyLedger, Release, read_ledger
from umbra.privacy.ledger import replay as replay_ledger
from umbra.vertical.observers import vertical_observer_epsilons

DELTA = 1e-5


def _gauss(rnd: int, party: str, sigma: float = 2.0, q: float = 1.0, steps: int = 1) -> Release:
    return Release.dpsgd(round=rnd, party=party, sample_rate=q, steps=steps,
                         noise_multipliers={"embedding": sigma}, clip_norms={"embedding": 1.0})  # fmt: skip


def _closed_form_rr_loss(eps: float, k: int) -> float:
    """Largest privacy loss of K-ary randomised response, replace-one: ln(P[o=y|y]/P[o=y|y'])."""
    keep = math.exp(eps) / (math.exp(eps) + k - 1)
    other = (1 - keep) / (k - 1)
    return math.log(keep / other)


@pytest.mark.parametrize(("eps", "k"), [(0.5, 2), (1.0, 10), (2.0, 10), (4.0, 3)])
def test_label_epsilon_is_the_closed_form(eps: float, k: int) -> None:
    assert _closed_form_rr_loss(eps, k) == pytest.approx(eps)
    event = randomized_response_event(epsilon=eps, num_classes=k)
    assert event.num_buckets == k
    # dp-accounting's "report a uniform class with probability p" keeps with e^ε/(e^ε+K-1)
    assert 1 - event.noise_parameter + event.noise_parameter / k == pytest.approx(
        math.exp(eps) / (math.exp(eps) + k - 1)
    )
    got = label_epsilon([event], delta=DELTA)
    # δ > 0 buys ≈ δ / P[loss = ε] off the largest loss; the PLD grid rounds up
    assert eps - 1e-4 <= got <= eps + 2e-3


def _delta_gaussian(e: float, sigma: float) -> float:
    """δ(ε) of the Gaussian mechanism, sensitivity 1 (Balle & Wang 2018), any real ε."""
    return float(
        norm.cdf(0.5 / sigma - e * sigma) - math.exp(e) * norm.cdf(-0.5 / sigma - e * sigma)
    )


def test_composition_with_a_gaussian_matches_the_exact_hockey_stick() -> None:
    eps_rr, k, sigma = 1.0, 10, 2.0
    rr = randomized_response_event(epsilon=eps_rr, num_classes=k)
    # privacy loss of RR (y -> y'): +ε w.p. keep, -ε w.p. p/K, 0 otherwise; δ of the
    # composition at e is E_L[δ_G(e - L)] over that loss (independent mechanisms)
    keep = 1 - rr.noise_parameter + rr.noise_parameter / k
    low = rr.noise_parameter / k
    mass = {eps_rr: keep, -eps_rr: low, 0.0: 1 - keep - low}

    def delta(e: float) -> float:
        return sum(m * _delta_gaussian(e - loss, sigma) for loss, m in mass.items())

    lo, hi = 0.0, 20.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta(mid) > DELTA else (lo, mid)
    exact = hi
    events = compose_steps([({"embedding": sigma}, 1.0, 1)])
    got = epsilon_with_labels(events, [rr], delta=DELTA)
    assert exact <= got <= exact + 1e-2
    gauss = epsilon_for(*events, delta=DELTA, accountant="pld")
    assert max(gauss, eps_rr) < got <= gauss + eps_rr + 1e-3  # more than either, <= basic


def test_without_label_releases_it_is_the_pld_accountant() -> None:
    events = compose_steps([({"a": 1.1, "b": 2.0}, 0.05, 40), ({"a": 1.1}, 1.0, 3)])
    assert epsilon_with_labels(events, [], delta=DELTA) == pytest.approx(
        epsilon_for(*events, delta=DELTA, accountant="pld"), rel=1e-9
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": math.inf}, "epsilon"),
        ({"num_classes": 1}, "num_classes"),
        ({"party": ""}, "party"),
        ({"round": -1}, "round"),
    ],
)
def test_bad_label_release(kwargs: dict[str, Any], match: str) -> None:
    base: dict[str, Any] = {"round": 0, "party": "party-2", "epsilon": 2.0, "num_classes": 10}
    with pytest.raises(ValueError, match=match):
        LabelRelease(**(base | kwargs))


def test_ledger_writes_replays_and_composes_label_releases(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = PrivacyLedger(path, unit="example", delta=DELTA)
    ledger.record_label(LabelRelease(round=0, party="party-2", epsilon=2.0, num_classes=10))
    line = json.loads(path.read_text().splitlines()[1])  # on disk when record_label returns
    assert line["mechanism"] == "randomized_response" and line["adjacency"] == "replace-one"
    assert line["epsilon"] == 2.0 and line["num_classes"] == 10 and line["group"] == "label"
    for epoch in (1, 2, 3):  # embedding DP: every party, every epoch
        for p in ("party-0", "party-1", "party-2"):
            ledger.record(_gauss(epoch, p))
    rep = replay_ledger(path)
    assert rep.releases == 10 and rep.rounds == [0, 1, 2, 3]
    gauss = epsilon_for(*compose_steps([({"embedding": 2.0}, 1.0, 3)]), delta=DELTA)
    assert rep.per_party["party-0"] == pytest.approx({"embedding": gauss, "total": gauss})
    p2 = rep.per_party["party-2"]
    assert p2["label"] == pytest.approx(2.0, abs=2e-3) and p2["embedding"] == pytest.approx(gauss)
    assert max(gauss, 2.0) < p2["total"] <= gauss + 2.0 + 1e-3
    assert rep.worst_party == "party-2" and rep.epsilon["total"] == p2["total"]
    # the writer's running total is the replay's, and resuming reads the label release back
    assert ledger.spent("party-2") == pytest.approx(p2)
    again = PrivacyLedger(path, unit="example", delta=DELTA)
    assert again.contents.label_releases == ledger.contents.label_releases
    # the report of the label holder alone: the labels' ε
    only = replay_ledger(path, up_to_round=0)
    assert only.per_party == {
        "party-2": pytest.approx({"label": p2["label"], "total": p2["label"]})
    }


def test_a_tampered_label_line_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    PrivacyLedger(path, unit="example", delta=DELTA).record_label(
        LabelRelease(round=0, party="party-2", epsilon=1.0, num_classes=10)
    )
    head, line = path.read_text().splitlines()
    for key, value in (("noise_parameter", 0.1), ("adjacency", "zero-out"), ("epsilon", -1)):
        bad = json.loads(line) | {key: value}
        path.write_text(head + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(DataError, match="label release"):
            read_ledger(path)


def test_vertical_observers() -> None:
    empty = LedgerContents(unit="example", delta=DELTA, accountant="pld")
    none = vertical_observer_epsilons(empty, label_party="party-2")
    assert all(o[k] is None for o in none.values() for k in ("label", "features", "record"))
    labels = LedgerContents(unit="example", delta=DELTA, accountant="pld",
                            label_releases=[LabelRelease(0, "party-2", 2.0, 10)])  # fmt: skip
    obs = vertical_observer_epsilons(labels, label_party="party-2")
    assert obs["label_holder"]["label"] is None  # it holds the labels
    assert obs["feature_parties"]["label"] == pytest.approx(2.0, abs=2e-3)
    assert obs["model_holder"]["label"] == pytest.approx(2.0, abs=2e-3)
    assert obs["feature_parties"]["features"] is None  # raw embeddings reach the gradients
    both = LedgerContents(
        unit="example", delta=DELTA, accountant="pld",
        releases=[_gauss(e, p) for e in (1, 2) for p in ("party-0", "party-1", "party-2")],
        label_releases=[LabelRelease(0, "party-2", 2.0, 10)],
    )  # fmt: skip
    obs = vertical_observer_epsilons(both, label_party="party-2")
    two = epsilon_for(*compose_steps([({"embedding": 2.0}, 1.0, 4)]), delta=DELTA)
    three = epsilon_for(*compose_steps([({"embedding": 2.0}, 1.0, 6)]), delta=DELTA)
    # the label holder: the two other parties' rows of a record, over two epochs
    assert obs["label_holder"]["features"] == pytest.approx(two)
    assert obs["label_holder"]["record"] is None
    assert obs["feature_parties"]["features"] == pytest.approx(three)
    rec = obs["feature_parties"]["record"]
    assert rec is not None and max(three, 2.0) < rec <= three + 2.0 + 1e-3
    assert obs["model_holder"]["features"] is None and obs["model_holder"]["record"] is None
    assert np.isfinite(rec)


def test_report_summary_counts_a_label_only_ledger(tmp_path: Path) -> None:
    from umbra.report.ledger_summary import summarize_ledger

    path = tmp_path / "ledger.jsonl"
    PrivacyLedger(path, unit="example", delta=DELTA).record_label(
        LabelRelease(round=0, party="party-2", epsilon=2.0, num_classes=10)
    )
    summary = summarize_ledger(path)
    assert summary is not None and summary.releases == 1 and summary.parties == 1
    assert summary.lines == 2 and summary.rounds == [0]
    assert summary.recomputed is not None
    assert summary.recomputed["label"] == pytest.approx(2.0, abs=2e-3)
