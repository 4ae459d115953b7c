"""The data of a run: load the configured source (or a user's manifest), hold out the
test set, split the training records across the simulated organisations with the
requested skew and missing modalities, and size the model for it.

`prepare_data` is what ``umbra run`` and ``umbra data prepare`` call; features are cached
under ``data.cache_dir``. `declared_schema`, `scale_own_tabular` and `image_features` are
what a SuperNode reading its own manifest (`umbra.apps.node_data`) shares with it, so its
records come out exactly as the coordinator would have prepared them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from umbra.config import Config
from umbra.data.dataset import MultimodalData
from umbra.errors import ConfigError

if TYPE_CHECKING:
    from umbra.data.manifest import DataSchema

__all__ = [
    "DATA_SOURCES",
    "PreparedData",
    "declared_schema",
    "image_features",
    "model_spec_for",
    "prepare_data",
    "register_source",
    "scale_own_tabular",
    "text_encoder_options",
    "text_token_length",
]

DataLoader = Callable[[Config], tuple[MultimodalData, MultimodalData]]
DATA_SOURCES: dict[str, DataLoader] = {}


def register_source(name: str, loader: DataLoader) -> None:
    if name in DATA_SOURCES:
        raise ValueError(f"data source {name!r} is already registered")
    DATA_SOURCES[name] = loader


def _fmnist_avt(cfg: Config) -> tuple[MultimodalData, MultimodalData]:
    from umbra.data.sources.avt import avt_cache_path, load_fmnist_avt

    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else None
    kwargs: dict[str, Any] = {"n_train": cfg.data.n_train, "n_test": cfg.data.n_test,
                              "seed": cfg.run.seed}  # fmt: skip
    train, test = load_fmnist_avt(**kwargs, cache_dir=cache_dir)
    length = text_token_length(cfg)
    if length is None:
        return train, test
    # the MiniLM text encoders read the descriptions themselves, as token ids
    from umbra.data.cache import resolve_cache_dir
    from umbra.data.sources.avt import DEFAULT_AUDIO_SNR_DB, DEFAULT_TEXT_UNINFORMATIVE
    from umbra.data.text_tokens import fmnist_avt_texts, tokenize_texts, with_text_tokens

    path = avt_cache_path(resolve_cache_dir(cache_dir), **kwargs,
                          text_uninformative=DEFAULT_TEXT_UNINFORMATIVE,
                          audio_snr_db=DEFAULT_AUDIO_SNR_DB)  # fmt: skip
    train_texts, test_texts = fmnist_avt_texts(path)
    return (
        with_text_tokens(train, tokenize_texts(train_texts, length, cache_dir)),
        with_text_tokens(test, tokenize_texts(test_texts, length, cache_dir)),
    )


def _synthetic(cfg: Config) -> tuple[MultimodalData, MultimodalData]:
    from umbra.data.sources.synthetic import make_synthetic

    both = make_synthetic(n=cfg.data.n_train + cfg.data.n_test, seed=cfg.run.seed)
    idx = np.arange(len(both))
    return both.subset(idx[: cfg.data.n_train]), both.subset(idx[cfg.data.n_train :])


def text_token_length(cfg: Config) -> int | None:
    """``model.text_tokens`` where the text encoder reads token ids (the MiniLM encoders of
    :mod:`umbra.models.text_lora`), None where it reads a sentence embedding."""
    from umbra.models.text_lora import TOKEN_ENCODERS

    return cfg.model.text_tokens if cfg.model.encoders.get("text") in TOKEN_ENCODERS else None


def text_encoder_options(cfg: Config) -> dict[str, dict[str, Any]]:
    """The ``encoder_options`` of the model spec: LoRA's settings for ``"minilm-lora"``,
    checked against the model (a rank < 1 or a target module MiniLM lacks is a
    ConfigError)."""
    if cfg.model.encoders.get("text") != "minilm-lora":
        return {}
    from umbra.models.text_lora import LoraSettings

    m = cfg.model
    try:
        lora = LoraSettings(rank=m.lora_rank, alpha=m.lora_alpha, targets=tuple(m.lora_targets))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return {"text": {"rank": lora.rank, "alpha": lora.alpha, "targets": list(lora.targets)}}


register_source("fmnist-avt", _fmnist_avt)
register_source("synthetic", _synthetic)


@dataclass
class PreparedData:
    """The training records, the held-out test set, each client's record indices into
    ``train`` and presence masks; ``extra`` goes into results.json.

    ``source_records``: for a manifest with a ``client`` column, the position of each
    training record among the manifest's records (``umbra deploy local`` then writes each
    organisation its own manifest); None otherwise.
    """

    train: MultimodalData
    test: MultimodalData
    parts: list[np.ndarray]
    masks: list[np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)
    source_records: np.ndarray | None = None

    def client_summary(self) -> list[dict[str, Any]]:
        out = []
        for i, (idx, mask) in enumerate(zip(self.parts, self.masks, strict=True)):
            labels = self.train.labels[idx]
            out.append(
                {
                    "client": i,
                    "records": len(idx),
                    "per_modality": {
                        m: int(mask[:, j].sum()) for j, m in enumerate(self.train.modalities)
                    },
                    "labels": np.bincount(labels, minlength=self.train.num_classes).tolist(),
                }
            )
        return out


def _stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask holding out ``fraction`` of each label's records (at least one)."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 else 0
        test[rng.choice(idx, size=k, replace=False)] = True
    return test


def declared_schema(cfg: Config) -> DataSchema | None:
    """The schema the run config declares (``data.labels``, ``data.modalities``,
    ``data.tabular_columns``), or None where it declares none."""
    from umbra.data.manifest import DataSchema

    if not cfg.data.labels:
        return None
    return DataSchema(tuple(cfg.data.labels), tuple(cfg.data.modalities),
                      tuple(cfg.data.tabular_columns))  # fmt: skip


def _prepare_manifest(cfg: Config) -> PreparedData:
    """A user's manifest: hold out a stratified test set, split by its `client` column
    (or the configured partitioner), scale tabular values (:func:`_scale_tabular`); fitted
    to the declared schema (:func:`declared_schema`) where the config has one."""
    from umbra.data.manifest import check_manifest, fit_to_schema, load_manifest

    path = Path(str(cfg.data.manifest))
    schema = declared_schema(cfg)
    if schema is not None:
        check_manifest(path, schema)
    md = load_manifest(
        path,
        on_bad_rows=cfg.data.on_bad_rows,
        text_tokens=text_token_length(cfg),
        cache_dir=Path(cfg.data.cache_dir) if cfg.data.cache_dir else None,
        label_names=None if schema is None else schema.labels,
    )
    data, columns = md.data, md.tabular_columns
    if schema is not None:
        data, columns = fit_to_schema(data, columns, schema), schema.tabular_columns
    is_test = _stratified_holdout(data.labels, cfg.data.test_fraction, cfg.run.seed)
    train_idx, test_idx = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    train, test = data.subset(train_idx), data.subset(test_idx)
    n_clients = cfg.federation.num_clients
    if md.clients is not None:
        names = sorted(set(md.clients))
        if len(names) != n_clients:
            raise ConfigError(
                f"the manifest names {len(names)} clients ({', '.join(names[:5])}"
                f"{'...' if len(names) > 5 else ''}); set federation.num_clients = {len(names)}"
            )
        owner = np.array([names.index(c) for c in md.clients])[train_idx]
        parts = [np.flatnonzero(owner == i) for i in range(n_clients)]
        empty = [names[i] for i, p in enumerate(parts) if len(p) == 0]
        if empty:
            raise ConfigError(f"after holding out the test set, client(s) {empty} hold no records")
    else:
        parts = client_parts(cfg, train.labels,
                             min_size=min(cfg.data.min_client_size, len(train) // n_clients))  # fmt: skip
    scaling = None
    if "tabular" in train.modalities:
        train, test, scaling = _scale_tabular(cfg, train, test, parts, columns, path.parent)
    masked = train.mask  # a manifest's empty cells are its missingness: none is added
    extra = {"manifest": str(cfg.data.manifest), "skipped_rows": md.skipped,
             "tabular_standardization": scaling}  # fmt: skip
    sources = None if md.clients is None else md.source_records[train_idx]
    return PreparedData(train, test, parts, [masked[i] for i in parts], extra, sources)


def scale_own_tabular(
    cfg: Config, data: MultimodalData, columns: tuple[str, ...], base: Path
) -> MultimodalData:
    """One organisation's records with tabular values as ``data.tabular_stats`` says:
    ``"identity"`` (as given), public statistics (``{name: [mean, std]}`` or a JSON file
    relative to ``base``; no record enters them) or ``"per-client"`` (its own mean/std;
    refused under DP: it makes every record depend on the others)."""
    from umbra.data.manifest import read_tabular_stats, standardize_tabular

    how = cfg.data.tabular_stats
    if "tabular" not in data.modalities or how == "identity":
        return data
    if how == "per-client":
        if cfg.privacy.mode != "none":
            raise ConfigError(
                "data.tabular_stats = 'per-client' is not allowed under differential privacy"
            )
        return standardize_tabular(data)
    return standardize_tabular(data, read_tabular_stats(how, columns, base=base))


def _scale_tabular(
    cfg: Config,
    train: MultimodalData,
    test: MultimodalData,
    parts: list[np.ndarray],
    columns: tuple[str, ...],
    base: Path,
) -> tuple[MultimodalData, MultimodalData, str]:
    """Training and test records scaled as :func:`scale_own_tabular` scales one
    organisation's: per client for ``"per-client"`` (no pooling of raw data), the
    coordinator's test set by its own statistics."""
    how = cfg.data.tabular_stats
    if how == "identity":
        return train, test, "identity"
    if how == "per-client":
        feats = train.features["tabular"].copy()
        for idx in parts:  # each client's own statistics: no pooling of raw data
            own = scale_own_tabular(cfg, train.subset(idx), columns, base)
            feats[idx] = own.features["tabular"]
        train = MultimodalData({**train.features, "tabular": feats}, train.mask, train.labels,
                               train.modalities, train.class_names, train.ids)  # fmt: skip
        return train, scale_own_tabular(cfg, test, columns, base), "per-client"
    scaled = scale_own_tabular(cfg, train, columns, base)
    return scaled, scale_own_tabular(cfg, test, columns, base), "public"


def image_features(data: MultimodalData, cfg: Config) -> MultimodalData:
    """``data`` with its images replaced by what ``data.image_features`` asks for."""
    if cfg.data.image_features == "pixels":
        return data
    from umbra.data.scattering import scattering_features

    if "image" not in data.modalities:
        raise ConfigError(
            f"data.image_features = {cfg.data.image_features!r} needs an image modality; "
            f"the data has {list(data.modalities)}"
        )
    try:
        feats = scattering_features(data.features["image"], cfg.data.cache_dir)
    except ValueError as err:
        raise ConfigError(f"data.image_features = 'scattering': {err}") from err
    return MultimodalData({**data.features, "image": feats}, data.mask, data.labels,
                          data.modalities, data.class_names, data.ids)  # fmt: skip


def prepare_data(cfg: Config) -> PreparedData:
    """Load the data set, split it across clients and apply the missing-modality pattern;
    images become scattering coefficients when ``data.image_features`` says so, texts token
    ids when the text encoder reads them (:func:`text_token_length`)."""
    text_encoder_options(cfg)  # LoRA's settings checked before any data is read
    prep = _prepare_pixels(cfg)
    length = text_token_length(cfg)
    text = prep.train.features.get("text")
    if length is not None and text is not None and text.shape[1:] != (length,):
        raise ConfigError(
            f"model.encoders.text = {cfg.model.encoders['text']!r} reads raw text; data"
            f" source {cfg.data.source!r} has none (use fmnist-avt or a manifest with text)"
        )
    prep.train = image_features(prep.train, cfg)
    prep.test = image_features(prep.test, cfg)
    return prep


def client_parts(
    cfg: Config, labels: np.ndarray, *, min_size: int | None = None
) -> list[np.ndarray]:
    """Record indices per client: ``labels`` split over ``federation.num_clients`` by
    ``data.partition`` (``data.alpha``, ``run.seed``; each client at least ``min_size``
    records, default ``data.min_client_size``)."""
    from umbra.data.partition import partition

    n_clients = cfg.federation.num_clients
    if n_clients > len(labels):
        raise ConfigError(
            f"federation.num_clients = {n_clients} is more than the {len(labels)} training records"
        )
    return partition(
        labels,
        n_clients,
        scheme=cfg.data.partition,
        alpha=cfg.data.alpha,
        seed=cfg.run.seed,
        min_size=cfg.data.min_client_size if min_size is None else min_size,
    )


def _prepare_pixels(cfg: Config) -> PreparedData:
    from umbra.data.partition import absent_modalities, apply_missing

    if cfg.data.source == "manifest":
        return _prepare_manifest(cfg)
    train, test = DATA_SOURCES[cfg.data.source](cfg)
    unknown = sorted(set(cfg.data.missing) - set(train.modalities))
    if unknown:
        raise ConfigError(
            f"data.missing names {unknown}, but the data has {list(train.modalities)}"
        )
    for c, mods in cfg.data.absent.items():
        bad = sorted(set(mods) - set(train.modalities))
        if bad:
            raise ConfigError(f"data.absent.{c} names {bad}, not in {list(train.modalities)}")
    parts = client_parts(cfg, train.labels)
    # whole modalities first, then per-record missingness (which never empties a record)
    absent = {
        int(c): [train.modality_index(m) for m in mods] for c, mods in cfg.data.absent.items()
    }
    masked = absent_modalities(train.mask, parts, absent) if absent else train.mask.copy()
    rates = np.array([cfg.data.missing.get(m, 0.0) for m in train.modalities])
    masked = apply_missing(masked, rates=rates, seed=cfg.run.seed + 1)
    masks = [masked[idx] for idx in parts]
    return PreparedData(train, test, parts, masks)


def model_spec_for(cfg: Config, data: MultimodalData) -> dict[str, Any]:
    from umbra.models import ModelSpec

    try:
        spec = ModelSpec.from_data(
            data,
            hidden=cfg.model.hidden,
            embed_dim=cfg.model.embed_dim,
            dropout=cfg.model.dropout,
            encoders=dict(cfg.model.encoders),
            encoder_options=text_encoder_options(cfg),
        )
    except ValueError as err:
        raise ConfigError(f"model.encoders: {err}") from err
    return spec.to_dict()
