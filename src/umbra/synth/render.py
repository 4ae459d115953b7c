"""Synthetic scattering coefficients rendered back to pixels, and written as PNG files.

The generator models each image as its scattering coefficients mapped to the unit vector
``u`` of :mod:`umbra.synth.feature_map` (pooled, then divided by the norm). Rendering finds
pixels in [0, 1] whose coefficients, mapped the same way, come closest to a synthetic
``u``: L-BFGS-B (scipy) through kymatio's differentiable ``Scattering2D``, as the audit's
inversion does (:mod:`umbra.audit.reconstruction_scattering`), on the pooled misfit plus a
small total-variation term that prefers flat regions over the many textures with nearly
the same pooled coefficients. It starts from a flat grey image, not from a real neighbour:
the released pictures must be a function of the generator alone, and the held-out images
are records too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from umbra.data.scattering import SCATTERING_J, SCATTERING_L
from umbra.synth.feature_map import FeatureMap

__all__ = ["GREY", "SMOOTHNESS", "render_scattering", "write_png"]

#: The flat starting image, in [0, 1].
GREY = 0.5
#: Weight of the total variation against the misfit (the misfit is scaled by
#: :data:`_MISFIT_SCALE`); measured by eye on Fashion-MNIST: 0 leaves speckle, 1e-2 blurs.
SMOOTHNESS = 1e-3
_MISFIT_SCALE = 100.0


def render_scattering(
    coefficients: np.ndarray,
    fmap: FeatureMap,
    image_shape: tuple[int, int, int],
    *,
    value_range: tuple[float, float],
    steps: int,
    smoothness: float = SMOOTHNESS,
) -> np.ndarray:
    """``(B, C, H, W)`` images in [0, 1] whose scattering coefficients, mapped by ``fmap``,
    best match those of ``coefficients`` ``(B, C·81, H/4, W/4)`` (``value_range``: the
    feature values of black and white pixels, as the data set standardised them)."""
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
    from scipy.optimize import minimize

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    c, h, w = image_shape
    u, _ = fmap.forward(np.asarray(coefficients))
    want = torch.as_tensor(u, dtype=torch.float32)  # (B, D)
    b = len(want)
    scatter = ScatteringTorch2D(J=SCATTERING_J, shape=(h, w), L=SCATTERING_L)
    lo, hi = value_range

    def mapped(x: torch.Tensor) -> torch.Tensor:
        coeffs = scatter(lo + (hi - lo) * x).reshape(b, *fmap.shape)  # (B, C·81, H/4, W/4)
        if fmap.pool is not None:
            coeffs = F.adaptive_avg_pool2d(coeffs, fmap.pool)
        flat = coeffs.reshape(b, -1)
        return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def loss_and_grad(v: np.ndarray) -> tuple[float, np.ndarray]:
        x = torch.tensor(v.reshape(b, c, h, w), dtype=torch.float32, requires_grad=True)
        misfit = (mapped(x) - want).square().sum() * _MISFIT_SCALE
        tv = (x[..., 1:, :] - x[..., :-1, :]).abs().sum() + (x[..., 1:] - x[..., :-1]).abs().sum()
        loss = misfit + smoothness * tv
        loss.backward()
        assert x.grad is not None
        return float(loss.detach()), x.grad.double().numpy().ravel()

    start = np.full(b * c * h * w, GREY)
    found = minimize(loss_and_grad, start, jac=True, method="L-BFGS-B",
                     bounds=[(0.0, 1.0)] * start.size, options={"maxiter": steps})  # fmt: skip
    return np.asarray(found.x, dtype=np.float64).reshape(b, c, h, w)


def write_png(image: np.ndarray, path: Path) -> None:
    """One ``(1, H, W)`` grey image in [0, 1] as an 8-bit PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.rint(np.clip(image[0], 0.0, 1.0) * 255).astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
