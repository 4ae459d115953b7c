"""The server's DP bookkeeping: plan, ledger-before-release, budget stop, resume."""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import pytest

from umbra.config import PrivacyConfig
from umbra.errors import BudgetExhausted, ConfigError
from umbra.privacy.controller import PrivacyController
from umbra.privacy.ledger import Release, replay

GROUPS = ["image", "audio", "text", "shared"]


def _controller(tmp: Path, rounds: int = 3, **privacy: object) -> PrivacyController:
    cfg = PrivacyConfig(**{"mode": "example", "epsilon": 2.0, "delta": 1e-4, **privacy})  # type: ignore[arg-type]
    return PrivacyController(
        cfg, groups=GROUPS, rounds=rounds, batch_size=32, local_epochs=1.0, num_clients=3,
        ledger_path=tmp / "ledger.jsonl",
    )  # fmt: skip


def test_plan_meets_every_target_and_the_total(tmp_path: Path) -> None:
    ctl = _controller(tmp_path, weights={"image": 2.0, "audio": 0.5, "text": 1.0, "shared": 1.0})
    ctl.plan_clients({0: 400, 1: 900, 2: 2500})
    for rnd in (1, 2, 3):
        ctl.before_round(rnd, [0, 1, 2])
    rep = replay(tmp_path / "ledger.jsonl")
    for pid, plan in ctl.plans.items():
        eps = rep.per_party[str(pid)]
        assert eps["total"] <= 2.0 + 1e-9
        for g in GROUPS:
            assert eps[g] <= plan.targets[g] + 1e-9
        # audio was given a smaller share than images: more noise, less ε
        assert plan.noise_multipliers["audio"] > plan.noise_multipliers["image"]
        assert eps["audio"] < eps["image"]
    assert ctl.epsilon()["total"] == pytest.approx(rep.epsilon["total"], abs=1e-12)


def test_ledger_epsilon_matches_dp_accounting_directly(tmp_path: Path) -> None:
    ctl = _controller(tmp_path, accountant="rdp")
    ctl.plan_clients({0: 500})
    ctl.before_round(1, [0])
    ctl.before_round(2, [0])
    plan = ctl.plans[0]
    # independent reference: the same steps built by hand with dp-accounting's RDP accountant
    acc = dp_accounting.rdp.RdpAccountant()
    step = dp_accounting.PoissonSampledDpEvent(
        plan.sample_rate,
        dp_accounting.ComposedDpEvent(
            [dp_accounting.GaussianDpEvent(plan.noise_multipliers[g]) for g in GROUPS]
        ),
    )
    acc.compose(dp_accounting.SelfComposedDpEvent(step, 2 * plan.steps))
    assert ctl.epsilon()["total"] == pytest.approx(acc.get_epsilon(1e-4), rel=1e-9)


def test_budget_stop_triggers_exactly_after_the_planned_rounds(tmp_path: Path) -> None:
    ctl = _controller(tmp_path, rounds=2)
    ctl.plan_clients({0: 300, 1: 300})
    ctl.before_round(1, [0, 1])
    ctl.before_round(2, [0, 1])  # the planned rounds fit the budget exactly
    lines = (tmp_path / "ledger.jsonl").read_text().splitlines()
    with pytest.raises(BudgetExhausted, match="round 3 would exceed the privacy budget"):
        ctl.before_round(3, [0, 1])
    # nothing was written for the refused round
    assert (tmp_path / "ledger.jsonl").read_text().splitlines() == lines
    assert ctl.epsilon()["total"] <= 2.0


def test_resume_counts_a_release_written_before_a_crash(tmp_path: Path) -> None:
    ctl = _controller(tmp_path, rounds=3)
    ctl.plan_clients({0: 300})
    ctl.before_round(1, [0])
    ctl.before_round(2, [0])  # written, then the run is killed before round 2 completes
    after_crash = replay(tmp_path / "ledger.jsonl").epsilon["total"]
    resumed = _controller(tmp_path, rounds=3)
    resumed.plan_clients({0: 300})
    assert resumed.epsilon()["total"] == pytest.approx(after_crash)  # nothing forgotten
    resumed.before_round(2, [0])  # the re-run of round 2 is counted again (over-count)
    assert resumed.epsilon()["total"] > after_crash
    assert len(replay(tmp_path / "ledger.jsonl").rounds) == 2
    rows = [json.loads(x) for x in (tmp_path / "ledger.jsonl").read_text().splitlines()[1:]]
    assert sum(1 for r in rows if r["round"] == 2 and r["group"] == "image") == 2


def test_client_level_single_group_and_calibrated_sigma(tmp_path: Path) -> None:
    cfg = PrivacyConfig(mode="client", epsilon=4.0, delta=1e-5, client_rate=0.5)
    ctl = PrivacyController(cfg, groups=GROUPS, rounds=5, batch_size=32, local_epochs=1,
                            num_clients=10, ledger_path=tmp_path / "l.jsonl")  # fmt: skip
    assert ctl.client_sigma is not None and ctl.client_sigma > 0
    plans = {}
    for rnd in range(1, 6):
        plans = ctl.before_round(rnd, [1, 4])
    assert set(plans) == {1, 4} and plans[1]["dp-mode"] == 2
    eps = ctl.epsilon()
    assert eps["total"] <= 4.0 + 1e-9
    assert eps["image"] == eps["total"]  # one flat group: every modality spends the total
    with pytest.raises(BudgetExhausted):
        ctl.before_round(6, [1])


@pytest.mark.parametrize(
    ("privacy", "sizes", "message"),
    [
        ({"delta": 1e-2}, {0: 400}, "privacy.delta"),
        ({"weights": {"image": 1.0, "tabular": 1.0}}, {0: 400}, "tabular"),
        ({"targets": {"image": 5.0, "audio": 1.0, "text": 1.0, "shared": 1.0}}, {0: 400},
         "privacy.targets.image"),
        ({"clip_norms": {"lidar": 1.0}}, {0: 400}, "privacy.clip_norms"),
    ],
)  # fmt: skip
def test_bad_privacy_settings_name_the_setting(
    tmp_path: Path, privacy: dict[str, object], sizes: dict[int, int], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ctl = _controller(tmp_path, **privacy)
        ctl.plan_clients(sizes)


def test_config_rejects_zero_noise_and_bad_budget() -> None:
    with pytest.raises(ValueError, match="noise_multiplier = 0"):
        PrivacyConfig(mode="client", noise_multiplier=0.0)
    with pytest.raises(ValueError):
        PrivacyConfig(mode="example", epsilon=0.0)
    with pytest.raises(ValueError):
        PrivacyConfig(mode="example", delta=1.0)


def test_distributed_example_dp_plans_one_joint_step_per_round(tmp_path: Path) -> None:
    """Distributed noise: one step per round whatever local_epochs says, every record of the
    federation sampled at one rate q = B·K/N (a centralized step of expected batch B·K),
    one σ_g for every silo, each silo's step rescaled by n_i·K/N, and every silo's ε within
    its targets and the total."""
    sizes = {0: 400, 1: 900, 2: 2500}
    ctl = _controller(tmp_path, rounds=4, noise="distributed", accountant="rdp")
    ctl.plan_clients(sizes)
    q = 32 * 3 / 3800
    for pid, plan in ctl.plans.items():
        assert plan.steps == 1 and plan.sample_rate == pytest.approx(q)
        assert plan.noise_multipliers == ctl.plans[0].noise_multipliers
        assert ctl.scales[pid] == pytest.approx(sizes[pid] * 3 / 3800)
    for rnd in range(1, 5):
        cfgs = ctl.before_round(rnd, [0, 1, 2])
        assert {c["dp-steps"] for c in cfgs.values()} == {1}
        assert cfgs[2]["dp-scale"] == pytest.approx(2500 * 3 / 3800)
    rep = replay(tmp_path / "ledger.jsonl")
    for pid, plan in ctl.plans.items():
        eps = rep.per_party[str(pid)]
        assert 1.98 <= eps["total"] <= 2.0 + 1e-9
        assert eps == rep.per_party["0"]  # the same for every silo
        assert all(eps[g] <= plan.targets[g] + 1e-9 for g in GROUPS)
    # the accountant's own view of silo 1: 4 Poisson-sampled joint Gaussian steps
    acc = dp_accounting.rdp.RdpAccountant()
    step = dp_accounting.PoissonSampledDpEvent(
        q,
        dp_accounting.ComposedDpEvent(
            [dp_accounting.GaussianDpEvent(ctl.plans[1].noise_multipliers[g]) for g in GROUPS]
        ),
    )
    acc.compose(dp_accounting.SelfComposedDpEvent(step, 4))
    assert rep.per_party["1"]["total"] == pytest.approx(acc.get_epsilon(1e-4), rel=1e-6)
    # Identical histories: one silo is checked and reported per round, and its ε is the
    # maximum over all silos in every group (the full replay computed every silo above).
    assert len(ctl.ledger.report(worst_only=True).per_party) == 1
    assert ctl.epsilon() == pytest.approx(rep.epsilon, rel=1e-12)
    # ...and the budget still stops the round after the planned ones, before any release
    lines = (tmp_path / "ledger.jsonl").read_text().count("\n")
    with pytest.raises(BudgetExhausted):
        ctl.before_round(5, [0, 1, 2])
    assert (tmp_path / "ledger.jsonl").read_text().count("\n") == lines


def test_dominant_parties_are_the_largest_rate_of_each_history() -> None:
    from umbra.privacy.ledger import LedgerContents, compute_report, dominant_parties

    def rel(party: str, rnd: int, q: float, sigma: float = 1.3) -> Release:
        return Release.dpsgd(round=rnd, party=party, sample_rate=q, steps=1,
                             noise_multipliers={"image": sigma, "shared": 2.0},
                             clip_norms={"image": 1.0, "shared": 1.0})  # fmt: skip

    parties = {
        "a": [rel("a", r, 0.05) for r in (1, 2, 3)],
        "b": [rel("b", r, 0.08) for r in (1, 2, 3)],  # dominates a
        "c": [rel("c", r, 0.01, sigma=0.9) for r in (1, 2, 3)],  # other σ: own class
        "d": [rel("d", 1, 0.2), rel("d", 2, 0.01), rel("d", 3, 0.01)],  # varying q
        "e": [rel("e", r, 0.3) for r in (1, 2)],  # other rounds: own class
    }
    assert dominant_parties(parties) == ["b", "c", "d", "e"]
    contents = LedgerContents("example", 1e-5, "pld", [r for rs in parties.values() for r in rs])
    full = compute_report(contents)
    fast = compute_report(contents, worst_only=True)
    assert full.per_party["a"]["total"] < full.per_party["b"]["total"]  # monotone in q
    assert all(full.per_party["a"][k] <= full.per_party["b"][k] for k in full.per_party["a"])
    assert fast.epsilon == full.epsilon and fast.worst_party == full.worst_party


def test_modes_are_looked_up_by_name_and_clients_train_under_the_same_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller's mode comes from the registry (unknown names and duplicates raise),
    and the ``dp-mode`` it sends selects the client policy of the same name."""
    from types import SimpleNamespace

    from umbra.privacy import modes
    from umbra.privacy.client import client_policy

    with pytest.raises(ValueError, match=r"privacy\.mode must be 'example' or 'client', got 'x'"):
        PrivacyController(SimpleNamespace(mode="x"), groups=GROUPS, rounds=1, batch_size=1,
                          local_epochs=1, num_clients=1, ledger_path=tmp_path / "x.jsonl")  # fmt: skip
    monkeypatch.setattr(modes.registry, "MODES", modes.MODES.copy())
    with pytest.raises(ValueError, match="already registered"):
        modes.register_mode(type("Again", (modes.ClientLevel,), {}))
    with pytest.raises(ValueError, match="no dp-mode code"):
        modes.register_mode(type("Record", (modes.ClientLevel,), {"name": "record"}))
    for mode, extra in (("example", {}), ("client", {"client_rate": 0.5})):
        ctl = _controller(tmp_path / mode, mode=mode, **extra)
        ctl.plan_clients({0: 400, 1: 900})
        for cfg in ctl.before_round(1, [0, 1]).values():
            assert client_policy(cfg).name == ctl.mode == mode
