"""DP end-to-end through `umbra run`: the ledger is the source of truth for ε.

Slow (Flower simulation); still run by `make test`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from umbra.federation.checkpoint import load_latest
from umbra.privacy.ledger import read_ledger, replay

pytestmark = pytest.mark.slow

UMBRA = [sys.executable, "-m", "umbra.cli"]
SMOKE = ["--preset", "smoke", "--set", "run.progress=false", "--set", "federation.rounds=2"]


def _umbra(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*UMBRA, *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_example_level_dp_run_reports_what_the_ledger_says(tmp_path: Path) -> None:
    out = tmp_path / "dp"
    # images as scattering coefficients with the GroupNorm + Linear head, as in `default`
    _umbra("run", *SMOKE, "--set", "privacy.mode=example", "--set", "privacy.epsilon=2",
           "--set", "privacy.delta=1e-4",
           "--set", "privacy.weights={image=2.0, audio=0.5, text=1.0, shared=1.0}",
           "--set", "data.image_features=scattering", "--set", "model.encoders.image=scattering",
           "--out", str(out))  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["data"]["image_features"] == "scattering"
    ckpt = load_latest(out / "checkpoints")  # the image head is Linear(81 * 7 * 7 -> hidden)
    assert ckpt is not None
    assert ckpt.arrays["encoders.image.2.weight"].shape == (res["config"]["model"]["hidden"], 3969)
    ledger = read_ledger(out / "ledger.jsonl")
    report = replay(out / "ledger.jsonl")
    # one release per client per round, written by the server before each round
    assert sorted({(r.round, r.party) for r in ledger.releases}) == [
        (rnd, str(c)) for rnd in (1, 2) for c in range(4)
    ]
    assert res["privacy"]["unit"] == "example"
    for key, value in report.epsilon.items():
        assert res["privacy"]["epsilon"][key] == pytest.approx(value, rel=1e-12)
    assert res["rounds"][-1]["epsilon"]["total"] == pytest.approx(report.epsilon["total"])
    assert 0 < report.epsilon["total"] <= 2.0
    assert report.epsilon["audio"] < report.epsilon["image"]  # audio got the smaller share
    # ε grows round by round
    assert res["rounds"][0]["epsilon"]["total"] < res["rounds"][1]["epsilon"]["total"]
    shown = _umbra("privacy", "ledger", str(out)).stdout
    assert "matches" in shown and "results.json" in shown
    assert (out / "report.html").exists()


def test_client_level_distributed_noise_under_secagg(tmp_path: Path) -> None:
    out = tmp_path / "cdp"
    _umbra("run", *SMOKE, "--set", "privacy.mode=client", "--set", "privacy.noise=distributed",
           "--set", "privacy.epsilon=8", "--set", "secure.aggregation=secagg+",
           "--out", str(out))  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    report = replay(out / "ledger.jsonl")
    assert res["secure_aggregation"] == "secagg+"
    assert res["privacy"]["unit"] == "client" and res["privacy"]["noise"] == "distributed"
    assert res["privacy"]["epsilon"]["total"] == pytest.approx(report.epsilon["total"])
    assert [r.party for r in read_ledger(out / "ledger.jsonl").releases] == ["server", "server"]
    assert all(r["bytes_up"] > 0 for r in res["rounds"])
