"""End-to-end: `umbra run` on the real fmnist-avt data through Flower's simulation engine.

Slow (each run starts Flower's Ray backend); marked ``slow`` and still run by `make test`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

UMBRA = [sys.executable, "-m", "umbra.cli"]
SMOKE = ["--preset", "smoke", "--set", "run.progress=false"]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def _umbra(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*UMBRA, *args], capture_output=True, text=True, timeout=timeout, env=_env()
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smoke") / "run"
    _umbra("run", *SMOKE, "--out", str(out))
    return out


def test_smoke_run_learns_far_above_chance(smoke_run: Path) -> None:
    res = json.loads((smoke_run / "results.json").read_text())
    final = res["final"]
    assert final["accuracy"] > 0.45  # 10 classes: chance is 0.1
    assert set(final["per_modality_accuracy"]) == {"image", "audio", "text", "fused"}
    assert set(final["missing_modality_accuracy"]) == {"image+audio", "image+text", "audio+text"}
    # audio and text are deliberately partial views; each alone is far below fusion
    assert final["per_modality_accuracy"]["audio"] < final["accuracy"]
    assert final["per_modality_accuracy"]["text"] < final["accuracy"]
    assert [r["round"] for r in res["rounds"]] == [1, 2, 3]
    for r in res["rounds"]:
        assert r["bytes_up"] > 4 * 200_000 * r["clients"]  # float32 model per client
        assert r["bytes_down"] > 4 * 200_000 * r["clients"]
        assert r["clients"] == 4
    assert sorted(p.name for p in (smoke_run / "checkpoints").glob("round_*")) == [
        "round_0001", "round_0002", "round_0003"]  # fmt: skip


def test_killed_run_resumes_to_the_same_result(smoke_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [*UMBRA, "run", *SMOKE, "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    try:
        while not (out / "checkpoints" / "round_0001").exists():
            assert proc.poll() is None, "run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # mid-round 2: loses at most that round
        proc.wait()
    assert not (out / "results.json").exists()
    done = json.loads((out / "checkpoints" / "latest.json").read_text())["round"]
    assert done in (1, 2)  # killed after round 1 or 2 finished, before round 3

    _umbra("run", "--resume", str(out))
    resumed = json.loads((out / "results.json").read_text())
    reference = json.loads((smoke_run / "results.json").read_text())
    assert resumed["final"] == reference["final"]
    assert [r["accuracy"] for r in resumed["rounds"]] == [
        r["accuracy"] for r in reference["rounds"]
    ]


def test_centralized_baseline_runs(tmp_path: Path) -> None:
    out = tmp_path / "central"
    _umbra("run", *SMOKE, "--set", "federation.mode=centralized", "--out", str(out))
    res = json.loads((out / "results.json").read_text())
    assert res["final"]["accuracy"] > 0.45
    assert all(r["bytes_up"] == 0 for r in res["rounds"])
