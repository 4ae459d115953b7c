"""Checkpoints: every round's arrays come back bit for bit, by round and as the latest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from umbra.federation.checkpoint import load_latest, load_round, save_checkpoint


def test_rounds_round_trip_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    saved = {}
    for r in (1, 2):
        arrays = {"enc.w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=5)}
        strategy = {"scaffold/c.enc.w": rng.normal(size=(3, 4)).astype(np.float32)}
        save_checkpoint(tmp_path, server_round=r, arrays=arrays, strategy=strategy,
                        state={"history": [r]})  # fmt: skip
        saved[r] = (arrays, strategy)
    for r in (1, 2):
        ckpt = load_round(tmp_path, r)
        assert ckpt.round == r and ckpt.state == {"round": r, "history": [r]}
        for got, want in ((ckpt.arrays, saved[r][0]), (ckpt.strategy, saved[r][1])):
            assert list(got) == list(want)
            for k in want:
                assert got[k].dtype == want[k].dtype
                np.testing.assert_array_equal(got[k], want[k])
    latest = load_latest(tmp_path)
    assert latest is not None and latest.round == 2
    np.testing.assert_array_equal(latest.arrays["b"], saved[2][0]["b"])
    with pytest.raises(FileNotFoundError):
        load_round(tmp_path, 3)


def test_no_checkpoint_yet(tmp_path: Path) -> None:
    assert load_latest(tmp_path / "checkpoints") is None
