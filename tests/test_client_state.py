"""Round-stamped client state (umbra.federation.client_state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from umbra.federation.client_state import load_round_arrays, save_round_arrays


def test_newest_state_before_the_round_and_two_rounds_kept(tmp_path: Path) -> None:
    assert load_round_arrays(tmp_path, "scaffold_r", 1) is None
    for r in (1, 2, 3):
        save_round_arrays(tmp_path, "scaffold_r", r, {"w": np.full(3, float(r))})
    # a round replayed after a crash reads what the round before it wrote
    got = load_round_arrays(tmp_path, "scaffold_r", 3)
    assert got is not None and np.array_equal(got["w"], np.full(3, 2.0))
    got = load_round_arrays(tmp_path, "scaffold_r", 9)
    assert got is not None and np.array_equal(got["w"], np.full(3, 3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scaffold_r2.npz", "scaffold_r3.npz"]
    # another stem in the same folder is another state
    save_round_arrays(tmp_path, "compress_residual_r", 3, {"w": np.zeros(2)})
    assert load_round_arrays(tmp_path, "compress_residual_r", 3) is None
    assert load_round_arrays(tmp_path, "scaffold_r", 2) is None
