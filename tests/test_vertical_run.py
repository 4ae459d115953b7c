"""``umbra run --preset vertical`` end to end on Flower's simulation engine (small)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # one simulation run (Ray start-up included): about a minute


def test_vertical_run_with_every_protection(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "UMBRA_CLIENT_STATE": str(tmp_path / "state")}
    sets = ["data.source=synthetic", "data.n_train=400", "data.n_test=100", "federation.rounds=2",
            'vertical.parties=[["image"], ["audio", "tabular"], ["text"]]',
            "vertical.secure_sum=true", "vertical.label_dp=randomized-response",
            "vertical.label_epsilon=1.0", "vertical.embedding_noise=2.0"]  # fmt: skip
    args = [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(
        [sys.executable, "-m", "umbra.cli", "run", "--preset", "vertical", *args, "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    v = res["vertical"]
    assert [p["modalities"] for p in v["parties"]] == [["image"], ["audio", "tabular"], ["text"]]
    assert v["held_by_all"] == round(0.7 * 400)
    assert [c["records"] for c in res["data"]["clients"]] == [360, 360, 360]
    assert v["aligned_entities"] == v["held_by"]["party-2"] == 360
    assert v["secure_sum"] and v["label_dp"]["epsilon"] == 1.0
    assert v["label_dp"]["epsilon_pld"] == pytest.approx(1.0, abs=1e-3)
    # one step per batch of 64 over 360 entities (+1 flush) per epoch; bytes from messages
    assert [r["round_trips"] for r in res["rounds"]] == [7, 7]
    assert all(r["bytes_up"] > 0 and r["bytes_down"] > 0 for r in res["rounds"])
    assert {a["party"] for a in v["label_leakage"]} == {0, 1}
    assert 0.0 <= res["final"]["accuracy"] <= 1.0
    # the attacks' AUCs are in the audit object, which the report shows with other attacks
    leak = res["audit"]["label_leakage"]
    assert leak["label_dp_epsilon"] == 1.0 and 0.0 <= leak["party-0"]["direction_auc"] <= 1.0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "audit.label_leakage" in html and "party-0.direction_auc" in html
    # embedding DP: one Gaussian release per party per epoch, replayable from the ledger
    from dp_accounting import dp_event, pld
    from dp_accounting.privacy_accountant import NeighboringRelation

    from umbra.privacy.ledger import replay

    # label DP: one randomised-response release of the label holder, once for both epochs
    rep = replay(out / "ledger.jsonl")
    assert rep.releases == 7 and set(rep.per_party) == {"party-0", "party-1", "party-2"}
    acc = pld.PLDAccountant(neighboring_relation=NeighboringRelation.REPLACE_SPECIAL)
    acc.compose(dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(2.0), 2))
    gauss = acc.get_epsilon(1e-5)
    assert rep.per_party["party-0"]["total"] == pytest.approx(gauss, rel=1e-2)
    label = rep.per_party["party-2"]["label"]
    assert label == pytest.approx(1.0, abs=2e-3)
    assert max(gauss, label) < rep.epsilon["total"] <= gauss + label + 1e-3
    # results.json: the same ε per party and per observer, recomputed from the ledger
    priv = v["privacy"]
    assert priv["ledger"] == "ledger.jsonl" and priv["per_party"] == rep.per_party
    obs = priv["observers"]
    assert obs["feature_parties"]["label"] == pytest.approx(label)
    assert obs["label_holder"]["label"] is None and obs["model_holder"]["features"] is None
    assert obs["label_holder"]["features"] > gauss  # two other parties' rows of a record
    # and `umbra privacy ledger` replays it with the label group and the vertical observers
    from typer.testing import CliRunner

    from umbra.cli import app

    shown = CliRunner().invoke(app, ["privacy", "ledger", str(out)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "ε label" in shown.output and "feature parties" in shown.output
    assert f"{label:.3f}" in shown.output
    # nothing of the parties' data or keys is left in the run folder
    assert not (out / ".vertical").exists()
    assert not list(out.rglob("mask-key"))
