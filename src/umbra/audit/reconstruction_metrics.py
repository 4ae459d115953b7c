"""Image similarity for reconstructions: PSNR and SSIM (pure numpy).

SSIM is Wang et al.'s (IEEE TIP 2004, https://doi.org/10.1109/TIP.2003.819861) with their
constants: an 11×11 Gaussian window of σ = 1.5, K1 = 0.01, K2 = 0.03, averaged over the
"valid" window positions, per channel then over channels (as ``skimage.metrics``'
``gaussian_weights=True, use_sample_covariance=False``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["psnr", "ssim"]

_WIN = 11
_SIGMA = 1.5
_K1 = 0.01
_K2 = 0.03


def psnr(reference: np.ndarray, test: np.ndarray, *, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10·log10(range² / MSE)``; inf when equal."""
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(test, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0.0 else float(10.0 * np.log10(data_range**2 / mse))


def _filter(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of the last two axes with ``kernel`` (1-D)."""
    k = len(kernel)
    rows = sum(kernel[i] * x[..., i : x.shape[-2] - k + 1 + i, :] for i in range(k))
    return sum(kernel[i] * rows[..., :, i : x.shape[-1] - k + 1 + i] for i in range(k))


def ssim(reference: np.ndarray, test: np.ndarray, *, data_range: float = 1.0) -> float:
    """Mean structural similarity of two ``(H, W)`` or ``(C, H, W)`` images (H, W ≥ 11)."""
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(test, dtype=np.float64)
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise ValueError(f"need two equal (H, W) or (C, H, W) images, got {a.shape}, {b.shape}")
    if min(a.shape[-2:]) < _WIN:
        raise ValueError(f"SSIM needs images of at least {_WIN}x{_WIN}, got {a.shape}")
    t = np.arange(_WIN) - (_WIN - 1) / 2
    kernel = np.exp(-(t**2) / (2 * _SIGMA**2))
    kernel /= kernel.sum()
    mu_a, mu_b = _filter(a, kernel), _filter(b, kernel)
    var_a = _filter(a * a, kernel) - mu_a**2
    var_b = _filter(b * b, kernel) - mu_b**2
    cov = _filter(a * b, kernel) - mu_a * mu_b
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return float(np.mean(s))
