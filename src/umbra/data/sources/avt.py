"""``fmnist-avt``: Fashion-MNIST images + spoken attributes + coarse text descriptions.

Built the way AV-MNIST (Vielzeuf et al., "CentralNet: a Multilayer Approach for Multimodal
Fusion", ECCV-W 2018, https://arxiv.org/abs/1808.07275) pairs MNIST with spoken digits,
but with deliberately *partial* side views so that fusion beats every single modality:

* image: the Fashion-MNIST photo (resolves everything, ~0.9 alone);
* text: a short description naming only the coarse group (top, trousers, dress,
  footwear, bag), with distractor words and word dropout; a fraction of records gets a
  generic sentence without any group (text alone: at most 0.5 accuracy);
* audio: a spoken cross-cutting attribute (warm, light, casual, carry) with noise at a
  random SNR (audio alone: at most 0.4).

Text and audio together pin the class except Pullover vs Coat, which the image resolves.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import numpy as np

from umbra.data.cache import atomic_savez, params_key, resolve_cache_dir
from umbra.data.dataset import MultimodalData
from umbra.data.sources.fmnist import CLASS_NAMES, read_fmnist_raw, standardize_images
from umbra.data.sources.speech import speech_features, synthesize_pool
from umbra.data.sources.text import embed_texts

__all__ = [
    "AUDIO_ATTRIBUTES",
    "AVT_MODALITIES",
    "CLASS_ATTRIBUTE",
    "CLASS_GROUP",
    "DEFAULT_AUDIO_SNR_DB",
    "DEFAULT_TEXT_UNINFORMATIVE",
    "TEXT_GROUPS",
    "attribute_phrases",
    "avt_cache_path",
    "load_fmnist_avt",
    "stratified_subset",
    "text_pool",
]

AVT_MODALITIES: tuple[str, ...] = ("image", "audio", "text")
#: :func:`load_fmnist_avt`'s defaults (also what :func:`avt_cache_path` is called with to
#: find a default build again).
DEFAULT_TEXT_UNINFORMATIVE = 0.15
DEFAULT_AUDIO_SNR_DB: tuple[float, float] = (0.0, 20.0)
FORMAT_VERSION = 2

#: Coarse text groups and the class each Fashion-MNIST class belongs to.
TEXT_GROUPS: tuple[str, ...] = ("top", "trousers", "dress", "footwear", "bag")
CLASS_GROUP: tuple[int, ...] = (0, 1, 0, 2, 0, 3, 0, 3, 4, 3)
#: Spoken attributes and the attribute of each class (cuts across the text groups).
AUDIO_ATTRIBUTES: tuple[str, ...] = ("warm", "light", "casual", "carry")
CLASS_ATTRIBUTE: tuple[int, ...] = (1, 2, 0, 1, 0, 1, 2, 2, 3, 0)

_PHRASES: dict[str, tuple[str, ...]] = {
    "warm": (
        "warm",
        "this one keeps you warm",
        "for cold days",
        "good for winter",
        "nice and warm",
        "cosy in the cold",
    ),
    "light": (
        "light",
        "light and airy",
        "for hot days",
        "good for summer",
        "nice and light",
        "a summer piece",
    ),
    "casual": (
        "casual",
        "for every day",
        "relaxed fit",
        "everyday wear",
        "nice and casual",
        "for the weekend",
    ),
    "carry": (
        "carry",
        "to carry your things",
        "holds your stuff",
        "carry it along",
        "for carrying",
        "take it with you",
    ),
}
_CLIPS_PER_ATTRIBUTE = 80

_NOUNS: dict[str, tuple[str, ...]] = {
    "top": (
        "top",
        "upper-body garment",
        "piece for the upper body",
        "top layer",
        "item worn on the torso",
        "upper garment",
        "torso piece",
    ),
    "trousers": (
        "trousers",
        "pants",
        "legwear",
        "slacks",
        "pair of trousers",
        "long pants",
        "bottoms",
    ),
    "dress": (
        "dress",
        "frock",
        "gown",
        "one-piece dress",
        "dress for women",
        "party dress",
        "sundress",
    ),
    "footwear": (
        "footwear",
        "pair of shoes",
        "shoes",
        "something for your feet",
        "pair of footwear",
        "footwear item",
        "shoe",
    ),
    "bag": ("bag", "handbag", "tote", "purse", "shoulder bag", "bag for your things", "carry bag"),
}
_ADJECTIVES = (
    "black",
    "white",
    "grey",
    "navy",
    "red",
    "beige",
    "striped",
    "plain",
    "cotton",
    "soft",
    "new",
    "vintage",
    "classic",
    "stylish",
    "cheap",
)
_TEMPLATES = (
    "a {adj} {noun}",
    "photo of a {adj} {noun}",
    "{adj} {noun} for sale",
    "listing: {noun}, {adj}, {extra}",
    "my {adj} {noun}, {extra}",
    "{noun} in {adj} style",
    "selling this {noun}, {extra}",
    "great {noun}, {adj} and {adj2}",
)
_EXTRAS = (
    "barely used",
    "size medium",
    "free shipping",
    "as new",
    "good condition",
    "best price",
    "limited stock",
    "one size",
    "ships today",
    "no returns",
)
_GENERIC = (
    "great item, fast delivery",
    "see photo for details",
    "as pictured",
    "bought last year",
    "price is negotiable",
    "item from our new collection",
    "check out my other listings",
    "everything must go",
    "quality product",
    "brand new with tags",
    "gift idea",
    "pick up only",
    "very popular this season",
    "limited offer",
    "thanks for looking",
)
_TEXTS_PER_GROUP = 200
_GENERIC_POOL = 100
_WORD_DROPOUT = 0.15
_POOL_SEED = 20_240_601  # fixed: the pools are shared by every data seed (and cache)


def attribute_phrases() -> list[list[str]]:
    """Spoken phrases of each attribute, in ``AUDIO_ATTRIBUTES`` order."""
    return [list(_PHRASES[a]) for a in AUDIO_ATTRIBUTES]


def _dropout(words: list[str], rng: np.random.Generator, keep: str = "") -> list[str]:
    """Drop each word with probability ``_WORD_DROPOUT`` (words containing ``keep`` stay)."""
    kept = [w for w in words if (keep and keep in w) or rng.random() >= _WORD_DROPOUT]
    return kept or [words[int(rng.integers(len(words)))]]


def text_pool() -> tuple[list[str], np.ndarray]:
    """Description strings and their group (``-1`` for generic, group-free sentences).

    ``_TEXTS_PER_GROUP`` distinct strings per group from templates, synonyms, distractor
    words and word dropout, then ``_GENERIC_POOL`` group-free sentences. Deterministic.
    """
    rng = np.random.default_rng(_POOL_SEED)
    texts: list[str] = []
    groups: list[int] = []
    for g, name in enumerate(TEXT_GROUPS):
        seen: set[str] = set()
        while len(seen) < _TEXTS_PER_GROUP:
            tmpl = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
            adj, adj2 = rng.choice(_ADJECTIVES, size=2, replace=False)
            noun = _NOUNS[name][int(rng.integers(len(_NOUNS[name])))]
            s = tmpl.format(
                adj=adj, adj2=adj2, noun="\0", extra=_EXTRAS[int(rng.integers(len(_EXTRAS)))]
            )
            # Word dropout hits the template and distractor words; the group noun stays
            # (group-free texts come from ``text_uninformative``).
            s = " ".join(_dropout(s.split(), rng, keep="\0")).replace("\0", noun)
            if s not in seen:
                seen.add(s)
                texts.append(s)
                groups.append(g)
    seen = set()
    while len(seen) < _GENERIC_POOL:
        a, b = rng.choice(len(_GENERIC), size=2, replace=False)
        s = f"{_GENERIC[a]}, {_GENERIC[b]}"
        if rng.random() < 0.5:
            s = f"{s}, {_ADJECTIVES[int(rng.integers(len(_ADJECTIVES)))]}"
        s = " ".join(_dropout(s.split(), rng))
        if s not in seen:
            seen.add(s)
            texts.append(s)
            groups.append(-1)
    return texts, np.array(groups, dtype=np.int64)


def stratified_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices drawn without replacement with class proportions kept (sorted).

    Each class gets ``floor(n * share)`` records, the remainder goes to the classes with
    the largest fractional parts (ties broken at random).
    """
    labels = np.asarray(labels)
    if not 0 < n <= len(labels):
        raise ValueError(f"n must be in [1, {len(labels)}], got {n}")
    classes, counts = np.unique(labels, return_counts=True)
    quota = n * counts / counts.sum()
    take = np.floor(quota).astype(np.int64)
    frac = quota - take + rng.random(len(classes)) * 1e-9
    take[np.argsort(-frac)[: n - int(take.sum())]] += 1
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=int(k), replace=False)
        for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def _build_split(
    split: str,
    n: int,
    rng: np.random.Generator,
    *,
    cache_dir: Path,
    text_uninformative: float,
    audio_snr_db: tuple[float, float],
) -> dict[str, np.ndarray]:
    images, labels = read_fmnist_raw("train" if split == "train" else "test")
    r_subset, r_text, r_audio = rng.spawn(3)
    idx = stratified_subset(labels, n, r_subset)
    y = labels[idx]

    texts, groups = text_pool()
    emb = embed_texts(texts, cache_dir)
    generic = np.flatnonzero(groups == -1)
    uninformative = r_text.random(n) < text_uninformative
    choice = np.empty(n, dtype=np.int64)
    by_group = [np.flatnonzero(groups == g) for g in range(len(TEXT_GROUPS))]
    group_of = np.asarray(CLASS_GROUP)[y]
    for g, members in enumerate(by_group):
        rows = np.flatnonzero((group_of == g) & ~uninformative)
        choice[rows] = members[r_text.integers(len(members), size=len(rows))]
    rows = np.flatnonzero(uninformative)
    choice[rows] = generic[r_text.integers(len(generic), size=len(rows))]

    pool = synthesize_pool(
        attribute_phrases(), clips_per_class=_CLIPS_PER_ATTRIBUTE, cache_dir=cache_dir
    )
    attr_of = np.asarray(CLASS_ATTRIBUTE)[y]
    clip = np.empty(n, dtype=np.int64)
    for a in range(len(AUDIO_ATTRIBUTES)):
        rows = np.flatnonzero(attr_of == a)
        members = pool.clips_of(a)
        clip[rows] = members[r_audio.integers(len(members), size=len(rows))]
    audio = speech_features(pool, clip, r_audio, snr_db=audio_snr_db)

    return {
        "images": images[idx],
        "labels": y,
        "ids": idx.astype(np.int64),
        "audio": audio.astype(np.float16),
        "text": emb[choice].astype(np.float16),
        "text_choice": choice,
        "clip": clip,
    }


def _to_data(arrays: dict[str, np.ndarray]) -> MultimodalData:
    n = len(arrays["labels"])
    return MultimodalData(
        features={
            "image": standardize_images(arrays["images"]),
            "audio": arrays["audio"].astype(np.float32),
            "text": arrays["text"].astype(np.float32),
        },
        mask=np.ones((n, len(AVT_MODALITIES)), dtype=bool),
        labels=arrays["labels"].astype(np.int64),
        modalities=AVT_MODALITIES,
        class_names=CLASS_NAMES,
        ids=arrays["ids"],
    )


def _load_cached(path: Path) -> tuple[MultimodalData, MultimodalData] | None:
    """The cached build at ``path``; None if absent or unreadable (then it is rebuilt)."""
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            train, test = (
                _to_data({k: z[f"{split}_{k}"] for k in _KEYS}) for split in ("train", "test")
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    return train, test


def avt_cache_path(
    cache_dir: Path,
    *,
    n_train: int,
    n_test: int,
    seed: int,
    text_uninformative: float,
    audio_snr_db: tuple[float, float],
) -> Path:
    """Where :func:`load_fmnist_avt` caches the arrays built for these arguments."""
    params = {
        "format": FORMAT_VERSION,
        "n_train": int(n_train),
        "n_test": int(n_test),
        "seed": int(seed),
        "text_uninformative": float(text_uninformative),
        "audio_snr_db": [float(audio_snr_db[0]), float(audio_snr_db[1])],
    }
    return Path(cache_dir) / "fmnist-avt" / f"avt-{params_key(params)}.npz"


def load_fmnist_avt(
    *,
    n_train: int,
    n_test: int,
    seed: int,
    cache_dir: Path | None = None,
    text_uninformative: float = DEFAULT_TEXT_UNINFORMATIVE,
    audio_snr_db: tuple[float, float] = DEFAULT_AUDIO_SNR_DB,
) -> tuple[MultimodalData, MultimodalData]:
    """The ``fmnist-avt`` train and test sets, every modality present.

    Args:
        n_train: records drawn (stratified by class) from the 60,000 training images.
        n_test: records drawn (stratified) from the 10,000 test images.
        seed: selects the records, their descriptions, clips and augmentation.
        cache_dir: cache folder (default ``$UMBRA_CACHE`` or ``~/.cache/umbra``); the
            built arrays are stored there keyed by every argument, so a second call loads
            in about a second.
        text_uninformative: probability in [0, 1] that a record's text names no group.
        audio_snr_db: (low, high) range of the additive-noise SNR in dB.

    Returns:
        ``(train, test)``; ``ids`` hold the row indices in the original split. Features:
        image ``(1, 28, 28)``, audio ``(1, 32, 32)``, text ``(384,)``, all float32.
    """
    if not 1 <= n_train <= 60_000:
        raise ValueError(f"n_train must be in [1, 60000], got {n_train}")
    if not 1 <= n_test <= 10_000:
        raise ValueError(f"n_test must be in [1, 10000], got {n_test}")
    if not 0.0 <= text_uninformative <= 1.0:
        raise ValueError(f"text_uninformative must be in [0, 1], got {text_uninformative}")
    lo, hi = (float(v) for v in audio_snr_db)
    if not lo <= hi:
        raise ValueError(f"audio_snr_db must be (low, high) with low <= high, got {audio_snr_db}")
    root = resolve_cache_dir(cache_dir)
    path = avt_cache_path(
        root,
        n_train=n_train,
        n_test=n_test,
        seed=seed,
        text_uninformative=text_uninformative,
        audio_snr_db=(lo, hi),
    )
    cached = _load_cached(path)
    if cached is not None:
        return cached

    t0 = time.perf_counter()
    ss = np.random.SeedSequence([int(seed), FORMAT_VERSION])
    rngs = [np.random.default_rng(s) for s in ss.spawn(2)]
    built = {
        split: _build_split(
            split,
            n,
            rng,
            cache_dir=root,
            text_uninformative=text_uninformative,
            audio_snr_db=(lo, hi),
        )
        for split, n, rng in zip(("train", "test"), (n_train, n_test), rngs, strict=True)
    }
    flat = {f"{s}_{k}": v for s, arrays in built.items() for k, v in arrays.items()}
    atomic_savez(path, build_seconds=np.array(time.perf_counter() - t0), **flat)
    return _to_data(built["train"]), _to_data(built["test"])


_KEYS = ("images", "labels", "ids", "audio", "text")
