"""Arrays an organisation keeps between rounds (SCAFFOLD's control variate, the residual of
error-feedback compression), in its own state folder and never in the server's run folder.

Each file is stamped with the round that wrote it (``<stem><round>.npz``), written
atomically, and the last two rounds are kept: a run resumed from an earlier checkpoint
reads the newest file from *before* its round, so a round replayed after a crash starts
from the same state as the first time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["load_round_arrays", "save_round_arrays"]


def _round_of(path: Path, stem: str) -> int | None:
    tail = path.stem[len(stem) :]
    return int(tail) if tail.isdigit() else None


def load_round_arrays(
    state_dir: Path, stem: str, server_round: int
) -> dict[str, np.ndarray] | None:
    """The arrays of the newest ``<stem><r>.npz`` with ``r < server_round``, or None."""
    best: tuple[int, Path] | None = None
    for p in state_dir.glob(f"{stem}*.npz"):
        r = _round_of(p, stem)
        if r is not None and r < server_round and (best is None or r > best[0]):
            best = (r, p)
    if best is None:
        return None
    with np.load(best[1], allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def save_round_arrays(
    state_dir: Path, stem: str, server_round: int, arrays: Mapping[str, np.ndarray]
) -> None:
    """Store ``arrays`` as round ``server_round``'s (atomic); drop files older than the
    round before it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f".{stem}{server_round}.tmp.npz"
    np.savez(tmp, allow_pickle=False, **dict(arrays))
    tmp.replace(state_dir / f"{stem}{server_round}.npz")
    for p in state_dir.glob(f"{stem}*.npz"):
        r = _round_of(p, stem)
        if r is not None and r < server_round - 1:
            p.unlink(missing_ok=True)
