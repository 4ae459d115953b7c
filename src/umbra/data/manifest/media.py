"""Decoding of a manifest's media files: PNG/JPEG images and WAV audio, from bytes."""

from __future__ import annotations

import io

import numpy as np

__all__ = ["CHANNEL_MODES", "decode_audio", "decode_image"]


_WAV_FORMATS = frozenset({"WAV", "WAVEX"})
_IMAGE_FORMATS = frozenset({"PNG", "JPEG"})
CHANNEL_MODES = {1: "L", 3: "RGB"}


def decode_image(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """Decode PNG/JPEG bytes to float32 ``shape`` = (C, H, W) with values in [0, 1].

    Any size and colour mode: converted to grayscale (C=1) or RGB (C=3), EXIF rotation
    applied, resized (bilinear, aspect ratio not kept) to H×W. 16-bit images are scaled
    by 65535. Raises ValueError for anything that is not a readable PNG or JPEG.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    c, h, w = shape
    try:
        with Image.open(io.BytesIO(data)) as src:
            if src.format not in _IMAGE_FORMATS:
                raise ValueError(f"not a PNG or JPEG image (it is {src.format})")
            src.draft(CHANNEL_MODES[c], (w, h))  # JPEG: decode at reduced size, much faster
            img: Image.Image = ImageOps.exif_transpose(src)
            if img.mode.startswith("I;16") or img.mode in ("I", "F"):  # 16-bit / float gray
                arr = np.asarray(img, dtype=np.float32)
                peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
                gray = Image.fromarray(arr / peak, mode="F")
                out = np.asarray(gray.resize((w, h), Image.Resampling.BILINEAR))[None]
                return np.repeat(out, c, axis=0).clip(0.0, 1.0)
            img = img.convert(CHANNEL_MODES[c]).resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except UnidentifiedImageError:
        raise ValueError("not an image file (PNG or JPEG expected)") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"unreadable image: {exc}") from None
    return arr[None] if c == 1 else arr.transpose(2, 0, 1).copy()  # (C, H, W)


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Decode WAV bytes to ``(wave (T,) float32 mono, sample rate in Hz)``.

    Channels are averaged. Raises ValueError for anything but a non-empty WAV file;
    resampling is left to :func:`umbra.data.sources.speech.log_mel`.
    """
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            if f.format not in _WAV_FORMATS:
                raise ValueError(f"wrong audio format: {f.format}, WAV expected")
            wave = f.read(dtype="float32", always_2d=True)  # (T, C)
            rate = int(f.samplerate)
    except sf.LibsndfileError as exc:
        raise ValueError(f"not a readable WAV file ({exc.error_string})") from None
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"not a readable WAV file ({exc})") from None
    if wave.shape[0] == 0:
        raise ValueError("audio file has no samples")
    return wave.mean(axis=1), rate
