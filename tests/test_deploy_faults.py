"""Faults on a real loopback deployment (SuperLink + 3 SuperNodes, TLS and SuperNode
authentication, ``flwr run`` of ``umbra.apps``): a SuperNode crashed mid-round drops out
of that round and rejoins after a restart; a SuperLink crashed mid-run is continued with
``umbra deploy local --resume``. Slow: they start Flower's processes and wait out
Flower's node heartbeat.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from umbra.deploy import DeployError
from umbra.experiment import run_experiment
from umbra.federation.checkpoint import load_latest
from umbra.privacy.ledger import check_coverage
from umbra.run.deploy import DeployedRunner, plan_local

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="POSIX")]

KILLED = 2  # the partition id (and SuperNode index) crashed in the node test


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _running(runner: DeployedRunner) -> Any:
    fed = runner.federation
    assert fed is not None, "no deployment is running"
    return fed


def test_a_node_crashed_mid_round_drops_out_and_rejoins_after_a_restart(tmp_path: Path) -> None:
    out = tmp_path / "run"
    plan = plan_local(preset="smoke", nodes=3, out=out, resume=None,
                      overrides=["federation.rounds=4", "secure.aggregation=secagg+",
                                 "secure.threshold=0.6", "federation.reply_timeout_s=90"])  # fmt: skip
    runner = plan.runner
    rows: list[dict[str, Any]] = []
    back: list[int] = []  # the number of rows streamed when the node was online again
    errors: list[BaseException] = []

    def restart() -> None:
        try:
            _running(runner).restart_node(KILLED)
            back.append(len(rows))
        except BaseException as err:  # reported by the test below
            errors.append(err)

    restarter = threading.Thread(target=restart, name="restart-node")

    def on_round(row: dict[str, Any]) -> None:
        rows.append(row)
        if row["round"] == 1:  # round 2 is starting: crash a node in it, then restart it
            _running(runner).kill_node(KILLED)
            restarter.start()

    results = run_experiment(plan.cfg, out, on_round=on_round, runner=runner)
    restarter.join(timeout=300)
    assert not errors, errors

    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    rounds = saved["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, 5))
    assert not any(r["aborted"] for r in rounds)
    # round 1 with every node; round 2 without the crashed one, its masks recovered
    assert rounds[0]["clients"] == 3 and "dropped" not in rounds[0]
    assert rounds[1]["clients"] == 2 and rounds[1]["dropped"] == [KILLED]
    # every round it missed says so, or it was no longer sampled (the SuperLink saw it go)
    assert all(r["clients"] + len(r.get("dropped", [])) in (2, 3) for r in rounds)
    # back with the same partition id in a later round, with every node
    assert back, "the node did not come back during the run"
    later = rounds[back[0] + 1 :]
    assert later and later[-1]["clients"] == 3 and "dropped" not in later[-1]
    assert str(KILLED) in later[-1]["bytes_per_client"]
    assert [pid for pid in runner.started_pids if _alive(pid)] == []


def test_a_superlink_crashed_mid_run_resumes_with_the_ledger_intact(tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = ["federation.rounds=3", "privacy.mode=example", "federation.local_epochs=0.5"]
    plan = plan_local(preset="smoke", nodes=3, out=out, resume=None, overrides=overrides)
    runner = plan.runner
    first: list[int] = []

    def on_round(row: dict[str, Any]) -> None:
        first.append(row["round"])
        if row["round"] == 1:  # round 2 is in flight: the SuperLink (and its ServerApp) crash
            _running(runner).supervisor.kill("superlink")

    with pytest.raises(DeployError, match="--resume"):
        run_experiment(plan.cfg, out, on_round=on_round, runner=runner)
    assert first == [1]
    assert [pid for pid in runner.started_pids if _alive(pid)] == []
    ledger_before = (out / "ledger.jsonl").read_text().splitlines()
    assert ledger_before

    # a new SuperLink, new node keys and ids: the run continues after its checkpoint
    again = plan_local(preset=None, nodes=None, out=None, resume=out, overrides=[])
    rows: list[dict[str, Any]] = []
    results = run_experiment(again.cfg, out, resume=True, on_round=rows.append,
                             runner=again.runner)  # fmt: skip
    assert [r["round"] for r in rows] == [2, 3]
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert [r["round"] for r in saved["rounds"]] == [1, 2, 3]
    assert saved["rounds"][0]["epsilon"]["total"] < saved["rounds"][-1]["epsilon"]["total"]
    # the ledger still starts with what the crashed run spent, and covers every round
    ledger = (out / "ledger.jsonl").read_text().splitlines()
    assert ledger[: len(ledger_before)] == ledger_before and len(ledger) > len(ledger_before)
    latest = load_latest(out / "checkpoints")
    assert latest is not None and latest.round == 3
    check_coverage(out / "ledger.jsonl", through_round=3, digest=latest.state["ledger"])
    assert [pid for pid in again.runner.started_pids if _alive(pid)] == []
