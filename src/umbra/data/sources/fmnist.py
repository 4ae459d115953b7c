"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package.

Xiao, Rasul, Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms", 2017, https://arxiv.org/abs/1708.07747. The files are gzipped
big-endian IDX (http://yann.lecun.com/exdb/mnist/): magic 2051 for images (N, 28, 28)
uint8, 2049 for labels (N,) uint8.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path
from typing import Literal

import numpy as np

from umbra.errors import DataError

__all__ = [
    "CLASS_NAMES",
    "FMNIST_DIR",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "IMAGE_SHAPE",
    "load_fmnist",
    "read_fmnist_raw",
    "read_idx",
    "standardize_images",
]

#: Where Debian installs the data set; ``$UMBRA_FMNIST_DIR`` overrides it.
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_SHAPE: tuple[int, int, int] = (1, 28, 28)
#: Fixed standardization constants of pixel values scaled to [0, 1] (train split statistics).
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530

_IMAGE_MAGIC = 2051
_LABEL_MAGIC = 2049
_SPLIT_SIZES = {"train": 60_000, "test": 10_000}
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}

Split = Literal["train", "test"]


def _root(root: Path | None) -> Path:
    if root is not None:
        return Path(root)
    env = os.environ.get("UMBRA_FMNIST_DIR")
    return Path(env) if env else FMNIST_DIR


def read_idx(path: Path, *, magic: int) -> np.ndarray:
    """Read one gzipped IDX file of unsigned bytes, checking its magic number and size.

    Returns a uint8 array whose shape is the one the header declares.
    """
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    if len(data) < 8:
        raise DataError(f"{path}: truncated IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path}: IDX magic {found}, expected {magic}")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataError(f"{path}: {len(data) - header} data bytes, header declares {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


@functools.lru_cache(maxsize=4)
def _read_split(root: Path, split: Split) -> tuple[np.ndarray, np.ndarray]:
    prefix = _SPLIT_PREFIX[split]
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz", magic=_IMAGE_MAGIC)
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz", magic=_LABEL_MAGIC)
    n = _SPLIT_SIZES[split]
    if images.shape != (n, 28, 28) or labels.shape != (n,):
        raise DataError(
            f"Fashion-MNIST {split} split under {root} has images {images.shape} and labels "
            f"{labels.shape}, expected ({n}, 28, 28) and ({n},)"
        )
    if labels.max() >= len(CLASS_NAMES):
        raise DataError(f"Fashion-MNIST {split} labels exceed {len(CLASS_NAMES) - 1}")
    images.flags.writeable = False
    return images, labels.astype(np.int64)


def read_fmnist_raw(split: Split, *, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``(images uint8 (N, 28, 28), labels int64 (N,))`` of ``split`` ("train": 60,000,
    "test": 10,000). Read once per process (cached in memory, images read-only)."""
    if split not in _SPLIT_SIZES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = _root(root)
    if not path.is_dir():
        raise DataError(
            f"Fashion-MNIST not found at {path}; install it with: "
            "sudo apt-get install dataset-fashion-mnist (or run `make install`)"
        )
    images, labels = _read_split(path, split)
    return images, labels.copy()


def standardize_images(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N, 28, 28)`` pixels -> float32 ``(N, 1, 28, 28)``: ``(x / 255 - mean) / std``."""
    x = images.astype(np.float32)[:, None, :, :]
    x *= np.float32(1.0 / 255.0)
    x -= np.float32(FMNIST_MEAN)
    x *= np.float32(1.0 / FMNIST_STD)
    return x


def load_fmnist(split: Split, *, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Standardized float32 images ``(N, 1, 28, 28)`` and int64 labels ``(N,)`` of ``split``."""
    images, labels = read_fmnist_raw(split, root=root)
    return standardize_images(images), labels
