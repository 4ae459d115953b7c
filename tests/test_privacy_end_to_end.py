"""DP end-to-end through `umbra run`: the ledger is the source of truth for ε.

Slow (Flower simulation); still run by `make test`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from umbra.federation.checkpoint import load_latest, load_round
from umbra.models import parameter_modality
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


def test_example_level_distributed_noise_under_secagg(tmp_path: Path) -> None:
    """Distributed DP-SGD: one joint step per round whose sum carries σ_g C_g of noise.

    At a small ε the noise dwarfs the clipped gradients, so the global model's change in a
    round is, per coordinate of group g, N(0, (lr σ_g C_g / (B √(K t)))²): K silos each add
    a discrete Gaussian share of variance σ_g² Δ_g² / t in SecAgg+'s integer units after
    quantisation (t = the SecAgg+ threshold; Δ_g = γ C_g + √d_g, the rounding's inflation of
    the sensitivity, is below 0.1 % here), the sum is divided by K and by the expected
    batch B. Shares sized for K instead of t would give √(t/K) = 0.87 of that.
    """
    out = tmp_path / "xdp"
    lr, batch = 1.0, 32
    _umbra("run", *SMOKE, "--set", "privacy.mode=example", "--set", "privacy.noise=distributed",
           "--set", "privacy.epsilon=0.05", "--set", "privacy.delta=1e-4",
           "--set", f"privacy.lr={lr}", "--set", f"privacy.batch_size={batch}",
           "--set", "secure.aggregation=secagg+", "--out", str(out))  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    report = replay(out / "ledger.jsonl")
    assert res["privacy"]["noise"] == "distributed"
    assert res["privacy"]["epsilon"]["total"] == pytest.approx(report.epsilon["total"], rel=1e-12)
    assert 0 < report.epsilon["total"] <= 0.05
    releases = read_ledger(out / "ledger.jsonl").releases
    assert sorted((r.round, r.party) for r in releases) == [(n, str(c)) for n in (1, 2)
                                                            for c in range(4)]  # fmt: skip
    assert {r.steps for r in releases} == {1}
    sigmas = {tuple(sorted(r.noise_multipliers.items())) for r in releases}
    assert len(sigmas) == 1  # one σ per group for every silo: the joint step's noise
    sigma = dict(next(iter(sigmas)))
    clips = res["privacy"]["clip_norms"]
    k, t = 4, 3  # smoke's clients; ceil(0.67 * 4)
    x1 = load_round(out / "checkpoints", 1).arrays
    x2 = load_round(out / "checkpoints", 2).arrays
    for group in ("image", "text"):
        keys = [n for n in x1 if parameter_modality(n) == group and "num_batches" not in n]
        step = np.concatenate([(x2[n] - x1[n]).ravel() for n in keys]).astype(np.float64)
        expected = lr * sigma[group] * clips[group] / (batch * np.sqrt(k * t))
        assert step.size > 5000
        assert np.std(step) / expected == pytest.approx(1.0, abs=0.03), group
