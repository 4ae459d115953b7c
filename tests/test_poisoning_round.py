"""A short federation with one sign-flipping organisation of four, through the real
ClientApp and round loop on an in-process Grid: the median holds up better than the mean,
screening names the attacker in every round's row, and results' audit.poisoning reports
precision and recall. Also: defences that need individual updates are refused, in one
line, where the server cannot see them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from umbra.config import FederationConfig, load_config
from umbra.data.sources.synthetic import make_synthetic
from umbra.errors import ConfigError
from umbra.federation.attacks import AttackSpec, backdoor_success_rate
from umbra.federation.checkpoint import load_latest
from umbra.federation.client_app import ClientSpec, make_client_app
from umbra.federation.client_data import write_federation_data
from umbra.federation.in_process_grid import InProcessGrid
from umbra.federation.server_app import (
    RunResult,
    ServerSpec,
    initial_arrays,
    load_model,
    run_rounds,
)
from umbra.federation.train import TrainSettings
from umbra.models import ModelSpec
from umbra.run.poisoning import poisoning_results

N_CLIENTS = 4
MODS = ("image", "text")
ATTACKER = 2
EPOCHS = 2.0  # enough local training that the attack matters within 3 rounds
LR = 0.2


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fed")
    data = make_synthetic(n=360, num_classes=3, modalities=MODS, seed=5, noise=1.0)
    parts = [np.arange(i, 240, N_CLIENTS) for i in range(N_CLIENTS)]
    masks = [np.ones((len(p), len(MODS)), dtype=bool) for p in parts]
    write_federation_data(root / "train", data, parts, masks)
    test = np.arange(240, 360)
    write_federation_data(root / "test", data, [test], [np.ones((len(test), len(MODS)), bool)])
    spec = ModelSpec.from_data(data, hidden=16, embed_dim=8).to_dict()
    return {"root": root, "model_spec": spec, "test": data.subset(test)}


def _run(federation: dict[str, Any], tmp: Path, rounds: int = 3, **fed: Any) -> RunResult:
    attack = AttackSpec(kind="sign-flip", attackers=(ATTACKER,))
    app = make_client_app(
        ClientSpec(
            data_dir=str(federation["root"] / "train"),
            state_dir=str(tmp / "state"),
            model_spec=federation["model_spec"],
            settings=TrainSettings(epochs=EPOCHS, batch_size=20, lr=LR),
            seed=3,
            attack=attack,
        )
    )
    spec = ServerSpec(
        run_dir=str(tmp / "run"),
        test_dir=str(federation["root"] / "test"),
        model_spec=federation["model_spec"],
        federation=FederationConfig(num_clients=N_CLIENTS, rounds=rounds, **fed),
        seed=1,
    )
    return run_rounds(
        spec, InProcessGrid(app, [300 + i for i in range(N_CLIENTS)], seed_torch=True).as_grid()
    )


def test_median_beats_mean_against_a_sign_flipper(
    federation: dict[str, Any], tmp_path: Path
) -> None:
    mean = _run(federation, tmp_path / "mean", detect=True)
    median = _run(federation, tmp_path / "median", aggregator="median", detect=True)
    assert median.history[-1]["loss"] < mean.history[-1]["loss"]
    assert median.history[-1]["accuracy"] > mean.history[-1]["accuracy"] + 0.1
    for row in mean.history:
        assert row["screened"] == [0, 1, 2, 3]
        assert row["flagged"] == [ATTACKER]
        assert set(row["anomaly"]) == {"0", "1", "2", "3"}
        honest = [row["anomaly"][str(p)]["cosine"] for p in range(N_CLIENTS) if p != ATTACKER]
        assert row["anomaly"][str(ATTACKER)]["cosine"] < min(honest)
    cfg = load_config("smoke", overrides=["federation.aggregator=median", "federation.detect=true",
                                          "attack.kind=sign-flip", f"attack.clients=[{ATTACKER}]"])  # fmt: skip
    model = load_model(federation["model_spec"], median.arrays)
    out = poisoning_results(cfg, median.history, model, federation["test"])
    assert out is not None
    assert out["attack"] == {"kind": "sign-flip", "attackers": [ATTACKER]}
    assert out["defence"]["aggregator"] == "median"
    assert out["detection"]["precision"] == 1.0 and out["detection"]["recall"] == 1.0
    assert out["detection"]["flagged_rounds"] == {str(ATTACKER): 3}


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["federation.aggregator=mode"], "federation.aggregator"),
        (["federation.aggregator=krum", "federation.byzantine=1"], "too large for krum with 4"),
        (["federation.aggregator=bulyan", "federation.num_clients=8", "federation.byzantine=2"],
         "too large for bulyan with 8 sampled clients (needs at least 11)"),
        (["federation.aggregator=median", "secure.aggregation=secagg+"], "secure aggregation"),
        (["federation.detect=true", "secure.aggregation=ckks"], "hides from the server"),
        (["federation.clip_updates=1.0", "privacy.mode=client"], "sensitivity analysis"),
        (["federation.aggregator=median", "federation.strategy=scaffold"], "control variates"),
        (["federation.reputation=true", "secure.aggregation=secagg+"],
         "federation.reputation needs each client's update"),
        (["federation.reputation=true", "privacy.mode=client"],
         "federation.reputation does not fit privacy.mode = 'client'"),
        (["federation.reputation=true", "federation.strategy=scaffold"], "control variates"),
        (["federation.reputation=true", "federation.reputation_warmup=0"], "reputation_warmup"),
        (["federation.aggregator=centered-clip", "secure.aggregation=secagg+"],
         "federation.aggregator = 'centered-clip' needs each client's update"),
        (["federation.aggregator=centered-clip", "privacy.mode=client"], "sensitivity analysis"),
        (["federation.aggregator=centered-clip", "federation.strategy=scaffold"],
         "control variates"),
        (["federation.aggregator=median", "federation.bucket_size=2",
          "secure.aggregation=ckks"], "hides from the server"),
        (["federation.aggregator=median", "federation.bucket_size=5"],
         "bucket_size must be in \\[1, num_clients = 4\\]"),
        (["federation.aggregator=centered-clip", "federation.centered_clip_tau=-1.0"],
         "centered_clip_tau must be > 0"),
        (["federation.aggregator=centered-clip", "federation.centered_clip_beta=1.0"],
         "centered_clip_beta must be in"),
    ],
)  # fmt: skip
def test_defences_that_cannot_run_are_refused_in_one_line(sets: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        load_config("smoke", overrides=sets)
    assert "\n" not in str(err.value)


def test_robust_rules_with_enough_clients_are_accepted() -> None:
    cfg = load_config("smoke", overrides=["federation.num_clients=7", "federation.byzantine=1",
                                          "federation.aggregator=bulyan"])  # fmt: skip
    assert cfg.federation.aggregator == "bulyan"
    assert load_config("smoke").federation.aggregator == "mean"


def test_poisoning_results_only_for_a_planted_attack(federation: dict[str, Any]) -> None:
    model = load_model(federation["model_spec"], initial_arrays(federation["model_spec"], 0))
    clean = load_config("smoke", overrides=["federation.aggregator=median"])
    assert poisoning_results(clean, [], model, federation["test"]) is None
    backdoor = load_config("smoke", overrides=["attack.kind=backdoor", "attack.clients=[1]",
                                               "attack.target_class=2"])  # fmt: skip
    out = poisoning_results(backdoor, [], model, federation["test"])
    assert out is not None and "detection" not in out
    rate, n = backdoor_success_rate(model, federation["test"], AttackSpec.from_config(backdoor))
    assert out["backdoor"] == {"success_rate": rate, "records": n}
    assert n == int(np.sum(federation["test"].labels != 2))


def test_reputation_excludes_the_flipper_and_survives_a_resume(
    federation: dict[str, Any], tmp_path: Path
) -> None:
    """The reputation is server state: a run resumed after round 2 continues the clients'
    histories (round 3 sees 3 observations each, not 1) and matches an uninterrupted run."""
    fed = {"reputation": True, "reputation_warmup": 1}
    whole = _run(federation, tmp_path / "whole", **fed)
    _run(federation, tmp_path / "resumed", rounds=2, **fed)
    resumed = _run(federation, tmp_path / "resumed", **fed)
    assert [r["round"] for r in resumed.history] == [1, 2, 3]
    last = resumed.history[-1]
    assert {r["rounds"] for r in last["reputation"].values()} == {3}
    for pid, r in whole.history[-1]["reputation"].items():
        assert last["reputation"][pid] == pytest.approx(r)
    for row in whole.history:
        assert row["excluded"] == [ATTACKER]
        assert "flagged" in row and row["flagged"] == []  # per-round screening is off
        assert row["reputation"][str(ATTACKER)]["cosine"] < 0
    cfg = load_config("smoke", overrides=["federation.reputation=true",
                                          "federation.reputation_warmup=1",
                                          "attack.kind=sign-flip", f"attack.clients=[{ATTACKER}]"])  # fmt: skip
    model = load_model(federation["model_spec"], whole.arrays)
    out = poisoning_results(cfg, whole.history, model, federation["test"])
    assert out is not None and out["defence"]["reputation"] is True
    rep = out["reputation"]
    assert rep["precision"] == 1.0 and rep["recall"] == 1.0 and rep["rounds"] == 3
    assert rep["excluded_rounds"] == {str(ATTACKER): 3}
    assert rep["excluded_final"] == [ATTACKER]
    assert rep["scores"] == whole.history[-1]["reputation"]


def test_centered_clipping_keeps_its_history_across_a_resume(
    federation: dict[str, Any], tmp_path: Path
) -> None:
    """The clients' momenta, the centre, the buckets (run.seed and the round) and the
    reputation's last updates (its response rule) are server state: a run resumed after
    round 2 ends on the uninterrupted run's model and scores."""
    fed = {"aggregator": "centered-clip", "bucket_size": 2, "centered_clip_iterations": 2,
           "centered_clip_beta": 0.5, "reputation": True, "reputation_warmup": 1,
           "reputation_max_response": 1.0}  # fmt: skip
    whole = _run(federation, tmp_path / "whole", **fed)
    _run(federation, tmp_path / "resumed", rounds=2, **fed)
    resumed = _run(federation, tmp_path / "resumed", **fed)
    assert [r["round"] for r in resumed.history] == [1, 2, 3]
    for k, v in whole.arrays.items():
        np.testing.assert_allclose(resumed.arrays[k], v, rtol=1e-6, atol=1e-7)
    for pid, r in whole.history[-1]["reputation"].items():
        assert r["response"] == pytest.approx(resumed.history[-1]["reputation"][pid]["response"])
    assert resumed.history[-1]["reputation"][str(ATTACKER)]["response"] > 0
    saved = load_latest(tmp_path / "resumed" / "run" / "checkpoints")
    assert saved is not None
    momenta = {k.split("/")[2] for k in saved.strategy if k.startswith("centered-clip/momentum/")}
    assert momenta == {"0", "1", "3"}  # the excluded attacker's never reach the rule
    assert all(row["excluded"] == [ATTACKER] for row in whole.history)
    assert any(k.startswith("centered-clip/center/") for k in saved.strategy)
