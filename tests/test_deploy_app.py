"""Umbra's own app on a real loopback deployment: SuperLink + 3 SuperNodes with TLS and
SuperNode authentication, ``flwr run`` of ``umbra.apps``, the smoke preset under SecAgg+
with signed advertisements (the SuperNode keys as identities). One federation serves both
checks: the run's results, and a SuperNode crashed mid-round (the round completes with the
others, results.json names the dropped node, the restarted node rejoins in a later round).
Slow: it starts Flower's processes.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from deploy_checks import alive, running
from umbra.experiment import run_experiment
from umbra.run.deploy import PARTY_DATA, plan_local
from umbra.run.results import privacy_results

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="POSIX")]

KILLED = 2  # the partition id (and SuperNode index) crashed in round 2


def test_secagg_on_three_authenticated_nodes_survives_a_crashed_node(tmp_path: Path) -> None:
    out = tmp_path / "run"
    plan = plan_local(preset="smoke", nodes=3, out=out, resume=None,
                      overrides=["federation.rounds=12", "federation.local_epochs=1",
                                 "secure.aggregation=secagg+", "secure.threshold=0.6",
                                 "federation.reply_timeout_s=90"])  # fmt: skip
    runner = plan.runner
    assert not runner.insecure
    rows: list[dict[str, Any]] = []
    back: list[int] = []  # the number of rows streamed when the node was online again
    errors: list[BaseException] = []

    def restart() -> None:
        try:
            running(runner).restart_node(KILLED)
            back.append(len(rows))
        except BaseException as err:  # reported by the test below
            errors.append(err)

    restarter = threading.Thread(target=restart, name="restart-node")

    def on_round(row: dict[str, Any]) -> None:
        rows.append(row)
        if row["round"] == 1:  # round 2 is starting: crash a node in it, then restart it
            running(runner).kill_node(KILLED)
            restarter.start()

    results = run_experiment(plan.cfg, out, on_round=on_round, runner=runner)
    restarter.join(timeout=300)
    assert not errors, errors

    # the progress lines streamed from the ServerApp, one per round, as umbra run's
    # enough rounds to outlast the restart: the SuperLink lists a crashed node online until
    # it misses two heartbeats (about a minute) and refuses its key again meanwhile
    assert [r["round"] for r in rows] == list(range(1, 13))
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    rounds = saved["rounds"]
    assert rounds == rows
    assert not any(r["aborted"] for r in rounds)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rounds)
    assert saved["final"]["accuracy"] == pytest.approx(rounds[-1]["accuracy"])
    assert saved["final"]["accuracy"] > 0.2  # ten classes: chance is 0.1
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
    # the same privacy and secure fields as a simulation run of this config builds
    assert saved["secure_aggregation"] == "secagg+"
    assert saved["config"]["secure"]["aggregation"] == "secagg+"
    assert saved["privacy"] == privacy_results(plan.cfg, out, None)
    assert (out / "report.html").is_file() and (out / "checkpoints" / "latest.json").is_file()
    # every process's log, nothing of the organisations' data folders left, no process left
    logs = {p.name for p in (out / "logs").iterdir()}
    assert {"superlink.log", "supernode-0.log", "supernode-1.log", "supernode-2.log"} <= logs
    assert any(name.startswith("run-") for name in logs)
    assert not (out / PARTY_DATA).exists()
    # signed advertisements (each node's SuperNode key, its own roster copy): every
    # signature verified, so no node was excluded or refused; the keys stay out of the
    # run folder (node configs carry their paths, and the key folder is gone)
    run_log = "".join((out / "logs" / n).read_text() for n in logs if n.startswith("run-"))
    assert "excluded" not in run_log and "ProtocolViolation" not in run_log
    assert "IdentityError" not in run_log
    for path in out.rglob("*"):
        assert not path.is_file() or b"PRIVATE KEY" not in path.read_bytes(), path
    started = runner.started_pids
    assert len(started) >= 4
    assert [pid for pid in started if alive(pid)] == []
