"""Back from wavelet-scattering coefficients to pixels, by optimisation.

The scattering transform (kymatio's ``Scattering2D``, :mod:`umbra.data.scattering`) is
differentiable in its torch front end: pixels in [0, 1] (a sigmoid of free parameters)
are fitted so that their group-normalised coefficients equal the recovered ones, with a
total-variation prior. Group-normalised, because the scattering encoder's GroupNorm is
all an attacker can undo: what its first linear layer sees has lost each group's mean
and scale.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from umbra.audit.reconstruction_matching import total_variation
from umbra.data.scattering import SCATTERING_J, SCATTERING_L, scattering_shape

__all__ = ["invert_scattering", "normalised_scattering"]


def _transform(hw: tuple[int, int]) -> torch.nn.Module:
    # The 2-D front end only (see umbra.data.scattering).
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    return ScatteringTorch2D(J=SCATTERING_J, shape=hw, L=SCATTERING_L)


def normalised_scattering(coefficients: torch.Tensor, groups: int) -> torch.Tensor:
    """GroupNorm without affine of ``(B, C, H, W)`` coefficients (the encoder's, eps 1e-5)."""
    return F.group_norm(coefficients.float(), groups, eps=1e-5)


def invert_scattering(
    target: np.ndarray,
    image_shape: tuple[int, int, int],
    *,
    groups: int,
    value_range: tuple[float, float] = (0.0, 1.0),
    steps: int = 200,
    lr: float = 0.1,
    tv_weight: float = 0.02,
    stretch: bool = True,
) -> np.ndarray:
    """Images ``(B, C, H, W)`` in [0, 1] whose scattering coefficients, group-normalised
    into ``groups`` groups, come closest to ``target`` (``(B, *scattering_shape)``, already
    group-normalised). ``value_range``: the feature values of black and white pixels
    (the data set's standardisation, which the coefficients were computed from). Starts
    from mid-grey; Adam for ``steps`` steps. ``stretch``: rescale each image to span
    [0, 1] (an attacker's prior that images run from black to white)."""
    c, h, w = image_shape
    want = torch.as_tensor(np.asarray(target), dtype=torch.float32)
    if tuple(want.shape[1:]) != scattering_shape(image_shape):
        raise ValueError(
            f"target must be (B, {scattering_shape(image_shape)}), got {tuple(want.shape)}"
        )
    scatter = _transform((h, w))
    u = torch.zeros((len(want), c, h, w), requires_grad=True)
    opt = torch.optim.Adam([u], lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        img = torch.sigmoid(u)  # (B, C, H, W)
        lo, hi = value_range
        coeffs = scatter(lo + (hi - lo) * img).reshape(
            len(want), *want.shape[1:]
        )  # (B, C·81, H/4, W/4)
        loss = F.mse_loss(normalised_scattering(coeffs, groups), want)
        loss = loss + tv_weight * total_variation(img)
        loss.backward()
        opt.step()
    out = torch.sigmoid(u).detach().numpy().astype(np.float64)  # (B, C, H, W)
    if not stretch:
        return out
    # The normalisation lost each group's level and scale, so overall brightness and
    # contrast are not determined: span black to white, as the data set's images do.
    lo_px = out.min(axis=(1, 2, 3), keepdims=True)
    hi_px = out.max(axis=(1, 2, 3), keepdims=True)
    return (out - lo_px) / np.maximum(hi_px - lo_px, 1e-12)
