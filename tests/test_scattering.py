"""Scattering features: kymatio's transform, cached by content, with known analytic values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from umbra.data.scattering import scattering_features, scattering_shape
from umbra.models import build_encoder


def _images(n: int, c: int = 1, h: int = 16, w: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, c, h, w)).astype(np.float32)


def test_equals_kymatio_and_is_cached(tmp_path: Path) -> None:
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    x = _images(5)
    got = scattering_features(x, tmp_path)
    ref = ScatteringTorch2D(J=2, shape=(16, 12), L=8)(torch.from_numpy(x)).numpy()
    assert got.shape == (5, *scattering_shape((1, 16, 12))) == (5, 81, 4, 3)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got, ref.reshape(got.shape), rtol=2e-3, atol=2e-3)
    files = list((tmp_path / "scattering").glob("*.npy"))
    assert len(files) == 1
    again = scattering_features(x.copy(), tmp_path)  # same content: read back, not recomputed
    np.testing.assert_array_equal(again, got)
    assert list((tmp_path / "scattering").glob("*.npy")) == files
    scattering_features(_images(5, seed=1), tmp_path)  # other content: another entry
    assert len(list((tmp_path / "scattering").glob("*.npy"))) == 2


def test_constant_image_keeps_its_mean_and_no_oscillation(tmp_path: Path) -> None:
    """The low-pass (order 0) of a constant image is the constant and every wavelet
    (zero-mean band-pass) coefficient vanishes: an analytic reference, not kymatio's."""
    x = np.stack([np.full((1, 12, 12), v, np.float32) for v in (-2.0, 0.0, 0.5, 3.0)])
    got = scattering_features(x, tmp_path).astype(np.float32)
    for v, f in zip((-2.0, 0.0, 0.5, 3.0), got, strict=True):
        np.testing.assert_allclose(f[0], v, atol=2e-3)
        assert np.abs(f[1:]).max() < 1e-3


def test_each_record_is_transformed_alone(tmp_path: Path) -> None:
    """The transform is fixed and per record (what makes it free of privacy cost): a record's
    coefficients do not change with the other records it is computed with."""
    batch = _images(4, h=8, w=8)
    together = scattering_features(batch, tmp_path)
    for i in range(4):
        alone = scattering_features(batch[i : i + 1], tmp_path)
        np.testing.assert_array_equal(together[i : i + 1], alone)
    changed = batch.copy()
    changed[1:] = _images(3, h=8, w=8, seed=5)
    np.testing.assert_array_equal(scattering_features(changed, tmp_path)[0], together[0])


def test_channels_are_transformed_separately(tmp_path: Path) -> None:
    rgb = _images(3, c=3, h=8, w=8)
    got = scattering_features(rgb, tmp_path)
    assert got.shape == (3, 243, 2, 2)
    for c in range(3):
        alone = scattering_features(rgb[:, c : c + 1], tmp_path)
        np.testing.assert_array_equal(got[:, 81 * c : 81 * (c + 1)], alone)


@pytest.mark.parametrize(
    ("images", "needle"),
    [
        (np.zeros((2, 3, 3, 16), np.float32), "at least 4x4"),
        (np.zeros((2, 16, 16), np.float32), "(N, C, H, W)"),
        (np.full((1, 1, 8, 8), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_images(images: np.ndarray, needle: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        scattering_features(images, tmp_path)


def test_unreadable_cache_entry_is_recomputed(tmp_path: Path) -> None:
    x = _images(2, h=8, w=8)
    first = np.array(scattering_features(x, tmp_path))
    (entry,) = (tmp_path / "scattering").glob("*.npy")
    entry.write_bytes(b"not an array")
    np.testing.assert_array_equal(scattering_features(x, tmp_path), first)


def test_scattering_encoder_is_groupnorm_and_linear() -> None:
    enc = build_encoder("scattering", (81, 7, 7), hidden=32)
    norm, _, linear, _ = enc
    assert isinstance(norm, torch.nn.GroupNorm) and norm.num_groups == 27
    assert isinstance(linear, torch.nn.Linear) and linear.in_features == 81 * 49
    assert enc(torch.randn(4, 81, 7, 7)).shape == (4, 32)
    assert build_encoder("scattering", (10, 2, 2), hidden=4)[0].num_groups == 1
    with pytest.raises(ValueError, match="scattering encoder needs a"):
        build_encoder("scattering", (81,), hidden=4)


def test_prepare_turns_images_into_scattering_coefficients(tmp_path: Path) -> None:
    """`umbra data prepare` on the synthetic set (8x8 images): 81x2x2 coefficients; a data
    set without images is refused with a message naming the setting."""
    import os
    import subprocess
    import sys

    from umbra.config import load_config
    from umbra.data.dataset import MultimodalData
    from umbra.errors import ConfigError
    from umbra.run.prepare import image_features

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "UMBRA_CACHE": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "umbra.cli", "data", "prepare", "--preset", "smoke",
         "--set", "data.source=synthetic", "--set", "data.image_features=scattering"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "images as scattering (81x2x2)" in proc.stdout
    assert len(list((tmp_path / "scattering").glob("*.npy"))) == 2  # train and test

    cfg = load_config("smoke", overrides=["data.image_features=scattering"])
    no_images = MultimodalData({"text": np.zeros((2, 3), np.float32)}, np.ones((2, 1), bool),
                               np.zeros(2, np.int64), ("text",), ("a", "b"))  # fmt: skip
    with pytest.raises(ConfigError, match=r"data\.image_features = 'scattering' needs an image"):
        image_features(no_images, cfg)
