"""End-to-end: `umbra run --preset smoke` with SecAgg+ and with CKKS on Flower's simulation
engine reach the plaintext run's accuracy (within 1 point) and record real bytes.

Slow (each run starts Flower's Ray backend): marked ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

UMBRA = [sys.executable, "-m", "umbra.cli"]
# model.dropout=0 keeps the comparison tight: with no dropout the plaintext and secure runs
# share every random stream and differ by quantization error alone (dropout is seeded per
# round and client too, but its masks then act on slightly different weights).
SMOKE = ["--preset", "smoke", "--set", "run.progress=false", "--set", "model.dropout=0"]
#: accuracy points (absolute) a secure run may lose against the plaintext run
TOLERANCE = 0.01


def _run(out: Path, *extra: str) -> dict[str, Any]:
    proc = subprocess.run(
        [*UMBRA, "run", *SMOKE, *extra, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result: dict[str, Any] = json.loads((out / "results.json").read_text())
    return result


@pytest.fixture(scope="module")
def plaintext(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _run(tmp_path_factory.mktemp("plain") / "run")


@pytest.mark.parametrize("mode", ["secagg+", "ckks"])
def test_secure_run_matches_plaintext(plaintext: dict[str, Any], mode: str, tmp_path: Path) -> None:
    res = _run(tmp_path / "run", "--set", f"secure.aggregation={mode}")
    assert res["secure_aggregation"] == mode
    assert plaintext["secure_aggregation"] == "none"
    assert res["final"]["accuracy"] >= plaintext["final"]["accuracy"] - TOLERANCE
    assert [r["round"] for r in res["rounds"]] == [1, 2, 3]
    for row in res["rounds"]:
        assert not row["aborted"]
        assert row["clients"] == 4
        assert row["bytes_up"] > 0 and row["bytes_down"] > 0
        per_client = row["bytes_per_client"]
        assert sorted(per_client) == ["0", "1", "2", "3"]
        assert sum(c["up"] for c in per_client.values()) == row["bytes_up"]
        assert all(c["up"] > 0 and c["down"] > 0 for c in per_client.values())
    # masked vectors travel as 32-bit ring elements: about the plaintext float32 size
    if mode == "secagg+":
        plain_up = plaintext["rounds"][0]["bytes_up"]
        assert res["rounds"][0]["bytes_up"] <= 1.1 * plain_up
