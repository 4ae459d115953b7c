"""Umbra's own app on a real loopback deployment: SuperLink + 3 SuperNodes with TLS and
SuperNode authentication, ``flwr run`` of ``umbra.apps``, 2 rounds of the smoke preset
under SecAgg+ with signed advertisements (the SuperNode keys as identities). Slow: it
starts Flower's processes and one ClientApp process per message.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from umbra.experiment import run_experiment
from umbra.run.deploy import PARTY_DATA, plan_local
from umbra.run.results import privacy_results

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="POSIX")]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_smoke_secagg_on_three_authenticated_nodes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    plan = plan_local(preset="smoke", nodes=3, out=out, resume=None,
                      overrides=["federation.rounds=2", "federation.local_epochs=1",
                                 "secure.aggregation=secagg+"])  # fmt: skip
    assert not plan.runner.insecure
    rows: list[dict[str, Any]] = []
    results = run_experiment(plan.cfg, out, on_round=rows.append, runner=plan.runner)

    # the progress lines streamed from the ServerApp, one per round, as umbra run's
    assert [r["round"] for r in rows] == [1, 2]
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert [r["round"] for r in saved["rounds"]] == [1, 2]
    assert saved["rounds"] == rows
    assert all(r["clients"] == 3 and not r["aborted"] for r in saved["rounds"])
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in saved["rounds"])
    assert saved["final"]["accuracy"] == pytest.approx(saved["rounds"][-1]["accuracy"])
    assert saved["final"]["accuracy"] > 0.2  # ten classes: chance is 0.1
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
    started = plan.runner.started_pids
    assert len(started) >= 4
    assert [pid for pid in started if _alive(pid)] == []
