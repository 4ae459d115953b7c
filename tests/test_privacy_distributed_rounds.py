"""The server side of distributed DP noise: shares sized for the secure threshold t, no
top-up, the integer-noise plan for SecAgg+ checked before any release."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from umbra.config import PrivacyConfig
from umbra.federation.common import SecureSettings
from umbra.privacy.client_dp import shares_needed
from umbra.privacy.controller import DP_INTEGER_NOISE, DP_NOISE_SHARES, PrivacyController
from umbra.privacy.ddg import DDGError
from umbra.privacy.ledger import read_ledger
from umbra.privacy.round_dp import RoundDP

NODES = [11, 12, 13, 14, 15, 16, 17, 18]


class _Grid:
    def get_node_ids(self) -> list[int]:
        return list(NODES)


class _Strategy:
    def configure_train(self, rnd: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Any) -> list[Message]:  # fmt: skip
        return [
            Message(
                RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": rnd})}),
                dst_node_id=n,
                message_type=MessageType.TRAIN,
            )
            for n in grid.get_node_ids()
        ]


def _dp(tmp: Path, aggregation: str, mode: str, clip_range: float = 4.0) -> RoundDP:
    privacy = PrivacyConfig(mode=mode, noise="distributed", epsilon=3.0, delta=1e-5,  # type: ignore[arg-type]
                            client_rate=1.0, batch_size=64)  # fmt: skip
    ctl = PrivacyController(privacy, groups=["image", "shared"], rounds=20, batch_size=64,
                            local_epochs=1.0, num_clients=len(NODES),
                            ledger_path=tmp / "ledger.jsonl")  # fmt: skip
    ctl.plan_clients({i: 4000 for i in range(len(NODES))})
    secure = SecureSettings(aggregation=aggregation, threshold=0.67, clip_range=clip_range)
    return RoundDP(ctl, {n: i for i, n in enumerate(NODES)}, secure=secure,
                   integer_noise=aggregation == "secagg+", lr=0.5)  # fmt: skip


ARRAYS = {
    "encoders.image.net.0.weight": np.zeros((64, 100), np.float32),
    "head.weight": np.zeros((10, 64), np.float32),
}


@pytest.mark.parametrize("mode", ["client", "example"])
@pytest.mark.parametrize("aggregation", ["secagg+", "ckks"])
def test_shares_are_sized_for_the_secure_threshold(tmp_path: Path, mode: str,
                                                   aggregation: str) -> None:  # fmt: skip
    dp = _dp(tmp_path, aggregation, mode)
    messages = dp.configure(_Strategy(), _Grid(), 1, ARRAYS)
    assert len(messages) == len(NODES)  # client_rate 1: everyone sampled
    t = shares_needed(0.67, len(NODES))
    assert t == 6
    for m in messages:
        cfg = m.content.config_records["config"]
        assert cfg[DP_NOISE_SHARES] == t  # not the 8 sampled clients
        assert bool(cfg.get(DP_INTEGER_NOISE, False)) == (aggregation == "secagg+")
        if mode == "example":
            assert cfg["dp-lr"] == 0.5 and cfg["dp-steps"] == 1
    assert len(read_ledger(tmp_path / "ledger.jsonl").releases) > 0


def test_client_level_distributed_noise_gets_no_server_top_up(tmp_path: Path) -> None:
    dp = _dp(tmp_path, "secagg+", "client")
    x = {"w": np.ones(1000, np.float32)}
    summed = {"w": np.zeros(1000)}
    # 6 of 8 survived: the 6 shares sized for t = 6 already carry the full noise
    new = dp.finish(x, summed, received=6, sampled=8)
    np.testing.assert_array_equal(new["w"], x["w"])
    central = _dp(tmp_path / "c", "secagg+", "client")
    (tmp_path / "c").mkdir(exist_ok=True)
    central.controller.cfg.noise = "central"
    noisy = central.finish(x, summed, received=6, sampled=8)
    assert np.std(noisy["w"] - 1.0) > 0  # central mode: the server adds all of it


def test_integer_noise_plan_refused_before_any_release(tmp_path: Path) -> None:
    # a quantisation range so wide that a unit of the ring is worth more than a record:
    # the discrete Gaussian shares would be under one integer unit (τ not negligible)
    dp = _dp(tmp_path, "secagg+", "example", clip_range=1e12)
    with pytest.raises(DDGError, match="τ"):
        dp.configure(_Strategy(), _Grid(), 1, {"head.bias": np.zeros(1, np.float32)})
    ledger = tmp_path / "ledger.jsonl"
    assert not ledger.exists() or not read_ledger(ledger).releases
