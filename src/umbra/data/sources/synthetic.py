"""A tiny synthetic multimodal data set for unit tests of the layers above ``data``.

Each modality of class ``c`` is a fixed random prototype plus Gaussian noise, so every
modality alone is learnable (a nearest-prototype rule is accurate when ``noise`` is small)
and training converges in a few steps on any machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from umbra.data.dataset import MODALITIES, MultimodalData

__all__ = ["SYNTHETIC_SHAPES", "make_synthetic", "synthetic_prototypes"]

SYNTHETIC_SHAPES: dict[str, tuple[int, ...]] = {
    "image": (1, 8, 8),
    "audio": (1, 8, 8),
    "text": (16,),
    "tabular": (4,),
}
_PROTOTYPE_SEED = 7_919


def synthetic_prototypes(num_classes: int, modality: str) -> np.ndarray:
    """Class prototypes ``(num_classes, *shape)`` of ``modality``, unit RMS per class.

    They depend only on ``(num_classes, modality)``, not on the sampling seed, so data made
    with different seeds (train vs test) share one distribution.
    """
    k = MODALITIES.index(modality)
    rng = np.random.default_rng([_PROTOTYPE_SEED, num_classes, k])
    protos = rng.standard_normal((num_classes, *SYNTHETIC_SHAPES[modality]))
    flat = protos.reshape(num_classes, -1)
    flat /= np.sqrt((flat**2).mean(axis=1, keepdims=True))
    return protos.astype(np.float32)


def make_synthetic(
    *,
    n: int,
    num_classes: int = 4,
    modalities: Sequence[str] = ("image", "audio", "text", "tabular"),
    seed: int = 0,
    noise: float = 0.5,
) -> MultimodalData:
    """``n`` records, classes balanced (``i % num_classes``, shuffled), all modalities present.

    Args:
        n: number of records (>= 1).
        num_classes: >= 2.
        modalities: a subset of ``MODALITIES`` (returned in canonical order).
        seed: draws the labels' order and the noise.
        noise: standard deviation of the additive Gaussian noise (>= 0); prototypes have
            unit RMS, so ``noise`` is the noise-to-signal amplitude ratio per feature.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    unknown = [m for m in modalities if m not in SYNTHETIC_SHAPES]
    if unknown or not modalities or len(set(modalities)) != len(modalities):
        raise ValueError(
            f"modalities must be distinct names from {list(SYNTHETIC_SHAPES)}, got {modalities}"
        )
    mods = tuple(m for m in MODALITIES if m in modalities)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    features = {}
    for m in mods:
        protos = synthetic_prototypes(num_classes, m)
        eps = rng.standard_normal((n, *SYNTHETIC_SHAPES[m]), dtype=np.float32)
        features[m] = protos[labels] + np.float32(noise) * eps
    return MultimodalData(
        features=features,
        mask=np.ones((n, len(mods)), dtype=bool),
        labels=labels,
        modalities=mods,
        class_names=tuple(f"class{c}" for c in range(num_classes)),
        ids=np.arange(n, dtype=np.int64),
    )
