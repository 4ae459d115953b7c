"""Data sources: real data sets (Fashion-MNIST, espeak-ng speech, MiniLM text) and the
embedded ``fmnist-avt`` set, plus a tiny synthetic set for tests."""

from __future__ import annotations

from umbra.data.sources.avt import AVT_MODALITIES, load_fmnist_avt
from umbra.data.sources.fmnist import CLASS_NAMES, load_fmnist, read_fmnist_raw
from umbra.data.sources.speech import AUDIO_SHAPE, log_mel, log_mel_batch, synthesize_pool
from umbra.data.sources.synthetic import SYNTHETIC_SHAPES, make_synthetic
from umbra.data.sources.text import TEXT_DIM, embed_texts

__all__ = [
    "AUDIO_SHAPE",
    "AVT_MODALITIES",
    "CLASS_NAMES",
    "SYNTHETIC_SHAPES",
    "TEXT_DIM",
    "embed_texts",
    "load_fmnist",
    "load_fmnist_avt",
    "log_mel",
    "log_mel_batch",
    "make_synthetic",
    "read_fmnist_raw",
    "synthesize_pool",
]
