"""Resolve a config into data, Flower apps and an output folder, and run it.

``run_experiment(cfg, out)`` is what ``umbra run`` calls: it prepares the data (features
cached), partitions it across simulated organisations with the requested skew and
missing modalities, runs the ServerApp/ClientApp pair on Flower's simulation engine (or
the centralized baseline), and writes ``results.json`` and ``checkpoints/`` into ``out``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from umbra import __version__
from umbra.config import Config, config_fingerprint, validate_config
from umbra.data.dataset import MultimodalData, modality_subsets
from umbra.errors import ConfigError, ResumeError, UmbraError
from umbra.federation.checkpoint import atomic_write_text, load_latest, save_checkpoint
from umbra.federation.client_data import write_federation_data
from umbra.federation.train import Batchable, TrainSettings, evaluate, get_arrays, train_local

__all__ = [
    "PreparedData",
    "client_state_root",
    "final_metrics",
    "prepare_data",
    "privacy_results",
    "resume_config",
    "run_experiment",
]

log = logging.getLogger("umbra")

RoundCallback = Callable[[dict[str, Any]], None]


# --------------------------------------------------------------------------------- data
DataLoader = Callable[[Config], tuple[MultimodalData, MultimodalData]]
DATA_SOURCES: dict[str, DataLoader] = {}


def register_source(name: str, loader: DataLoader) -> None:
    if name in DATA_SOURCES:
        raise ValueError(f"data source {name!r} is already registered")
    DATA_SOURCES[name] = loader


def _fmnist_avt(cfg: Config) -> tuple[MultimodalData, MultimodalData]:
    from umbra.data.sources.avt import load_fmnist_avt

    return load_fmnist_avt(
        n_train=cfg.data.n_train,
        n_test=cfg.data.n_test,
        seed=cfg.run.seed,
        cache_dir=Path(cfg.data.cache_dir) if cfg.data.cache_dir else None,
    )


def _synthetic(cfg: Config) -> tuple[MultimodalData, MultimodalData]:
    from umbra.data.sources.synthetic import make_synthetic

    both = make_synthetic(n=cfg.data.n_train + cfg.data.n_test, seed=cfg.run.seed)
    idx = np.arange(len(both))
    return both.subset(idx[: cfg.data.n_train]), both.subset(idx[cfg.data.n_train :])


register_source("fmnist-avt", _fmnist_avt)
register_source("synthetic", _synthetic)


@dataclass
class PreparedData:
    train: MultimodalData
    test: MultimodalData
    parts: list[np.ndarray]
    masks: list[np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)

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


def _prepare_manifest(cfg: Config) -> PreparedData:
    """A user's manifest: hold out a stratified test set, split by its `client` column
    (or the configured partitioner), scale tabular values (:func:`_scale_tabular`)."""
    from umbra.data.manifest import load_manifest
    from umbra.data.partition import partition

    md = load_manifest(
        Path(str(cfg.data.manifest)),
        on_bad_rows=cfg.data.on_bad_rows,
        cache_dir=Path(cfg.data.cache_dir) if cfg.data.cache_dir else None,
    )
    data = md.data
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
        if n_clients > len(train):
            raise ConfigError(
                f"federation.num_clients = {n_clients} is more than the {len(train)} training records"
            )
        parts = partition(train.labels, n_clients, scheme=cfg.data.partition,
                          alpha=cfg.data.alpha, seed=cfg.run.seed,
                          min_size=min(cfg.data.min_client_size, len(train) // n_clients))  # fmt: skip
    scaling = None
    if "tabular" in train.modalities:
        base = Path(str(cfg.data.manifest)).parent
        train, test, scaling = _scale_tabular(cfg, train, test, parts, md.tabular_columns, base)
    masked = train.mask  # a manifest's empty cells are its missingness: none is added
    extra = {"manifest": str(cfg.data.manifest), "skipped_rows": md.skipped,
             "tabular_standardization": scaling}  # fmt: skip
    return PreparedData(train, test, parts, [masked[i] for i in parts], extra)


def _scale_tabular(
    cfg: Config,
    train: MultimodalData,
    test: MultimodalData,
    parts: list[np.ndarray],
    columns: tuple[str, ...],
    base: Path,
) -> tuple[MultimodalData, MultimodalData, str]:
    """Tabular features as ``data.tabular_stats`` says: ``"identity"`` (as given), public
    statistics (fixed, no record enters them) or ``"per-client"`` (each organisation's own
    mean/std; config validation refuses it under DP, and so does this function)."""
    from umbra.data.manifest import read_tabular_stats, standardize_tabular

    how = cfg.data.tabular_stats
    if how == "identity":
        return train, test, "identity"
    if how == "per-client":
        if cfg.privacy.mode != "none":
            raise ConfigError(
                "data.tabular_stats = 'per-client' is not allowed under differential privacy"
            )
        feats = train.features["tabular"].copy()
        for idx in parts:  # each client's own statistics: no pooling of raw data
            feats[idx] = standardize_tabular(train.subset(idx)).features["tabular"]
        train = MultimodalData({**train.features, "tabular": feats}, train.mask, train.labels,
                               train.modalities, train.class_names, train.ids)  # fmt: skip
        return train, standardize_tabular(test), "per-client"
    moments = read_tabular_stats(how, columns, base=base)
    return standardize_tabular(train, moments), standardize_tabular(test, moments), "public"


def _image_features(data: MultimodalData, cfg: Config) -> MultimodalData:
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
    images become scattering coefficients when ``data.image_features`` says so."""
    prep = _prepare_pixels(cfg)
    prep.train = _image_features(prep.train, cfg)
    prep.test = _image_features(prep.test, cfg)
    return prep


def _prepare_pixels(cfg: Config) -> PreparedData:
    from umbra.data.partition import absent_modalities, apply_missing, partition

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
    n_clients = cfg.federation.num_clients
    if n_clients > len(train):
        raise ConfigError(
            f"federation.num_clients = {n_clients} is more than the {len(train)} training records"
        )
    parts = partition(
        train.labels,
        n_clients,
        scheme=cfg.data.partition,
        alpha=cfg.data.alpha,
        seed=cfg.run.seed,
        min_size=cfg.data.min_client_size,
    )
    # whole modalities first, then per-record missingness (which never empties a record)
    absent = {
        int(c): [train.modality_index(m) for m in mods] for c, mods in cfg.data.absent.items()
    }
    masked = absent_modalities(train.mask, parts, absent) if absent else train.mask.copy()
    rates = np.array([cfg.data.missing.get(m, 0.0) for m in train.modalities])
    masked = apply_missing(masked, rates=rates, seed=cfg.run.seed + 1)
    masks = [masked[idx] for idx in parts]
    return PreparedData(train, test, parts, masks)


# ------------------------------------------------------------------------------ metrics
def final_metrics(model: torch.nn.Module, test: MultimodalData) -> dict[str, Any]:
    """Fused accuracy, macro-F1, accuracy per single modality and per proper subset."""
    mods = test.modalities
    ev = evaluate(model, Batchable.from_data(test), subsets=modality_subsets(mods))  # type: ignore[arg-type]
    subsets: dict[str, float] = ev["subsets"]  # type: ignore[assignment]
    per_modality = {m: subsets[m] for m in mods}
    per_modality["fused"] = float(ev["accuracy"])  # type: ignore[arg-type]
    missing = {k: v for k, v in subsets.items() if k != "+".join(mods) and "+" in k}
    return {
        "accuracy": ev["accuracy"],
        "macro_f1": ev["macro_f1"],
        "loss": ev["loss"],
        "per_modality_accuracy": per_modality,
        "missing_modality_accuracy": missing,
    }


# ------------------------------------------------------------------------------- output
CONFIG_FILE = "config.json"


def resume_config(run_dir: Path, requested: Config | None) -> Config:
    """The config of ``run_dir``; a ``requested`` one must match it (rounds may grow)."""
    path = run_dir / CONFIG_FILE
    if not path.exists():
        raise ResumeError(f"{run_dir} is not an Umbra run folder (no {CONFIG_FILE})")
    try:
        saved = validate_config(json.loads(path.read_text()))
    except (json.JSONDecodeError, ConfigError) as err:
        raise ResumeError(f"{path}: unreadable config ({err})") from None
    latest = load_latest(run_dir / "checkpoints")
    if latest is None:
        raise ResumeError(f"{run_dir} has no completed round to resume from")
    _check_ledger(run_dir, saved)
    if requested is None:
        return saved
    if config_fingerprint(requested) != config_fingerprint(saved):
        raise ResumeError(
            f"{run_dir} was made with another config; resume it without --preset/--set, "
            "or start a new --out folder"
        )
    if requested.federation.rounds < saved.federation.rounds:
        raise ResumeError(
            f"federation.rounds = {requested.federation.rounds} is fewer than the run's "
            f"{saved.federation.rounds}"
        )
    return requested


def _client_summary(cfg: Config, prep: PreparedData) -> dict[str, Any]:
    """``data.clients`` of results.json: under DP only what the organisations reveal
    (zero-out: example-level, the record count; client-level, nothing), since per-client
    label and modality counts are un-noised statistics of the records."""
    clients = prep.client_summary()
    if cfg.privacy.mode == "none":
        return {"clients": clients}
    keep = ("client", "records") if cfg.privacy.mode == "example" else ("client",)
    return {
        "clients": [{k: c[k] for k in keep} for c in clients],
        "clients_withheld": "Per-organisation label and modality counts"
        + (" and record counts" if cfg.privacy.mode == "client" else "")
        + " are withheld under differential privacy (they are not noised).",
    }


def _check_ledger(run_dir: Path, cfg: Config) -> None:
    """Refuse to resume a DP run whose ledger does not cover its checkpoint's rounds."""
    latest = load_latest(run_dir / "checkpoints")
    if cfg.privacy.mode == "none" or latest is None:
        return
    from umbra.privacy.ledger import check_coverage

    p = cfg.privacy
    header = {"unit": "example" if p.mode == "example" else "client", "delta": p.delta,
              "accountant": p.accountant}  # fmt: skip
    check_coverage(run_dir / "ledger.jsonl", through_round=latest.round,
                   digest=latest.state.get("ledger"), header=header)  # fmt: skip


def privacy_results(cfg: Config, run_dir: Path, summary: dict[str, Any] | None) -> dict[str, Any]:
    """``results.json``'s ``privacy`` object: the controller's summary plus ε per observer.

    ``epsilon`` (the budgeted value) is the one for ``epsilon_observer``; ``observers``
    gives the server's, the other organisations' and the model holder's ε, recomputed from
    the ledger (:mod:`umbra.privacy.observers`); ``None`` means no ε holds against it.
    """
    if summary is None:
        return {"mode": "none", "unit": None, "delta": None, "accountant": None,
                "epsilon": None}  # fmt: skip
    from umbra.privacy.accounting import ADJACENCY
    from umbra.privacy.ledger import read_ledger
    from umbra.privacy.observers import observer_epsilons, observer_views

    views = observer_views(unit=cfg.privacy.mode, noise=cfg.privacy.noise,
                           secure=cfg.secure.aggregation)  # fmt: skip
    observers = observer_epsilons(read_ledger(run_dir / "ledger.jsonl"), views)
    return {**summary, "adjacency": ADJACENCY, "secure": cfg.secure.aggregation,
            "epsilon_observer": "model_holder", "observers": observers}  # fmt: skip


def client_state_root(run_dir: Path) -> Path:
    """Where simulated organisations keep their own state (SCAFFOLD's c_i): a client-side
    folder keyed by the run, never inside the server's run folder.

    ``$UMBRA_CLIENT_STATE`` or ``~/.local/state/umbra/clients``, then a hash of the run
    folder's path (so a resumed run finds its clients' state again). On the Deployment
    Engine each SuperNode names its own folder with the node config key ``state-dir``.
    """
    root = os.environ.get("UMBRA_CLIENT_STATE") or str(
        Path.home() / ".local" / "state" / "umbra" / "clients"
    )
    key = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
    out = Path(root).resolve() / key
    if out.is_relative_to(run_dir.resolve()):
        raise ConfigError(f"client state {out} would sit inside the run folder {run_dir}")
    return out


def _settings(cfg: Config) -> TrainSettings:
    fed, mdl = cfg.federation, cfg.model
    return TrainSettings(
        epochs=fed.local_epochs,
        batch_size=fed.batch_size,
        lr=fed.lr,
        momentum=fed.momentum,
        weight_decay=fed.weight_decay,
        proximal_mu=0.0,
        modality_dropout=mdl.modality_dropout,
        align_weight=mdl.align_weight,
        temperature=mdl.temperature,
    )


def _model_spec(cfg: Config, data: MultimodalData) -> dict[str, Any]:
    from umbra.models import ModelSpec

    try:
        spec = ModelSpec.from_data(
            data,
            hidden=cfg.model.hidden,
            embed_dim=cfg.model.embed_dim,
            dropout=cfg.model.dropout,
            encoders=dict(cfg.model.encoders),
        )
    except ValueError as err:
        raise ConfigError(f"model.encoders: {err}") from err
    return spec.to_dict()


def _run_federated(
    cfg: Config,
    run_dir: Path,
    prep: PreparedData,
    model_spec: dict[str, Any],
    on_round: RoundCallback | None,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], dict[str, Any]]:
    from flwr.simulation import run_simulation

    from umbra.federation.client_app import ClientSpec, make_client_app
    from umbra.federation.server_app import ServerSpec, make_server_app

    actions: tuple[str, ...] = ()
    if cfg.secure.aggregation != "none":
        from umbra.secure.plugins import SECURE_MODES  # registers the secure workflows

        actions = SECURE_MODES[cfg.secure.aggregation]
    secure = cfg.secure.model_dump(mode="json")
    client_extra: dict[str, Any] = {"secure": secure}
    server_extra: dict[str, Any] = {"secure": secure}
    if cfg.secure.aggregation == "ckks":
        # Identity keys of threshold CKKS, from the OS CSPRNG (never run.seed): each private
        # key belongs to its node only (the ClientApp picks its own partition's key), the
        # public roster goes to everyone. Kept in memory only, never in the run folder.
        from umbra.secure.identity import generate_identities

        private, roster = generate_identities(range(cfg.federation.num_clients))
        rounds = cfg.federation.rounds
        client_extra.update(
            {"ckks-identity": private, "ckks-roster": roster, "ckks-rounds": rounds}
        )
        server_extra.update({"ckks-roster": roster, "ckks-rounds": rounds})
    fed_dir = run_dir / ".federation"
    write_federation_data(fed_dir / "train", prep.train, prep.parts, prep.masks)
    write_federation_data(
        fed_dir / "test", prep.test, [np.arange(len(prep.test))], [prep.test.mask]
    )
    result: dict[str, Any] = {}

    def finish(arrays: dict[str, np.ndarray], history: list[dict[str, Any]]) -> None:
        result["arrays"], result["history"] = arrays, history

    server_spec = ServerSpec(
        run_dir=str(run_dir),
        test_dir=str(fed_dir / "test"),
        model_spec=model_spec,
        federation=cfg.federation,
        seed=cfg.run.seed,
        eval_every=cfg.run.eval_every,
        train_round=cfg.secure.aggregation,
        extra=server_extra,
        on_round=on_round,
        on_finish=finish,
        privacy=cfg.privacy if cfg.privacy.mode != "none" else None,
    )
    server = make_server_app(server_spec)
    client = make_client_app(
        ClientSpec(
            data_dir=str(fed_dir / "train"),
            state_dir=str(client_state_root(run_dir)),
            model_spec=model_spec,
            settings=_settings(cfg),
            seed=cfg.run.seed,
            threads=cfg.run.threads,
            actions=actions,
            extra=client_extra,
            privacy_unit=cfg.privacy.mode,
        )
    )
    logging.getLogger("flwr").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=cfg.federation.num_clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": cfg.run.num_cpus,
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": "error",
            },
        },
    )
    if "arrays" not in result:
        raise UmbraError("the federation stopped before finishing (see the log above)")
    shutil.rmtree(fed_dir, ignore_errors=True)
    return result["arrays"], result["history"], server_spec.status


def _privacy_line(cfg: Config) -> str:
    """One status line saying what the DP run does each round."""
    p = cfg.privacy
    head = f"differential privacy: ε = {p.epsilon:g} (for the model holder), δ = {p.delta:g} per "
    if p.mode == "client":
        return head + f"client, client-level DP ({p.noise} noise, client rate {p.client_rate:g})"
    batch = p.batch_size or cfg.federation.batch_size
    if p.noise == "distributed":
        return head + (
            f"record, one joint DP-SGD step per round (expected batch {batch} per client; "
            f"each adds a share of the noise under {cfg.secure.aggregation}; "
            "federation.local_epochs does not apply)"
        )
    return head + (
        f"record, DP-SGD in each client ({cfg.federation.local_epochs:g} local epochs "
        f"per round, expected batch {batch})"
    )


def _run_centralized(
    cfg: Config,
    run_dir: Path,
    prep: PreparedData,
    model_spec: dict[str, Any],
    on_round: RoundCallback | None,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], dict[str, Any]]:
    """The same model and training settings on the pooled (still partially missing) data.

    One "round" = ``local_epochs`` epochs over the pooled records, so the centralized run
    sees each record as often as the federated one.
    """
    from umbra.federation.server_app import initial_arrays, load_model

    idx = np.concatenate(prep.parts)
    pooled = prep.train.subset(idx).with_mask(np.concatenate(prep.masks))
    data = Batchable.from_data(pooled)
    test = Batchable.from_data(prep.test)
    ckpt_dir = run_dir / "checkpoints"
    latest = load_latest(ckpt_dir)
    if latest is None:
        arrays, history, start = initial_arrays(model_spec, cfg.run.seed), [], 0
    else:
        arrays, history, start = latest.arrays, list(latest.state["history"]), latest.round
    model = load_model(model_spec, arrays)
    torch.set_num_threads(cfg.run.threads)  # as each client: one thread unless configured
    for rnd in range(start + 1, cfg.federation.rounds + 1):
        t0 = time.perf_counter()
        metrics = train_local(model, data, _settings(cfg), seed=cfg.run.seed * 100003 + rnd)
        ev = evaluate(model, test, subsets=[])
        row = {
            "round": rnd, "clients": 1, "bytes_up": 0, "bytes_down": 0,
            "train_loss": metrics["train-total"], "accuracy": ev["accuracy"],
            "macro_f1": ev["macro_f1"], "loss": ev["loss"],
            "wall_s": time.perf_counter() - t0,
        }  # fmt: skip
        history.append(row)
        arrays = get_arrays(model)
        save_checkpoint(ckpt_dir, server_round=rnd, arrays=arrays, strategy={},
                        state={"history": history})  # fmt: skip
        if on_round is not None:
            on_round(row)
    return arrays, history, {"stopped": None}


def _with_tensorboard(writer: Any, inner: RoundCallback | None) -> RoundCallback:
    """Also write each round's numbers as TensorBoard scalars."""

    def on_round(row: dict[str, Any]) -> None:
        step = int(row["round"])
        for key in (
            "accuracy",
            "macro_f1",
            "loss",
            "train_loss",
            "bytes_up",
            "bytes_down",
            "wall_s",
        ):
            if isinstance(row.get(key), int | float):
                writer.add_scalar(f"round/{key}", row[key], step)
        for group, eps in (row.get("epsilon") or {}).items():
            writer.add_scalar(f"epsilon/{group}", eps, step)
        writer.flush()
        if inner is not None:
            inner(row)

    return on_round


def run_experiment(
    cfg: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    on_round: RoundCallback | None = None,
    on_status: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` into ``run_dir`` (or resume it) and return the results object."""
    from umbra.federation.server_app import load_model

    say = on_status or (lambda s: None)
    t_start = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        if (run_dir / "checkpoints" / "latest.json").exists():
            raise ResumeError(
                f"{run_dir} already holds a run; use --resume {run_dir} or another --out"
            )
        atomic_write_text(run_dir / CONFIG_FILE, json.dumps(cfg.model_dump(mode="json"), indent=2))
    else:
        _check_ledger(run_dir, cfg)
    say(f"preparing data ({cfg.data.source})")
    t0 = time.perf_counter()
    prep = prepare_data(cfg)
    data_s = time.perf_counter() - t0
    model_spec = _model_spec(cfg, prep.train)
    say(
        f"{cfg.federation.mode} training: {cfg.federation.num_clients} clients, "
        f"{cfg.federation.rounds} rounds, strategy {cfg.federation.strategy}"
    )
    if cfg.privacy.mode != "none":
        say(_privacy_line(cfg))
    writer = None
    if cfg.run.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        on_round = _with_tensorboard(writer, on_round)
    t1 = time.perf_counter()
    runner = _run_centralized if cfg.federation.mode == "centralized" else _run_federated
    arrays, history, status = runner(cfg, run_dir, prep, model_spec, on_round)
    train_s = time.perf_counter() - t1
    if writer is not None:
        writer.close()
    model = load_model(model_spec, arrays)
    results = {
        "umbra_version": __version__,
        "config": cfg.model_dump(mode="json"),
        "fingerprint": config_fingerprint(cfg),
        "data": {
            "source": cfg.data.source,
            "modalities": list(prep.train.modalities),
            "class_names": list(prep.train.class_names),
            "n_train": len(prep.train),
            "n_test": len(prep.test),
            **_client_summary(cfg, prep),
            **prep.extra,
        },
        "rounds": history,
        "final": final_metrics(model, prep.test),
        "privacy": privacy_results(cfg, run_dir, status.get("privacy")),
        "stopped": status.get("stopped"),
        "secure_aggregation": cfg.secure.aggregation,
        "bytes": {
            "up_total": int(sum(r["bytes_up"] for r in history)),
            "down_total": int(sum(r["bytes_down"] for r in history)),
        },
        "timing": {
            "data_s": data_s,
            "train_s": train_s,
            "total_s": time.perf_counter() - t_start,
        },
    }
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
    from umbra.report import render_report

    render_report(run_dir)
    from umbra.federation.server_app import check_some_round_completed

    check_some_round_completed(history)  # exit code 2 when nothing was learned
    return results
