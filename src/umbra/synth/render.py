"""Synthetic scattering coefficients rendered back to pixels, and written as PNG files.

The coefficients of a synthetic record belong to no real image; the pixels whose
coefficients come closest are found by the scattering inversion of the audit
(:func:`umbra.audit.reconstruction_scattering.invert_scattering`: L-BFGS-B in [0, 1]
through kymatio). It starts from a flat grey image, not from a real neighbour: the
released pictures must be a function of the generator alone, and the held-out images are
records too. Group-normalised in groups of 3 channels (the scattering encoder's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from umbra.audit.reconstruction_scattering import invert_scattering, normalised_scattering

__all__ = ["GREY", "render_scattering", "write_png"]

#: The flat starting image, in [0, 1].
GREY = 0.5
#: Channels per group of the normalisation the fit works in.
CHANNELS_PER_GROUP = 3


def render_scattering(
    coefficients: np.ndarray,
    image_shape: tuple[int, int, int],
    *,
    value_range: tuple[float, float],
    steps: int,
) -> np.ndarray:
    """``(B, C, H, W)`` images in [0, 1] whose scattering coefficients best match
    ``coefficients`` ``(B, C·81, H/4, W/4)`` (``value_range``: the feature values of black
    and white pixels, as the data set standardised them)."""
    coeffs = torch.as_tensor(np.asarray(coefficients), dtype=torch.float32)
    groups = coeffs.shape[1] // CHANNELS_PER_GROUP
    target = normalised_scattering(coeffs, groups).numpy()
    init = np.full((len(coeffs), *image_shape), GREY)
    found = invert_scattering(
        target, image_shape, groups=groups, init=init, value_range=value_range, steps=steps
    )
    return found.images


def write_png(image: np.ndarray, path: Path) -> None:
    """One ``(1, H, W)`` grey image in [0, 1] as an 8-bit PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.rint(np.clip(image[0], 0.0, 1.0) * 255).astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
