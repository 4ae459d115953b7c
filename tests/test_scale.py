"""1,000 simulated organisations: configuration limits and a two-round run.

The run is slow (Flower's Ray backend, 1,000 simulated nodes); marked ``slow`` and still
run by `make test`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from umbra.config import load_config
from umbra.data.partition import partition_dirichlet
from umbra.errors import ConfigError

CLIENTS = 1000


def test_a_thousand_clients_is_within_the_cap_and_one_more_is_not() -> None:
    cfg = load_config("smoke", overrides=[f"federation.num_clients={CLIENTS}",
                                          "data.n_train=12000"])  # fmt: skip
    assert cfg.federation.num_clients == CLIENTS
    with pytest.raises(ConfigError, match=r"federation\.num_clients.*1000"):
        load_config("smoke", overrides=["federation.num_clients=1001", "data.n_train=12000"])


def test_too_few_records_for_a_thousand_clients_names_the_sizes() -> None:
    # smoke holds 4,000 records: 1,000 clients x 10 records each cannot be met
    with pytest.raises(ConfigError) as err:
        load_config("smoke", overrides=[f"federation.num_clients={CLIENTS}"])
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("federation.num_clients = 1000", "10000 records", "data.n_train = 4000",
                 "data.min_client_size = 10"):  # fmt: skip
        assert part in msg


def test_status_line_says_when_every_record_is_in_every_joint_step() -> None:
    from umbra.experiment import _privacy_line

    # default: Poisson batch 512 per organisation, 8 x 512 < 48,000 records
    assert "expected batch 512 per client" in _privacy_line(load_config("default"))
    # 1,000 organisations of 48 records: the joint rate B·K/N is capped at 1
    line = _privacy_line(load_config("default", overrides=[f"federation.num_clients={CLIENTS}"]))
    assert "every record in every step: 512 x 1000 clients >= 48000 records" in line
    assert "expected batch 512" not in line


@pytest.mark.parametrize("n", [12_000, 48_000])
def test_dirichlet_split_of_fmnist_sizes_across_a_thousand_clients(n: int) -> None:
    labels = np.random.default_rng(1).integers(0, 10, n)
    parts = partition_dirichlet(labels, CLIENTS, 0.5, np.random.default_rng(0), min_size=10)
    assert len(parts) == CLIENTS
    assert min(len(p) for p in parts) >= 10
    # every record in exactly one client
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))


@pytest.mark.slow
def test_two_rounds_with_a_thousand_clients_aggregate_every_sampled_reply(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "umbra.cli", "run", "--preset", "smoke",
         "--set", f"federation.num_clients={CLIENTS}", "--set", "federation.fraction_train=0.01",
         "--set", "federation.rounds=2", "--set", "federation.local_epochs=1",
         "--set", "data.n_train=12000", "--set", "model.hidden=8", "--set", "model.embed_dim=8",
         "--set", "run.progress=false", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    clients = res["data"]["clients"]
    assert [c["client"] for c in clients] == list(range(CLIENTS))
    assert sum(c["records"] for c in clients) == 12_000
    assert min(c["records"] for c in clients) >= 10
    samples = []
    for row in res["rounds"]:
        assert not row["aborted"]
        # 1 % of 1,000: ten replies, all aggregated, each from its own organisation
        assert row["clients"] == 10
        per = row["bytes_per_client"]
        assert len(per) == 10 and all(0 <= int(c) < CLIENTS for c in per)
        assert all(b["up"] > 0 and b["down"] > 0 for b in per.values())
        assert row["bytes_up"] == sum(b["up"] for b in per.values())
        samples.append(set(per))
    # the sample is drawn from all 1,000 nodes each round (two equal draws: p ~ 1e-23)
    assert samples[0] != samples[1]
    assert [r["round"] for r in res["rounds"]] == [1, 2]
