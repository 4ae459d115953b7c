"""How a manifest's files become features: per-modality featurizers, hashing and decoding in
a few threads, batched finishing, and the text encoder (imported lazily)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from umbra.data.cache import params_key
from umbra.data.manifest.feature_cache import FeatureCache, content_key
from umbra.data.manifest.media import decode_audio, decode_image
from umbra.data.manifest.problems import BadRow

__all__ = [
    "Featurizer",
    "audio_featurizer",
    "file_features",
    "image_featurizer",
    "stack_features",
    "text_encoder",
    "text_warm_up",
]


@dataclass(frozen=True)
class Featurizer:
    """How files of one modality become features.

    ``prepare`` turns one file's bytes into a fixed-shape array (ValueError: a bad file);
    ``finish`` maps a stacked batch of those to features ``(B, *shape)``, so that costly
    transforms (the log-mel STFT) run once per batch instead of once per file.
    """

    shape: tuple[int, ...]
    tag: str
    prepare: Callable[[bytes], np.ndarray]
    finish: Callable[[np.ndarray], np.ndarray]
    batch: int = 512


def image_featurizer(shape: tuple[int, int, int]) -> Featurizer:
    """PNG/JPEG -> (C, H, W) float32 in [0, 1] (:func:`decode_image`), no batch transform."""
    from PIL import Image

    Image.preinit()  # import the PNG/JPEG plugins now, not first in a worker thread
    c, h, w = shape
    return Featurizer(
        shape=shape,
        tag=f"image-{c}x{h}x{w}",
        prepare=lambda raw: decode_image(raw, shape),
        finish=lambda batch: batch,
    )


def audio_featurizer() -> Featurizer:
    """WAV -> mono -> ``speech.SAMPLE_RATE`` (polyphase) -> 2 s window -> batched log-mel.

    Equal to :func:`umbra.data.sources.speech.log_mel` on each wave, batched. The cache tag
    hashes every upper-case constant of the speech module (rates, FFT sizes, feature
    normalisation), so cached features are recomputed when any of them changes.
    """
    import soundfile  # noqa: F401  (imported here, not first in a worker thread)
    from scipy.signal import firwin, resample_poly  # noqa: F401  (loaded before worker threads)

    from umbra.data.sources import speech

    length = int(speech.CLIP_SAMPLES)
    consts = {
        k: v
        for k, v in vars(speech).items()
        if k.isupper() and isinstance(v, int | float | str | tuple)
    }

    def prepare(raw: bytes) -> np.ndarray:
        wave, sr = decode_audio(raw)
        x = wave.astype(np.float64)
        x = speech.resample(x, sr)
        out = np.zeros(length, dtype=np.float32)  # zero-padded or cropped to the window
        out[: min(length, len(x))] = x[:length]
        return out

    return Featurizer(
        shape=tuple(speech.AUDIO_SHAPE),
        tag=f"audio-{params_key(consts)}",
        prepare=prepare,
        finish=lambda batch: speech.log_mel_batch(batch),
    )


def text_encoder() -> tuple[Callable[..., np.ndarray], int]:
    """``(embed_texts, TEXT_DIM)`` of the text source, imported lazily."""
    from umbra.data.sources import text

    return text.embed_texts, int(text.TEXT_DIM)


def text_warm_up() -> Callable[..., bool]:
    """:func:`umbra.data.sources.text.warm_up`, imported lazily."""
    from umbra.data.sources import text

    return text.warm_up


def _hash_file(path: str) -> str | BadRow:
    try:
        with open(path, "rb") as f:
            return content_key(f.read())
    except OSError as exc:
        return BadRow(0, "", f"cannot read file: {exc.strerror or exc}")


_T = TypeVar("_T")
_R = TypeVar("_R")


def _chunked_map(
    pool: ThreadPoolExecutor, fn: Callable[[_T], _R], items: Sequence[_T], size: int = 256
) -> list[_R]:
    """``[fn(x) for x in items]`` in the pool, one task per ``size`` items (a future per
    item costs more than hashing a small file)."""
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    return [r for part in pool.map(lambda c: [fn(x) for x in c], chunks) for r in part]


def file_features(
    paths: Sequence[str | None],
    cache: FeatureCache,
    feat: Featurizer,
    column: str,
    rows: Sequence[int],
) -> tuple[list[str | None], list[BadRow]]:
    """Hash every file, featurize the contents not cached yet; the key per record, errors.

    Reading, hashing and ``prepare`` run in a few threads (file I/O, BLAKE2b, PIL and
    scipy release the GIL); ``finish`` runs once per batch in this thread.
    """
    unique = list(dict.fromkeys(p for p in paths if p is not None))
    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        hashes = _chunked_map(pool, _hash_file, unique)
        got: dict[str, str | BadRow] = dict(zip(unique, hashes, strict=True))
        todo: dict[str, str] = {}  # key -> a path holding that content
        for p, k in got.items():
            if isinstance(k, str) and k not in cache:
                todo.setdefault(k, p)

        def prepare(item: tuple[str, str]) -> np.ndarray | BadRow:
            key, path = item
            try:
                with open(path, "rb") as f:
                    raw = f.read()
                if content_key(raw) != key:
                    return BadRow(0, "", "file changed while loading")
                return feat.prepare(raw)
            except OSError as exc:
                return BadRow(0, "", f"cannot read file: {exc.strerror or exc}")
            except ValueError as exc:
                return BadRow(0, "", str(exc))

        failed: dict[str, BadRow] = {}
        items = list(todo.items())
        for start in range(0, len(items), feat.batch):
            chunk = items[start : start + feat.batch]
            ok: dict[str, np.ndarray] = {}
            for (k, _), out in zip(chunk, _chunked_map(pool, prepare, chunk, 32), strict=True):
                if isinstance(out, BadRow):
                    failed[k] = out
                else:
                    ok[k] = out
            if ok:
                for k, v in zip(ok, feat.finish(np.stack(list(ok.values()))), strict=True):
                    cache.put(k, v)
    keys: list[str | None] = [None] * len(paths)
    bad: list[BadRow] = []
    for i, record_path in enumerate(paths):
        if record_path is None:
            continue
        key_or_err = got[record_path]
        err = key_or_err if isinstance(key_or_err, BadRow) else failed.get(key_or_err)
        if err is not None:
            bad.append(BadRow(rows[i], column, err.reason))
        elif isinstance(key_or_err, str):
            keys[i] = key_or_err
    return keys, bad


def stack_features(
    keys: Sequence[str | None], cache: FeatureCache
) -> tuple[np.ndarray, np.ndarray]:
    """(N, *shape) features (zeros where the key is None) and the (N,) presence mask."""
    present = np.array([k is not None for k in keys], dtype=bool)
    out = np.zeros((len(keys), *cache.shape), dtype=np.float32)
    idx = np.flatnonzero(present)
    if len(idx):
        out[idx] = cache.take([k for k in keys if k is not None])
    return out, present
