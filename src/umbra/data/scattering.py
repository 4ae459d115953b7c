"""Wavelet scattering features of images (kymatio's ``Scattering2D``), cached by content.

Tramèr & Boneh, "Differentially Private Learning Needs Better Features (or Much More
Data)", ICLR 2021, https://arxiv.org/abs/2011.11660: with DP-SGD, a linear model on fixed
ScatterNet features (Oyallon & Mallat; J = 2 scales, L = 8 angles) beats end-to-end CNNs
at the same ε, because the features are fixed and data-independent (they cost no privacy)
and the few trained parameters learn in the few noisy steps a budget allows. Here the
scattering transform is kymatio's (Andreux et al., JMLR 2020), wrapped, never rewritten.

``(N, C, H, W)`` images become ``(N, C·K, ⌊H/4⌋, ⌊W/4⌋)`` coefficients with
``K = 1 + J·L + L²·J·(J−1)/2 = 81``: 3,969 numbers per 28×28 grayscale image. They are
computed once per set of images (about 1.2 ms per 28×28 image on one core) and stored
under ``<cache>/scattering/`` as float16 (the GroupNorm after them makes 3-digit precision
ample), keyed by the sha256 of the images and the transform's parameters.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from umbra.data.cache import atomic_save, resolve_cache_dir

__all__ = ["SCATTERING_J", "SCATTERING_L", "scattering_features", "scattering_shape"]

#: Scales of the scattering transform (Tramèr & Boneh's choice): 2**J = 4x downsampling.
SCATTERING_J = 2
#: Angles per scale.
SCATTERING_L = 8
#: Images per call to kymatio (bounds the FFT buffers to about 0.5 GB at 28x28).
BATCH = 512
#: Bump when the stored layout or the transform's set-up changes.
FORMAT_VERSION = 1


def _coefficients_per_channel(j: int = SCATTERING_J, ell: int = SCATTERING_L) -> int:
    return 1 + j * ell + ell * ell * j * (j - 1) // 2


def scattering_shape(image_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The per-record feature shape that ``(C, H, W)`` images are turned into."""
    c, h, w = image_shape
    step = 2**SCATTERING_J
    return (c * _coefficients_per_channel(), h // step, w // step)


def _check(images: np.ndarray) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
    h, w = images.shape[2:]
    smallest = 2**SCATTERING_J
    if min(h, w) < smallest:
        raise ValueError(
            f"scattering with J={SCATTERING_J} needs images of at least {smallest}x{smallest} "
            f"pixels, got {h}x{w}"
        )
    if not np.all(np.isfinite(images)):
        raise ValueError("images hold NaN or infinite values")


def _compute(images: np.ndarray) -> np.ndarray:
    import torch

    # The 2-D front end only: ``kymatio.torch`` also imports the 3-D transform, whose filter
    # bank needs ``scipy.special.sph_harm`` (removed in SciPy 1.17).
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    n, c, h, w = images.shape
    out_shape = scattering_shape((c, h, w))
    transform = ScatteringTorch2D(J=SCATTERING_J, shape=(h, w), L=SCATTERING_L)
    out = np.empty((n, *out_shape), dtype=np.float16)
    with torch.no_grad():
        for start in range(0, n, BATCH):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + BATCH], np.float32))
            coeffs = transform(x)  # (B, C, K, H/4, W/4)
            out[start : start + BATCH] = coeffs.reshape(len(x), *out_shape).numpy()
    return out


def _key(images: np.ndarray) -> str:
    from importlib.metadata import version

    h = hashlib.sha256()
    h.update(repr((FORMAT_VERSION, SCATTERING_J, SCATTERING_L, version("kymatio"))).encode())
    h.update(repr((images.shape, str(images.dtype))).encode())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()[:24]


def scattering_features(images: np.ndarray, cache_dir: Path | str | None = None) -> np.ndarray:
    """Scattering coefficients ``(N, C·81, ⌊H/4⌋, ⌊W/4⌋)`` float16 of ``(N, C, H, W)`` images.

    Computed once and cached by content (see the module docstring); a second call with the
    same images reads the file back (memory-mapped, read-only).
    """
    images = np.asarray(images)
    _check(images)
    if len(images) == 0:
        return np.zeros((0, *scattering_shape(images.shape[1:])), dtype=np.float16)
    path = resolve_cache_dir(cache_dir) / "scattering" / f"scat-{_key(images)}.npy"
    if path.exists():
        try:
            cached = np.load(path, mmap_mode="r")
            if cached.shape == (len(images), *scattering_shape(images.shape[1:])):
                return cached
        except (OSError, ValueError):
            pass  # unreadable: recompute and overwrite
    feats = _compute(images)
    atomic_save(path, feats)
    return feats
