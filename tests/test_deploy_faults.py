"""A SuperLink crashed mid-run on a real loopback deployment (SuperLink + 3 SuperNodes,
TLS and SuperNode authentication, ``flwr run`` of ``umbra.apps``) is continued with
``umbra deploy local --resume``, the ledger intact. (A crashed SuperNode is tested in
test_deploy_app.py, on the same federation as the run's results.) Slow: it starts
Flower's processes twice.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from deploy_checks import alive, running
from umbra.deploy import DeployError
from umbra.experiment import run_experiment
from umbra.federation.checkpoint import load_latest
from umbra.privacy.ledger import check_coverage
from umbra.run.deploy import plan_local

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="POSIX")]


def test_a_superlink_crashed_mid_run_resumes_with_the_ledger_intact(tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = ["federation.rounds=3", "privacy.mode=example", "federation.local_epochs=0.5"]
    plan = plan_local(preset="smoke", nodes=3, out=out, resume=None, overrides=overrides)
    runner = plan.runner
    first: list[int] = []

    def on_round(row: dict[str, Any]) -> None:
        first.append(row["round"])
        if row["round"] == 1:  # round 2 is in flight: the SuperLink (and its ServerApp) crash
            running(runner).supervisor.kill("superlink")

    with pytest.raises(DeployError, match="--resume"):
        run_experiment(plan.cfg, out, on_round=on_round, runner=runner)
    assert first == [1]
    assert [pid for pid in runner.started_pids if alive(pid)] == []
    ledger_before = (out / "ledger.jsonl").read_text().splitlines()
    assert ledger_before

    # a new SuperLink, new node keys and ids: the run continues after its checkpoint
    again = plan_local(preset=None, nodes=None, out=None, resume=out, overrides=[])
    rows: list[dict[str, Any]] = []
    results = run_experiment(again.cfg, out, resume=True, on_round=rows.append,
                             runner=again.runner)  # fmt: skip
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    # the noise is calibrated so that 3 rounds spend the whole budget. When the crashed
    # round 2 had already been charged (its releases are in the ledger: they may have
    # reached the server), the ledger keeps that charge, so the resumed run stops before a
    # third round would exceed ε; otherwise it runs rounds 2 and 3.
    charged = any(json.loads(line).get("round") == 2 for line in ledger_before)
    last = 2 if charged else 3
    assert [r["round"] for r in rows] == list(range(2, last + 1))
    assert [r["round"] for r in saved["rounds"]] == list(range(1, last + 1))
    if charged:
        assert "would exceed the privacy budget" in str(saved["stopped"])
    assert saved["rounds"][0]["epsilon"]["total"] < saved["rounds"][-1]["epsilon"]["total"] <= 3
    # the ledger still starts with what the crashed run spent, and covers every round
    ledger = (out / "ledger.jsonl").read_text().splitlines()
    assert ledger[: len(ledger_before)] == ledger_before and len(ledger) > len(ledger_before)
    latest = load_latest(out / "checkpoints")
    assert latest is not None and latest.round == last
    check_coverage(out / "ledger.jsonl", through_round=last, digest=latest.state["ledger"])
    assert [pid for pid in again.runner.started_pids if alive(pid)] == []
