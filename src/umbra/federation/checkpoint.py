"""Per-round checkpoints: enough state to resume after the last completed round.

Layout: ``checkpoints/round_0003/{model.npz, strategy.npz, state.json}`` plus
``checkpoints/latest.json`` naming the newest complete one. A round folder is written
under a temporary name and renamed, then ``latest.json`` is replaced atomically, so a run
killed at any moment leaves the previous round's checkpoint intact. Plain ``.npz`` + JSON:
no pickles.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Checkpoint", "atomic_write_text", "load_latest", "load_round", "save_checkpoint"]


@dataclass
class Checkpoint:
    round: int
    arrays: dict[str, np.ndarray]
    strategy: dict[str, np.ndarray]
    state: dict[str, Any]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file, fsync and rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # npz keys may not contain '/', which strategy state uses: map through an index.
    names = list(arrays)
    np.savez(path, **{f"a{i}": arrays[k] for i, k in enumerate(names)})  # type: ignore[arg-type]
    path.with_suffix(".json").write_text(json.dumps(names))


def _loadz(path: Path) -> dict[str, np.ndarray]:
    names = json.loads(path.with_suffix(".json").read_text())
    with np.load(path) as z:
        return {k: z[f"a{i}"] for i, k in enumerate(names)}


def save_checkpoint(
    root: Path,
    *,
    server_round: int,
    arrays: dict[str, np.ndarray],
    strategy: dict[str, np.ndarray],
    state: dict[str, Any],
) -> Path:
    """Write the checkpoint of a completed round and point ``latest.json`` at it."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"round_{server_round:04d}"
    tmp = root / f".round_{server_round:04d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _savez(tmp / "model.npz", arrays)
    _savez(tmp / "strategy.npz", strategy)
    (tmp / "state.json").write_text(json.dumps({"round": server_round, **state}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_text(root / "latest.json", json.dumps({"round": server_round, "path": final.name}))
    return final


def _load_folder(folder: Path, server_round: int) -> Checkpoint:
    return Checkpoint(
        round=server_round,
        arrays=_loadz(folder / "model.npz"),
        strategy=_loadz(folder / "strategy.npz"),
        state=json.loads((folder / "state.json").read_text()),
    )


def load_round(root: Path, server_round: int) -> Checkpoint:
    """The checkpoint of one completed round under ``root`` (FileNotFoundError if absent)."""
    return _load_folder(root / f"round_{server_round:04d}", server_round)


def load_latest(root: Path) -> Checkpoint | None:
    """The newest complete checkpoint under ``root``, or None if there is none."""
    pointer = root / "latest.json"
    if not pointer.exists():
        return None
    meta = json.loads(pointer.read_text())
    return _load_folder(root / meta["path"], int(meta["round"]))
