"""On-disk cache for derived data (speech pools, text embeddings, built data sets).

Everything cached here is derived from public inputs (Fashion-MNIST, synthesized speech,
fixed description strings), never from secret material. Files are written atomically
(temporary file + ``os.replace``) so that concurrent simulation workers never read a
half-written file; a lost race only costs a recomputation.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["atomic_save", "atomic_savez", "default_cache_dir", "params_key", "resolve_cache_dir"]

#: Environment variable that overrides the default cache folder.
CACHE_ENV = "UMBRA_CACHE"


def default_cache_dir() -> Path:
    """``$UMBRA_CACHE`` if set, else ``~/.cache/umbra``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "umbra"


def resolve_cache_dir(cache_dir: Path | str | None) -> Path:
    """``cache_dir`` or the default, created if missing."""
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


def params_key(params: dict[str, Any], *, length: int = 16) -> str:
    """A short hex key (sha256 of canonical JSON) identifying ``params``."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` (uncompressed, fast to load) to ``path`` atomically."""
    _atomic_write(path, ".tmp.npz", lambda fh: np.savez(fh, **arrays))  # type: ignore[arg-type]


def atomic_save(path: Path, array: np.ndarray) -> None:
    """``np.save`` one array to ``path`` (``.npy``: memory-mappable) atomically."""
    _atomic_write(path, ".tmp.npy", lambda fh: np.save(fh, array))


def _atomic_write(path: Path, suffix: str, write: Callable[[BinaryIO], None]) -> None:
    """Write through ``write`` to a temporary file beside ``path``, then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
