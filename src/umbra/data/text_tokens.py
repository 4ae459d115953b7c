"""Texts as MiniLM token ids: the text modality's input for the MiniLM encoders.

With ``model.encoders.text = "minilm-lora"`` (or ``"minilm"``) the model reads raw text
through the transformer itself (:mod:`umbra.models.text_lora`) instead of a cached
sentence embedding. Each text becomes ``L = model.text_tokens`` ids of the model's own
WordPiece tokenizer (``[CLS] ... [SEP]``, cut at ``L``, then ``[PAD]`` = 0), stored as
float32 (exact: ids < 30,522 < 2^24) so that they batch like every other modality.

Tokenisation is cached like the embeddings: ``<cache_dir>/text/all-MiniLM-L6-v2-ids<L>.npz``
keyed by the text's sha256 (:func:`umbra.data.sources.text.text_key`), so a run tokenises
only texts it has not seen.
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from umbra.data.cache import atomic_savez, resolve_cache_dir
from umbra.data.dataset import MultimodalData
from umbra.data.sources.text import TEXT_MODEL, text_key
from umbra.errors import DataError

__all__ = ["fmnist_avt_texts", "tokenize_texts", "with_text_tokens"]

_LOCK = threading.Lock()


@cache
def _tokenizer() -> Any:
    """MiniLM's own tokenizer, from the bundled model folder (offline)."""
    from transformers import AutoTokenizer

    from umbra.models.text_lora import minilm_dir

    return AutoTokenizer.from_pretrained(str(minilm_dir()))


def _store_path(cache_dir: Path | None, length: int) -> Path:
    return resolve_cache_dir(cache_dir) / "text" / f"{TEXT_MODEL}-ids{int(length)}.npz"


def _load(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    try:
        with np.load(path) as z:
            return dict(zip((str(k) for k in z["keys"]), z["ids"], strict=True))
    except (OSError, ValueError, KeyError):
        return {}  # a corrupt cache is only a cache miss


def tokenize_texts(texts: list[str], length: int, cache_dir: Path | None = None) -> np.ndarray:
    """Token ids ``(N, length)`` float32 of ``texts``, padded with 0 and cut at ``length``.

    Equal to MiniLM's tokenizer called with ``padding="max_length", truncation=True,
    max_length=length``; texts seen before are read from the store.
    """
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not one string")
    if not 2 <= int(length) <= 256:
        raise ValueError(f"token length must be in [2, 256], got {length}")
    if not texts:
        return np.zeros((0, int(length)), dtype=np.float32)
    path = _store_path(cache_dir, length)
    with _LOCK:
        store = _load(path)
        keys = [text_key(t) for t in texts]
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in store}
        if missing:
            enc = _tokenizer()(
                list(missing.values()),
                padding="max_length",
                truncation=True,
                max_length=int(length),
                return_attention_mask=False,
                return_token_type_ids=False,
            )
            ids = np.asarray(enc["input_ids"], dtype=np.int32)
            if ids.shape != (len(missing), int(length)):
                raise DataError(f"tokenizer returned shape {ids.shape}, expected (n, {length})")
            store.update(zip(missing, ids, strict=True))
            atomic_savez(path, keys=np.array(list(store)), ids=np.stack(list(store.values())))
    return np.stack([store[k] for k in keys]).astype(np.float32)


def with_text_tokens(data: MultimodalData, tokens: np.ndarray) -> MultimodalData:
    """``data`` with its text features replaced by ``tokens`` ``(N, L)`` (rows in order)."""
    if "text" not in data.modalities:
        raise DataError(f"the data has no text modality (it has {list(data.modalities)})")
    if tokens.ndim != 2 or len(tokens) != len(data):
        raise DataError(f"text tokens must be ({len(data)}, L), got {tokens.shape}")
    return MultimodalData({**data.features, "text": tokens.astype(np.float32)}, data.mask,
                          data.labels, data.modalities, data.class_names, data.ids)  # fmt: skip


def fmnist_avt_texts(path: Path) -> tuple[list[str], list[str]]:
    """The description text of each training and test record of an ``fmnist-avt`` build.

    ``path`` is the build's cache file (:func:`umbra.data.sources.avt.avt_cache_path`),
    which records each record's row of :func:`umbra.data.sources.avt.text_pool`.
    """
    from umbra.data.sources.avt import text_pool

    try:
        with np.load(path) as z:
            train, test = z["train_text_choice"], z["test_text_choice"]
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"cannot read the texts of the fmnist-avt build {path}: {err}") from None
    pool, _ = text_pool()
    return [pool[int(i)] for i in train], [pool[int(i)] for i in test]
