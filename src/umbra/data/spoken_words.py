"""A generated brought-data set: spoken digit words paired with handwritten digits.

It stands in for the data a user brings (a manifest of real media files, docs/data.md) and
is deliberately *not* ``fmnist-avt``: the label is a word (the digit words "zero" … "nine",
or Speech Commands' command words "yes", "no", "up", …), the audio speaks that word (espeak-ng, several voices, speeds and pitches, then a random time shift,
gain and white noise per record, as in :mod:`umbra.data.sources.speech`), and the image is
a handwritten digit from scikit-learn's bundled UCI digits set (8 × 8 scans, 1,797 images;
Alpaydin & Kaynak 1998), upscaled to 32 × 32; word k pairs with digit k. Each modality
alone determines the label, as in real paired data, unlike ``fmnist-avt`` whose audio is a
deliberately partial view.

:func:`write_spoken_words` writes WAV and PNG files plus ``manifest.csv`` (columns ``id``,
``label``, ``image``, ``audio``) into a folder; some records lack their image or their
audio, never both (or, with ``images=False``, speech only). The benchmark ``bench/brought_data.py`` and the end-to-end tests train
on it through ``--set data.manifest=...`` like any user's manifest.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from umbra.data.sources.speech import SAMPLE_RATE, augment_clips, synthesize_pool

__all__ = ["COMMAND_WORDS", "SPOKEN_WORDS", "SPOKEN_WORDS_VOICES", "write_spoken_words"]

#: The ten labels, spoken as words; label k pairs with handwritten digit k.
SPOKEN_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)  # fmt: skip
#: The ten command words of Speech Commands (Warden 2018, arXiv:1804.03209): short, with
#: shared phonemes in another order ("no" / "on"), which a time-pooled summary tells apart
#: poorly. Label k still pairs with handwritten digit k.
COMMAND_WORDS: tuple[str, ...] = (
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
)  # fmt: skip
#: Voices of the spoken words: American, British, a female and a male variant, and more.
SPOKEN_WORDS_VOICES: tuple[str, ...] = (
    "en-us", "en-gb", "en+f3", "en+m3", "en+f2", "en+m5", "en-gb-scotland", "en-029",
)  # fmt: skip
_SPEEDS = (130, 155, 180, 205, 230)  # words per minute
_PITCHES = (25, 40, 55, 70, 85)  # espeak-ng pitch, 0-99
_IMAGE_SIDE = 32  # pixels of each written PNG (the manifest loader resizes to 28 × 28)


def write_spoken_words(
    root: Path,
    *,
    per_word: int = 170,
    missing: float = 0.2,
    snr_db: tuple[float, float] = (5.0, 25.0),
    seed: int = 0,
    words: Sequence[str] = SPOKEN_WORDS,
    images: bool = True,
    voices: Sequence[str] = SPOKEN_WORDS_VOICES,
    cache_dir: Path | None = None,
) -> Path:
    """Write ``per_word`` records per word (at most 174: the scans of the rarest digit).

    Each record holds a distinct handwritten scan of its digit and a clip of its word
    (a pool of ``per_word`` synthesized clips per word, cached like ``fmnist-avt``'s
    speech under ``cache_dir``, each augmented afresh). A share ``missing`` of the records
    lacks the image and another share ``missing`` the audio; ``images=False`` writes a
    speech-only manifest (no ``image`` column, every record's audio). Everything is drawn from
    ``seed``: the same arguments write the same files. Returns the manifest's path.
    """
    from sklearn.datasets import load_digits

    if not 0.0 <= missing < 0.5:
        raise ValueError(f"missing must be in [0, 0.5), got {missing}")
    if len(words) != 10 or len(set(words)) != 10:
        raise ValueError(f"words must be ten distinct words (one per digit), got {list(words)}")
    digits = load_digits()
    scans: np.ndarray = digits.images  # (1797, 8, 8) values 0-16
    targets: np.ndarray = digits.target
    most = int(np.bincount(targets).min())
    if not 1 <= per_word <= most:
        raise ValueError(f"per_word must be in [1, {most}], got {per_word}")
    rng = np.random.default_rng(seed)
    pool = synthesize_pool(
        [[w] for w in words],
        clips_per_class=per_word,
        cache_dir=cache_dir,
        voices=voices,
        speeds=_SPEEDS,
        pitches=_PITCHES,
    )
    root.mkdir(parents=True, exist_ok=True)
    if images:
        (root / "images").mkdir(exist_ok=True)
    (root / "audio").mkdir(exist_ok=True)
    rows: list[list[str]] = []
    for k, word in enumerate(words):
        chosen = rng.permutation(np.flatnonzero(targets == k))[:per_word]
        clips = rng.permutation(pool.clips_of(k))[:per_word]
        waves = augment_clips(pool, clips, rng, snr_db=snr_db)  # (per_word, CLIP_SAMPLES)
        # which modality each record lacks: 0 none, 1 image, 2 audio (never both)
        lacks = rng.choice(3, size=per_word, p=[1.0 - 2 * missing, missing, missing])
        if not images:
            lacks[:] = 1
        for j in range(per_word):
            rid = f"{word}-{j:03d}"
            image, audio = f"images/{rid}.png", f"audio/{rid}.wav"
            if lacks[j] != 1:
                pixels = np.clip(scans[chosen[j]] * (255.0 / 16.0), 0, 255).astype(np.uint8)
                big = Image.fromarray(pixels, "L").resize(
                    (_IMAGE_SIDE, _IMAGE_SIDE), Image.Resampling.BILINEAR
                )
                big.save(root / image)
            if lacks[j] != 2:
                peak = max(float(np.abs(waves[j]).max()), 1e-9)
                wave = waves[j] * min(1.0, 0.9 / peak)  # no clipping in 16-bit PCM
                sf.write(root / audio, wave, SAMPLE_RATE, subtype="PCM_16")
            row = [rid, word, "" if lacks[j] == 1 else image, "" if lacks[j] == 2 else audio]
            rows.append(row if images else [rid, word, audio])
    path = root / "manifest.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", "image", "audio"] if images else ["id", "label", "audio"])
        writer.writerows(rows)
    return path
