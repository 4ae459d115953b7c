"""A round secure aggregation cannot complete is an error the user sees: the round's row
says why, and a run whose every round aborted exits with code 2 and one line, no traceback.
With threshold 0.67 of 8 clients, the n - t = 2 dropouts complete every round."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from umbra.errors import AllRoundsAborted, UmbraError
from umbra.federation.server_app import check_some_round_completed

UMBRA = [sys.executable, "-m", "umbra.cli", "run", "--preset", "smoke"]
FAST = ["--set", "federation.rounds=1", "--set", "run.progress=false",
        "--set", "secure.aggregation=\"secagg+\""]  # fmt: skip


def test_all_aborted_history_raises_one_user_error() -> None:
    ok = {"round": 1, "aborted": False}
    bad = {"round": 2, "aborted": True, "note": "secure aggregation aborted: 2 < threshold 3"}
    check_some_round_completed([])
    check_some_round_completed([ok, bad])
    with pytest.raises(AllRoundsAborted, match=r"all 1 rounds aborted.*2 < threshold 3"):
        check_some_round_completed([bad])
    assert issubclass(AllRoundsAborted, UmbraError)


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*UMBRA, *FAST, *extra, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.slow
def test_two_of_eight_clients_dropping_every_round_still_train(tmp_path: Path) -> None:
    proc = _run(
        tmp_path / "run",
        "--set", "federation.num_clients=8",
        "--set", "secure.dropout_clients=[1,5]",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "run" / "results.json").read_text())["rounds"]
    assert [(r["aborted"], r["clients"]) for r in rows] == [(False, 6)]
    assert "Traceback" not in proc.stderr  # injected dropouts are error replies, not crashes


@pytest.mark.slow
def test_a_run_whose_every_round_aborted_exits_2_with_one_line(tmp_path: Path) -> None:
    # 4 clients, threshold ceil(0.67 * 4) = 3, two drop out: every round aborts
    proc = _run(tmp_path / "run", "--set", "secure.dropout_clients=[1,2]")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: all 1 rounds aborted")
    assert "2 surviving clients < threshold 3" in last
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    (row,) = results["rounds"]
    assert row["aborted"] is True and "< threshold 3" in row["note"]
