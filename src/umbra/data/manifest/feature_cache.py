"""Image and audio features cached by the content hash of their file, one pack per kind."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from umbra.data.cache import atomic_savez

__all__ = ["CACHE_VERSION", "FeatureCache", "content_key"]


#: Bumped when the features of the same file change meaning.
CACHE_VERSION = 1


def content_key(data: bytes) -> str:
    """The cache key of some content: BLAKE2b-128, hex."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# --------------------------------------------------------------------------- cache


class FeatureCache:
    """Features of one kind keyed by content hash, in one ``<name>.npz`` pack.

    The pack holds ``keys`` (hex digests) and ``values`` (K, *shape) float32, and is
    loaded without pickle. New entries are merged and written atomically (temp file +
    ``os.replace``), so concurrent loaders at worst recompute. A pack that cannot be read
    or has the wrong shape is ignored.
    """

    def __init__(self, root: Path, name: str, shape: tuple[int, ...]) -> None:
        self.path = root / f"{name}.npz"
        self.shape = shape
        self._keys: dict[str, int] = {}
        self._values = np.zeros((0, *shape), dtype=np.float32)
        self._new: dict[str, np.ndarray] = {}
        try:
            with np.load(self.path, allow_pickle=False) as pack:
                keys, values = pack["keys"], pack["values"]
            if values.shape[1:] == shape and len(keys) == len(values):
                self._values = values.astype(np.float32, copy=False)
                self._keys = {str(k): i for i, k in enumerate(keys.tolist())}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # no cache yet, or a damaged one: recompute

    def __contains__(self, key: str) -> bool:
        return key in self._keys or key in self._new

    def get(self, key: str) -> np.ndarray:
        if key in self._new:
            return self._new[key]
        return self._values[self._keys[key]]

    def take(self, keys: Sequence[str]) -> np.ndarray:
        """Values of ``keys`` stacked to (len(keys), *shape)."""
        if not self._new:  # e.g. after flush(): one gather, no per-key copies
            rows = np.fromiter((self._keys[k] for k in keys), dtype=np.intp, count=len(keys))
            return self._values[rows]
        out = np.empty((len(keys), *self.shape), dtype=np.float32)
        old = [(i, self._keys[k]) for i, k in enumerate(keys) if k not in self._new]
        if old:
            dst, src = map(list, zip(*old, strict=True))
            out[dst] = self._values[src]
        for i, k in enumerate(keys):
            if k in self._new:
                out[i] = self._new[k]
        return out

    def put(self, key: str, value: np.ndarray) -> None:
        value = np.asarray(value, dtype=np.float32)
        if value.shape != self.shape:
            raise ValueError(f"feature shape {value.shape} != {self.shape} for {self.path.name}")
        self._new[key] = value

    def flush(self) -> None:
        """Write new entries (if any) to the pack."""
        if not self._new:
            return
        keys = [*self._keys, *self._new]
        values = np.concatenate([self._values, np.stack(list(self._new.values()))])
        atomic_savez(self.path, keys=np.asarray(keys, dtype="U32"), values=values)
        self._keys = {k: i for i, k in enumerate(keys)}
        self._values = values
        self._new = {}
