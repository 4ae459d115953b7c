"""The privacy ledger: write-ahead fsync, replay against dp-accounting, resume, budget stop."""

from __future__ import annotations

import json
import os

import pytest
from dp_accounting import dp_event as E
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from umbra.errors import DataError, ResumeError
from umbra.privacy.accounting import PLD_DISCRETIZATION, dpsgd_event, epsilon_for
from umbra.privacy.budget import Budget
from umbra.privacy.ledger import PrivacyLedger, Release, read_ledger, replay
from umbra.privacy.ledger import writer as ledger_writer

SIG = {"image": 1.2, "audio": 2.0, "shared": 1.2}
CLIP = {"image": 1.0, "audio": 0.5, "shared": 1.0}
Q, STEPS, DELTA = 0.02, 25, 1e-5


def _release(rnd: int, party: str, sig=SIG, steps=STEPS) -> Release:
    return Release.dpsgd(
        round=rnd, party=party, sample_rate=Q, steps=steps, noise_multipliers=sig, clip_norms=CLIP
    )


def _independent(sigmas: list[float], steps: int, accountant: str = "pld") -> float:
    """ε of `steps` shared-sample steps, with dp-accounting used directly (RDP: composed)."""
    if accountant == "rdp":
        acc = RdpAccountant()
        inner = E.ComposedDpEvent([E.GaussianDpEvent(s) for s in sigmas])
        acc.compose(E.PoissonSampledDpEvent(Q, inner), steps)
    else:
        eff = sum(s**-2 for s in sigmas) ** -0.5
        acc = PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
        acc.compose(E.PoissonSampledDpEvent(Q, E.GaussianDpEvent(eff)), steps)
    return float(acc.get_epsilon(DELTA))


def test_lines_and_fsync_before_return(tmp_path, monkeypatch):
    path = tmp_path / "ledger.jsonl"
    seen: list[str] = []
    real_fsync = os.fsync

    def spy(fd):
        real_fsync(fd)
        seen.append(path.read_text())

    monkeypatch.setattr(ledger_writer.os, "fsync", spy)
    led = PrivacyLedger(path, unit="example", delta=DELTA)
    led.record(_release(1, "client-0"))
    # The release's lines were on disk when fsync ran, i.e. before record() returned.
    assert len(seen) == 2
    lines = [json.loads(x) for x in seen[-1].splitlines()]
    assert lines[0] == {
        "type": "header",
        "version": 1,
        "unit": "example",
        "delta": DELTA,
        "accountant": "pld",
        "adjacency": "zero-out",
    }
    assert [x["group"] for x in lines[1:]] == list(SIG)
    assert len({x["release"] for x in lines[1:]}) == 1  # one release, one id
    for x in lines[1:]:
        assert x["round"] == 1 and x["party"] == "client-0"
        assert x["noise_multiplier"] == SIG[x["group"]] and x["clip_norm"] == CLIP[x["group"]]
        assert x["sample_rate"] == Q and x["steps"] == STEPS
        assert x["mechanism"] == "poisson_gaussian"


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_replay_equals_independent_epsilon(tmp_path, accountant):
    path = tmp_path / "ledger.jsonl"
    led = PrivacyLedger(path, unit="example", delta=DELTA, accountant=accountant)
    for rnd in range(1, 4):
        led.record(_release(rnd, "a"))
        if rnd != 2:
            led.record(_release(rnd, "b"))  # b skipped round 2
    rep = replay(path)
    assert rep.accountant == accountant and rep.releases == 5 and rep.rounds == [1, 2, 3]
    a_total = _independent(list(SIG.values()), 3 * STEPS, accountant)
    b_total = _independent(list(SIG.values()), 2 * STEPS, accountant)
    assert rep.per_party["a"]["total"] == pytest.approx(a_total, rel=1e-9)
    assert rep.per_party["b"]["total"] == pytest.approx(b_total, rel=1e-9)
    assert rep.worst_party == "a" and rep.epsilon["total"] == rep.per_party["a"]["total"]
    for g, s in SIG.items():
        assert rep.epsilon[g] == pytest.approx(_independent([s], 3 * STEPS, accountant), rel=1e-9)
    # The in-memory report is the same computation.
    assert led.report().to_dict() == rep.to_dict()
    # ε after round 1 only.
    early = replay(path, up_to_round=1)
    assert early.epsilon["total"] == pytest.approx(
        _independent(list(SIG.values()), STEPS, accountant), rel=1e-9
    )


def test_client_level_server_releases(tmp_path):
    path = tmp_path / "ledger.jsonl"
    led = PrivacyLedger(path, unit="client", delta=DELTA, accountant="rdp")
    for rnd in range(1, 6):
        led.record(
            Release.dpsgd(
                round=rnd,
                party="server",
                sample_rate=0.3,
                steps=1,
                noise_multipliers={"all": 1.1},
                clip_norms={"all": 0.7},
            )
        )
    rep = replay(path)
    acc = RdpAccountant()
    for _ in range(5):
        acc.compose(E.PoissonSampledDpEvent(0.3, E.GaussianDpEvent(1.1)))
    assert rep.unit == "client"
    assert rep.epsilon["total"] == pytest.approx(acc.get_epsilon(DELTA), rel=1e-9)
    assert rep.epsilon["all"] == rep.epsilon["total"]


def test_truncated_last_line_is_ignored_and_cut_on_resume(tmp_path):
    path = tmp_path / "ledger.jsonl"
    led = PrivacyLedger(path, unit="example", delta=DELTA)
    led.record(_release(1, "a"))
    with path.open("a") as f:
        f.write('{"type": "release", "release": 1, "round": 2, "par')  # crash mid-write
    with pytest.warns(UserWarning, match="truncated last line"):
        rep = replay(path)
    assert rep.releases == 1 and any("truncated" in w for w in rep.warnings)
    with pytest.warns(UserWarning, match="truncated"):
        led2 = PrivacyLedger(path, unit="example", delta=DELTA)
    led2.record(_release(2, "a"))
    contents = read_ledger(path)
    assert not contents.truncated_tail and len(contents.releases) == 2
    ids = [json.loads(x)["release"] for x in path.read_text().splitlines()[1:]]
    assert len(ids) == 6 and ids[0] == ids[2] != ids[3] == ids[5]


def test_complete_last_line_without_newline_is_counted(tmp_path):
    path = tmp_path / "ledger.jsonl"
    PrivacyLedger(path, unit="example", delta=DELTA).record(_release(1, "a"))
    path.write_text(path.read_text().rstrip("\n"))  # lost only the final newline
    assert replay(path).releases == 1
    led = PrivacyLedger(path, unit="example", delta=DELTA)
    led.record(_release(2, "a"))
    assert replay(path).releases == 2


def test_corrupt_middle_line_raises(tmp_path):
    path = tmp_path / "ledger.jsonl"
    PrivacyLedger(path, unit="example", delta=DELTA).record(_release(1, "a"))
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:20]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 2"):
        replay(path)
    with pytest.raises(ResumeError):
        PrivacyLedger(path, unit="example", delta=DELTA)


def test_resume_counts_written_but_unperformed_release(tmp_path):
    path = tmp_path / "ledger.jsonl"
    led = PrivacyLedger(path, unit="example", delta=DELTA)
    led.record(_release(1, "a"))
    led.record(_release(2, "a"))  # written, then the process dies before releasing
    del led
    resumed = PrivacyLedger(path, unit="example", delta=DELTA)
    assert len(resumed.releases) == 2  # over-counts the unperformed release, never forgets it
    resumed.record(_release(2, "a"))  # round 2 redone after resume
    rep = replay(path)
    assert rep.releases == 3
    assert rep.epsilon["total"] == pytest.approx(_independent(list(SIG.values()), 3 * STEPS))
    assert len({json.loads(x)["release"] for x in path.read_text().splitlines()[1:]}) == 3


def test_two_writers_on_one_file(tmp_path):
    # E.g. client processes appending their own releases: ids keep the releases apart.
    path = tmp_path / "ledger.jsonl"
    one = PrivacyLedger(path, unit="example", delta=DELTA, accountant="rdp")
    two = PrivacyLedger(path, unit="example", delta=DELTA, accountant="rdp")
    for rnd in (1, 2):
        one.record(_release(rnd, "a"))
        two.record(_release(rnd, "a"))  # same round, party and parameters: still two releases
    rep = replay(path)
    assert rep.releases == 4
    assert rep.epsilon["total"] == pytest.approx(
        _independent(list(SIG.values()), 4 * STEPS, "rdp"), rel=1e-9
    )


def test_resume_with_other_settings_is_refused(tmp_path):
    path = tmp_path / "ledger.jsonl"
    PrivacyLedger(path, unit="example", delta=DELTA)
    with pytest.raises(ResumeError, match="delta"):
        PrivacyLedger(path, unit="example", delta=1e-6)
    with pytest.raises(ResumeError):
        PrivacyLedger(path, unit="client", delta=DELTA)


def test_budget_stop_exactly_at_the_boundary(tmp_path):
    k = 4  # rounds that fit exactly
    cap = epsilon_for(
        dpsgd_event(noise_multiplier=SIG, sample_rate=Q, steps=k * STEPS), delta=DELTA
    )
    budget = Budget(epsilon=cap, delta=DELTA)
    led = PrivacyLedger(tmp_path / "ledger.jsonl", unit="example", delta=DELTA)
    for rnd in range(1, k + 1):
        nxt = _release(rnd, "a")
        assert not led.would_exceed(nxt, budget), rnd  # round k lands exactly on the cap
        led.record(nxt)
    assert led.report().epsilon["total"] == cap
    assert led.would_exceed(_release(k + 1, "a", steps=1), budget)  # one step more stops
    assert not led.would_exceed(_release(k + 1, "b"), budget)  # another client is not charged


def test_budget_stop_on_a_group_cap(tmp_path):
    cap_audio = epsilon_for(
        dpsgd_event(noise_multiplier=SIG["audio"], sample_rate=Q, steps=2 * STEPS), delta=DELTA
    )
    budget = Budget(epsilon=100.0, delta=DELTA, groups={"audio": cap_audio})
    led = PrivacyLedger(tmp_path / "ledger.jsonl", unit="example", delta=DELTA)
    led.record(_release(1, "a"))
    assert not led.would_exceed(_release(2, "a"), budget)
    led.record(_release(2, "a"))
    assert led.would_exceed(_release(3, "a", steps=1), budget)
    with pytest.raises(ValueError, match="delta"):
        led.would_exceed(_release(3, "a"), Budget(epsilon=1.0, delta=1e-6))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"steps": 0}, "steps"),
        ({"round": -1}, "round"),
        ({"party": ""}, "party"),
    ],
)
def test_bad_release(kwargs, match):
    base = {
        "round": 1,
        "party": "a",
        "sample_rate": Q,
        "steps": 1,
        "noise_multipliers": SIG,
        "clip_norms": CLIP,
    }
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Release.dpsgd(**base)
    with pytest.raises(ValueError, match="noise_multiplier"):
        Release.dpsgd(
            round=1,
            party="a",
            sample_rate=Q,
            steps=1,
            noise_multipliers={"image": 0.0},
            clip_norms={"image": 1.0},
        )
