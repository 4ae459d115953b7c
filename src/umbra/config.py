"""Typed configuration: pydantic models, TOML presets, ``--set section.key=value`` overrides.

Every field has a default and a one-line description; unknown keys and out-of-range values
raise :class:`~umbra.errors.ConfigError` with a one-line message naming the key and what is
allowed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from umbra.errors import ConfigError

__all__ = [
    "MANIFEST_ENCODERS",
    "AttackConfig",
    "AuditConfig",
    "CompressionConfig",
    "Config",
    "DataConfig",
    "FederationConfig",
    "HeteroConfig",
    "ModelConfig",
    "OrganisationModel",
    "PrivacyConfig",
    "ResolvedConfig",
    "RunConfig",
    "SecureConfig",
    "SynthConfig",
    "VerticalConfig",
    "apply_override",
    "available_presets",
    "config_fingerprint",
    "load_config",
    "resolve_config",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    source: Literal["fmnist-avt", "synthetic", "manifest"] = Field(
        "fmnist-avt",
        description="data set: the embedded fmnist-avt, a tiny synthetic one, or a manifest",
    )
    manifest: str | None = Field(
        None,
        description="path to a CSV/Parquet manifest (docs/data.md); giving one selects "
        "source = 'manifest' unless data.source is set explicitly",
    )
    on_bad_rows: Literal["error", "skip"] = Field(
        "error", description="manifest rows that fail validation: stop with a report, or skip them"
    )
    test_fraction: float = Field(
        0.2, gt=0, lt=0.9, description="manifest: share of records held out for the test set"
    )
    n_train: int = Field(
        12000, ge=10, le=60000, description="training records drawn from the 60k split"
    )
    n_test: int = Field(
        2000, ge=10, le=10000, description="held-out test records from the t10k split"
    )
    partition: Literal["iid", "dirichlet", "quantity"] = Field(
        "dirichlet", description="how records are split across clients"
    )
    alpha: float = Field(
        0.5, gt=0, description="Dirichlet concentration (smaller = more skew), > 0"
    )
    min_client_size: int = Field(10, ge=1, description="fewest records any client may hold")
    missing: dict[str, float] = Field(
        default_factory=lambda: {"image": 0.3, "audio": 0.3, "text": 0.3},
        description="per-record probability that each modality is missing, in [0, 1]",
    )
    absent: dict[str, list[str]] = Field(
        default_factory=dict,
        description='whole modalities absent at chosen clients, e.g. {"0" = ["audio"]}',
    )
    cache_dir: str | None = Field(
        None, description="feature cache (default $UMBRA_CACHE or ~/.cache/umbra)"
    )
    image_features: Literal["pixels", "scattering"] = Field(
        "pixels",
        description="images as pixels, or as fixed wavelet-scattering coefficients (kymatio, "
        "J=2, L=8; computed once and cached): far better under DP-SGD",
    )

    tabular_stats: str | dict[str, list[float]] = Field(
        "identity",
        description="manifest tab: columns: 'identity' (values used as given), public "
        "statistics {name = [mean, std]} or a JSON file of them, or 'per-client' (each "
        "organisation's own; not under DP: it makes every record depend on the others)",
    )

    # The schema a federation agrees on (docs/deployment.md, "Each organisation's data"):
    # public, no record of anyone's in it; ``umbra data schema MANIFEST`` prints it.
    labels: list[str] = Field(
        default_factory=list,
        description="manifest: the class names in class-index order, shared by every "
        "organisation (empty: the labels found in the manifest, sorted)",
    )
    modalities: list[str] = Field(
        default_factory=list,
        description="manifest: the modalities of the federation's model (empty: the "
        "manifest's columns); a record or organisation without one holds it as missing",
    )
    tabular_columns: list[str] = Field(
        default_factory=list,
        description="manifest: the tab: columns in feature order, when modalities names tabular",
    )

    @model_validator(mode="before")
    @classmethod
    def _manifest_selects_source(cls, data: Any) -> Any:
        # A manifest without a source means the user's own data: never fall back to the default.
        if isinstance(data, dict) and data.get("manifest") and "source" not in data:
            return {**data, "source": "manifest"}
        return data

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.manifest and self.source != "manifest":
            raise ValueError(
                f"data.manifest = {self.manifest!r} conflicts with data.source = "
                f"{self.source!r}: the manifest would be ignored; drop data.source or set it "
                "to 'manifest'"
            )
        if isinstance(self.tabular_stats, dict):
            for col, ms in self.tabular_stats.items():
                if len(ms) != 2 or not ms[1] > 0:
                    raise ValueError(
                        f"data.tabular_stats.{col} must be [mean, std] with std > 0, got {ms}"
                    )
        for m, r in self.missing.items():
            if not 0.0 <= r <= 1.0:
                raise ValueError(f"data.missing.{m} = {r} is outside [0, 1]")
        for c, mods in self.absent.items():
            if not c.isdigit():
                raise ValueError(f'data.absent key {c!r} must be a client index such as "0"')
            if not mods:
                raise ValueError(f"data.absent.{c} is empty")
        if self.source == "manifest" and not self.manifest:
            raise ValueError("data.source = 'manifest' needs data.manifest = <path>")
        self._check_schema()
        return self

    def _check_schema(self) -> None:
        from umbra.data.dataset import MODALITIES

        declared = [k for k in ("labels", "modalities", "tabular_columns") if getattr(self, k)]
        if declared and self.source != "manifest":
            raise ValueError(f"data.{declared[0]} describes a manifest; data.source = "
                             f"{self.source!r}")  # fmt: skip
        if bool(self.labels) != bool(self.modalities):
            raise ValueError("data.labels and data.modalities come together: set both "
                             "(umbra data schema MANIFEST prints them) or neither")  # fmt: skip
        for key in ("labels", "modalities", "tabular_columns"):
            values = getattr(self, key)
            if len(set(values)) != len(values) or not all(values):
                raise ValueError(f"data.{key} must be distinct non-empty names, got {values}")
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown:
            raise ValueError(f"data.modalities names {unknown}; known: {list(MODALITIES)}")
        if ("tabular" in self.modalities) != bool(self.tabular_columns):
            raise ValueError("data.tabular_columns lists the tab: columns exactly when "
                             "data.modalities names tabular")  # fmt: skip
        bad = [c for c in self.tabular_columns if not c.startswith("tab:") or c == "tab:"]
        if bad:
            raise ValueError(f"data.tabular_columns {bad}: write each as in the manifest, "
                             "tab:<name>")  # fmt: skip


class ModelConfig(_Section):
    hidden: int = Field(128, ge=8, le=4096, description="width of each encoder's output")
    embed_dim: int = Field(64, ge=4, le=2048, description="dimension of the shared embedding space")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout in encoders and head")
    modality_dropout: float = Field(
        0.2, ge=0, lt=1, description="training-time probability of hiding a present modality"
    )
    align_weight: float = Field(0.1, ge=0, description="weight of the cross-modal InfoNCE loss")
    temperature: float = Field(0.1, gt=0, description="InfoNCE temperature")
    encoders: dict[str, str] = Field(
        default_factory=dict,
        description="modality -> registered encoder name where it differs from the modality's "
        'own (e.g. audio = "spectral-stats": small, suits DP-SGD on fmnist-avt); a manifest '
        "run on a preset uses MANIFEST_ENCODERS for the modalities not set with --set",
    )
    # The text modality on raw tokens: encoders.text = "minilm-lora" (pretrained MiniLM with
    # LoRA adapters; only they, the projections and the head travel) or "minilm" (fully
    # fine-tuned). docs/lora.md
    text_tokens: int = Field(
        32, ge=2, le=256, description="token ids per text for the MiniLM encoders (cut/padded)"
    )
    lora_rank: int = Field(8, ge=1, le=384, description="LoRA rank r of the adapters")
    lora_alpha: int = Field(16, ge=1, le=4096, description="LoRA scale: the update is alpha/r·B·A")
    lora_targets: list[str] = Field(
        default_factory=lambda: ["query", "value"],
        description="MiniLM layers that get adapters (query, key, value, attention.output.dense, "
        "intermediate.dense, output.dense, or a full dotted name)",
    )


class OrganisationModel(_Section):
    """One organisation's own choice of architecture, overriding the ``model`` section."""

    encoders: dict[str, str] = Field(
        default_factory=dict,
        description="modality -> registered encoder name, over model.encoders for this "
        'organisation (e.g. image = "image": the conv encoder)',
    )
    hidden: int | None = Field(
        None, ge=8, le=4096, description="this organisation's encoder width (default model.hidden)"
    )
    embed_dim: int | None = Field(
        None,
        ge=4,
        le=2048,
        description="shared embedding size; organisations are joined in that space, so it "
        "must equal model.embed_dim",
    )


class HeteroConfig(_Section):
    """Organisations with different architectures, joined by averaging what matches and
    FedDF ensemble distillation on an unlabeled transfer set (docs/heterogeneous.md)."""

    organisations: dict[str, OrganisationModel] = Field(
        default_factory=dict,
        description='client index -> its own architecture, e.g. {"4" = {encoders = {image '
        '= "image"}}}; clients not named use the model section',
    )
    transfer: str = Field(
        "held-out",
        description="the unlabeled transfer set: 'held-out' (training records of the source "
        "kept from every organisation) or the path of a manifest (e.g. synthetic data)",
    )
    transfer_records: int = Field(
        2000, ge=10, le=60000, description="held-out: records kept from the organisations"
    )
    distill_steps: int = Field(
        50, ge=0, le=100000, description="server distillation steps per round (0: off)"
    )
    distill_batch: int = Field(128, ge=2, le=8192, description="transfer records per step")
    distill_lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate of distillation")
    distill_temperature: float = Field(
        1.0, gt=0, le=100, description="softmax temperature of teacher and student"
    )
    teachers: Literal["local", "averaged"] = Field(
        "local",
        description="the ensemble distilled into each architecture: the round's local models "
        "(FedDF) or every architecture's averaged model",
    )

    @model_validator(mode="after")
    def _check(self) -> HeteroConfig:
        for c in self.organisations:
            if not c.isdigit():
                raise ValueError(
                    f'hetero.organisations key {c!r} must be a client index such as "0"'
                )
        return self


class FederationConfig(_Section):
    mode: Literal["federated", "centralized", "async"] = Field(
        "federated",
        description="federated on Flower (synchronous rounds), async (FedBuff: buffered "
        "asynchronous aggregation, docs/async.md), or a centralized baseline on pooled data",
    )
    layout: Literal["horizontal", "vertical"] = Field(
        "horizontal",
        description="horizontal: organisations hold all modalities of their own records; "
        "vertical: parties hold different modalities of shared entities (section vertical)",
    )
    strategy: Literal["fedavg", "fedavgm", "fedprox", "fedadam", "scaffold"] = Field(
        "fedavg", description="server strategy"
    )
    modality_aware: bool = Field(
        True, description="average each modality's encoder only over clients holding it"
    )
    num_clients: int = Field(8, ge=1, le=1000, description="simulated organisations")
    rounds: int = Field(10, ge=1, le=10000, description="federated rounds")
    fraction_train: float = Field(1.0, gt=0, le=1, description="fraction of clients per round")
    local_epochs: float = Field(1.0, gt=0, le=100, description="local epochs per round")
    batch_size: int = Field(64, ge=1, le=8192, description="local batch size")
    lr: float = Field(0.05, gt=0, le=10, description="client learning rate (SGD)")
    momentum: float = Field(0.9, ge=0, lt=1, description="client SGD momentum")
    weight_decay: float = Field(0.0, ge=0, description="client L2 weight decay")
    proximal_mu: float = Field(0.01, ge=0, description="FedProx proximal weight μ")
    server_lr: float = Field(0.01, gt=0, description="FedAdam server learning rate η")
    server_beta1: float = Field(0.9, ge=0, lt=1, description="FedAdam β1")
    server_beta2: float = Field(0.99, ge=0, lt=1, description="FedAdam β2")
    server_tau: float = Field(1e-3, gt=0, description="FedAdam adaptivity τ")
    scaffold_server_lr: float = Field(1.0, gt=0, description="SCAFFOLD global step size η_g")
    fedavgm_server_lr: float = Field(1.0, gt=0, description="FedAvgM server learning rate")
    fedavgm_momentum: float = Field(0.9, ge=0, lt=1, description="FedAvgM server momentum β")
    reply_timeout_s: float = Field(
        600.0,
        gt=0,
        le=7 * 24 * 3600,
        description="seconds the server waits for the replies of one message exchange; a "
        "client silent that long counts as dropped in that round",
    )
    aggregator: Literal[
        "mean", "median", "trimmed-mean", "krum", "multi-krum", "bulyan", "centered-clip"
    ] = Field(
        "mean",
        description="how the server combines the updates: the modality-aware weighted mean, "
        "or a Byzantine-robust rule per modality group (docs/robustness.md); not with "
        "secure aggregation, client-level DP or SCAFFOLD",
    )
    trim_fraction: float = Field(
        0.2, ge=0, lt=0.5, description="trimmed-mean: share of values cut at each end"
    )
    byzantine: int = Field(
        0,
        ge=0,
        description="krum, multi-krum, bulyan: the assumed number of attackers f; "
        "reputation: the f clients with the lowest mean cosine are left out",
    )
    clip_updates: float | str | None = Field(
        None,
        description="server-side L2 bound on each client's update (model minus global) "
        "before aggregation; 'median': the round's median update norm; None: off",
    )
    detect: bool = Field(
        False,
        description="score every update (norm, cosine, per-modality norms) and flag "
        "outliers per round (median + k·MAD)",
    )
    detect_k: float = Field(3.0, gt=0, description="detect: robust deviations that flag")
    reputation: bool = Field(
        False,
        description="exclude clients whose running mean cosine to the round's median update "
        "(or mean log-norm ratio) is a robust outlier over the clients (docs/robustness.md)",
    )
    reputation_k: float = Field(3.0, gt=0, description="reputation: robust deviations that exclude")
    reputation_warmup: int = Field(
        3, ge=1, description="reputation: rounds a client is observed before it can be excluded"
    )
    reputation_min_cosine: float | None = Field(
        None,
        ge=-1,
        lt=1,
        description="reputation: also exclude a mean cosine at most this (FLTrust's rule; "
        "None: off, as honest mean cosines tend to 0 over a long run)",
    )
    reputation_max_response: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="reputation: also exclude a mean response (cosine of the update's change "
        "to the server's last step) at least this; honest descent responds negatively, a "
        "sign-flipper positively (0; None: off)",
    )
    reputation_cosine_outliers: bool = Field(
        True,
        description="reputation: exclude clients whose mean cosine is a robust outlier "
        "(off: leave heterogeneous honest organisations in, judge by response and norm)",
    )
    centered_clip_tau: float | Literal["median"] = Field(
        "median",
        description="centered-clip: radius τ of each clipped deviation from the previous "
        "aggregate (L2, per parameter group), or 'median': the median distance, per iteration",
    )
    centered_clip_iterations: int = Field(
        1, ge=1, le=10, description="centered-clip: clipping iterations l per round"
    )
    centered_clip_beta: float = Field(
        0.0,
        description="centered-clip: momentum β of each client's updates, in [0, 1) (0: the "
        "updates themselves; the paper's 0.9 lags the model's step, docs/robustness.md)",
    )
    bucket_size: int = Field(
        1,
        description="average random buckets of this many updates before the robust rule "
        "(1: off; at most num_clients)",
    )
    # mode = "async" (FedBuff, docs/async.md): `rounds` counts buffer releases; client speeds
    # drive a virtual clock (compute time = nominal cost x speed factor)
    buffer_size: int | None = Field(
        None, ge=1, description="async: updates per buffer release K (None: every client)"
    )
    max_staleness: int = Field(
        100, description="async: an update staler than this many releases is discarded (> 0)"
    )
    staleness: Literal["sqrt", "constant"] = Field(
        "sqrt",
        description="async: staleness weight s(τ), 'sqrt' = 1/sqrt(1+τ) (FedBuff) or 'constant' = 1",
    )
    speed_sigma: float = Field(
        0.0, ge=0, le=5, description="async: log-normal σ of the clients' compute-time factors"
    )
    straggler_fraction: float = Field(
        0.0, ge=0, le=1, description="async: share of clients slowed by straggler_slowdown"
    )
    straggler_slowdown: float = Field(
        10.0, ge=1, le=1000, description="async: compute-time factor of a straggler"
    )

    @model_validator(mode="after")
    def _check_async(self) -> FederationConfig:
        if self.max_staleness <= 0:
            raise ValueError(f"federation.max_staleness must be > 0, got {self.max_staleness}")
        if self.buffer_size is not None and self.buffer_size > self.num_clients:
            raise ValueError(
                f"federation.buffer_size = {self.buffer_size} exceeds federation.num_clients "
                f"= {self.num_clients}: a buffer holds at most one update per client"
            )
        return self

    @model_validator(mode="after")
    def _check_defence(self) -> FederationConfig:
        clip = self.clip_updates
        if (isinstance(clip, str) and clip != "median") or (
            isinstance(clip, float) and not clip > 0
        ):
            raise ValueError(f"federation.clip_updates must be > 0 or 'median', got {clip!r}")
        tau = self.centered_clip_tau
        if isinstance(tau, float) and not tau > 0:
            raise ValueError(f"federation.centered_clip_tau must be > 0 or 'median', got {tau}")
        if not 0 <= self.centered_clip_beta < 1:
            raise ValueError(
                f"federation.centered_clip_beta must be in [0, 1), got {self.centered_clip_beta}"
            )
        if not 1 <= self.bucket_size <= self.num_clients:
            raise ValueError(
                f"federation.bucket_size must be in [1, num_clients = {self.num_clients}], "
                f"got {self.bucket_size}"
            )
        if self.bucket_size > 1 and self.aggregator == "mean":
            raise ValueError(
                "federation.bucket_size > 1 needs a robust federation.aggregator: the "
                "weighted mean of bucket means is the mean"
            )
        defended = (
            self.aggregator != "mean"
            or self.clip_updates is not None
            or self.detect
            or self.reputation
        )
        if defended and self.strategy == "scaffold":
            raise ValueError(
                "federation.strategy = 'scaffold' cannot use robust aggregation, update "
                "clipping, screening or reputation: its control variates assume the plain mean"
            )
        if self.aggregator in ("krum", "multi-krum", "bulyan"):
            sampled = max(1, round(self.fraction_train * self.num_clients))
            n = -(-sampled // self.bucket_size)  # f attackers can spoil f buckets
            need = (4 if self.aggregator == "bulyan" else 2) * self.byzantine + 3
            if n < need:
                raise ValueError(
                    f"federation.byzantine = {self.byzantine} is too large for "
                    f"{self.aggregator} with {n} "
                    + ("sampled clients" if self.bucket_size == 1 else "buckets")
                    + f" (needs at least {need})"
                )
        return self


class PrivacyConfig(_Section):
    mode: Literal["none", "example", "client"] = Field(
        "none",
        description="differential privacy unit: none, example (DP-SGD in each client) or client",
    )
    epsilon: float = Field(3.0, gt=0, description="total ε budget (all parameter groups composed)")
    delta: float = Field(1e-5, gt=0, lt=1, description="δ; must also be ≤ 1 / (records per client)")
    accountant: Literal["pld", "rdp"] = Field("pld", description="dp-accounting accountant")
    weights: dict[str, float] | None = Field(
        None,
        description="example DP: share of the privacy loss per group (modalities and 'shared')",
    )
    targets: dict[str, float] | None = Field(
        None, description="example DP: explicit ε cap per group (instead of weights)"
    )
    clip_norm: float = Field(
        1.0, gt=0, description="L2 clip per record (example) or per update (client)"
    )
    clip_norms: dict[str, float] = Field(
        default_factory=dict, description="example DP: per-group clip overriding clip_norm"
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="example DP: expected Poisson batch of DP-SGD (default federation.batch_size)",
    )
    lr: float | None = Field(
        None, gt=0, description="example DP: client learning rate under DP-SGD"
    )
    momentum: float | None = Field(
        None, ge=0, lt=1, description="example DP: client SGD momentum under DP-SGD"
    )
    noise_multiplier: float | None = Field(
        None,
        ge=0,
        description="client DP: fixed σ (default: calibrated to ε for the planned rounds)",
    )
    noise: Literal["central", "distributed"] = Field(
        "central",
        description="central: client DP noise added by the server, example DP noise by each "
        "client's own DP-SGD; distributed (needs secure aggregation): shared out among the "
        "clients so only the sum carries the full noise (example DP: one joint DP-SGD step "
        "per round)",
    )
    client_rate: float = Field(
        1.0, gt=0, le=1, description="client DP: Poisson rate q at which clients join a round"
    )

    @model_validator(mode="after")
    def _check(self) -> PrivacyConfig:
        if self.weights is not None and self.targets is not None:
            raise ValueError("set privacy.weights or privacy.targets, not both")
        for name, table in (("weights", self.weights), ("targets", self.targets),
                            ("clip_norms", self.clip_norms)):  # fmt: skip
            for g, v in (table or {}).items():
                if not v > 0:
                    raise ValueError(f"privacy.{name}.{g} = {v} must be > 0")
        if self.mode != "none" and self.noise_multiplier == 0:
            raise ValueError(
                "privacy.noise_multiplier = 0 adds no noise: differential privacy needs σ > 0"
            )
        return self


class SecureConfig(_Section):
    aggregation: Literal["none", "secagg+", "ckks"] = Field(
        "none", description="secure aggregation: none, SecAgg+ masking, or CKKS encryption"
    )
    threshold: float = Field(
        0.67,
        gt=0.5,
        le=1.0,
        description="fraction of a round's clients needed to unmask, in (0.5, 1]",
    )
    clip_range: float = Field(
        4.0, gt=0, description="quantization range ±R of each weighted update element"
    )
    ckks_params: Literal["threshold"] = Field(
        "threshold",
        description="CKKS scheme: threshold CKKS with a collective key (128-bit security)",
    )
    prekeys: bool = Field(
        True,
        description="SecAgg+: clients send their next round's public keys with the unmask "
        "reply, saving the advertise exchange (one round trip) from their second round on",
    )
    dropout_clients: list[int] = Field(
        default_factory=list,
        description="fault injection: partition ids that drop out after masking, every round",
    )


class AuditConfig(_Section):
    """The privacy audit of a finished run (``umbra audit DIR`` or ``audit.enabled``):
    membership inference against the final model and reconstruction of an organisation's
    records from its update (docs/audit.md)."""

    enabled: bool = Field(
        False, description="run the privacy audit (membership inference) after training"
    )
    records: int = Field(
        1000,
        ge=10,
        le=100_000,
        description="records per side: members drawn from the training records, as many "
        "non-members from the held-out ones (fewer when fewer are available)",
    )
    shadows: int = Field(8, ge=1, le=256, description="shadow models of the offline LiRA")
    shadow_data: Literal["held-out", "training-rest"] = Field(
        "held-out",
        description="what the shadows train on: held-out records not used as non-members "
        "(disjoint from every member of the run), or the training records not under audit "
        "(a larger pool, closer to the target; slower)",
    )
    shadow_fraction: float = Field(
        0.5, gt=0, le=1, description="share of the shadow pool each shadow trains on"
    )
    shadow_epochs: float = Field(
        20.0, gt=0, le=1000, description="epochs each shadow trains (centralised SGD, no DP)"
    )
    lira_variance: Literal["auto", "per-record", "global"] = Field(
        "auto",
        description="LiRA's OUT variance: per record, one pooled over records (robust with "
        "few shadows), or auto (per record from 16 shadows on)",
    )
    fpr: list[float] = Field(
        default_factory=lambda: [0.001, 0.01],
        description="false-positive rates at which the true-positive rate is reported, in (0, 1)",
    )
    roc_points: int = Field(
        200, ge=10, le=10_000, description="points kept of each ROC curve in results.json"
    )
    reconstruction: bool = Field(
        False,
        description="also run the reconstruction attack: the server recovers an "
        "organisation's records from its update (plaintext, SecAgg+ sum, DP-SGD); off by "
        "default (about 1 min of CPU on the baseline)",
    )
    reconstruction_batch: int = Field(
        4, ge=1, le=8, description="records in the audited organisation's one-step update"
    )
    reconstruction_steps: int = Field(
        200,
        ge=1,
        le=10_000,
        description="optimisation steps of gradient matching and of the pixel inversion",
    )

    @model_validator(mode="after")
    def _check(self) -> AuditConfig:
        for f in self.fpr:
            if not 0.0 < f < 1.0:
                raise ValueError(f"audit.fpr = {f} is outside (0, 1)")
        return self


class AttackConfig(_Section):
    """Fault injection: organisations that poison their updates (docs/robustness.md)."""

    kind: Literal["none", "sign-flip", "scale", "label-flip", "backdoor"] = Field(
        "none",
        description="fault injection, what attacking organisations do: sign-flip (send "
        "-Δ), scale (send attack.scale·Δ), label-flip (train on C-1-y), backdoor (trigger "
        "-> attack.target_class); none in any real run",
    )
    clients: list[int] = Field(
        default_factory=list, description="partition ids of the attackers (or attack.fraction)"
    )
    fraction: float = Field(
        0.0, ge=0, lt=1, description="share of organisations that attack, drawn with run.seed"
    )
    scale: float = Field(10.0, gt=0, description="scale: factor on the attacker's update")
    target_class: int = Field(0, ge=0, description="backdoor: the class the trigger maps to")
    trigger_modality: str = Field("image", description="backdoor: the modality holding the trigger")
    trigger_size: int = Field(
        4, ge=1, le=64, description="backdoor: side of the trigger patch (1-D: size² entries)"
    )
    trigger_value: float = Field(
        2.5, description="backdoor: the trigger's feature value (2.5 ≈ white, standardised)"
    )
    poison_fraction: float = Field(
        0.5, gt=0, le=1, description="backdoor: share of the attacker's records triggered"
    )

    @model_validator(mode="after")
    def _check(self) -> AttackConfig:
        if len(set(self.clients)) != len(self.clients) or any(c < 0 for c in self.clients):
            raise ValueError(f"attack.clients = {self.clients} must be distinct ids >= 0")
        if self.clients and self.fraction > 0:
            raise ValueError("set attack.clients or attack.fraction, not both")
        named = bool(self.clients) or self.fraction > 0
        if self.kind == "none" and named:
            raise ValueError("attack.clients/fraction name attackers but attack.kind = 'none'")
        if self.kind != "none" and not named:
            raise ValueError(
                f"attack.kind = {self.kind!r} names no attacker: set attack.clients or "
                "attack.fraction"
            )
        return self


class CompressionConfig(_Section):
    """What each client's update is compressed to on the wire (docs/compression.md)."""

    method: Literal["none", "q8", "q4", "topk", "shared-k"] = Field(
        "none",
        description="none; q8/q4: unbiased stochastic quantisation of the update to 8/4 "
        "bits; topk: the largest coordinates (plaintext rounds); shared-k: the same "
        "coordinates at every client, public (compression.support; fits SecAgg+)",
    )
    fraction: float = Field(
        0.1, gt=0, le=1, description="topk, shared-k: share of each tensor's coordinates sent"
    )
    error_feedback: bool = Field(
        True,
        description="topk, shared-k: each client adds what it did not send to its next "
        "update (a residual kept in its own state folder)",
    )
    support: Literal["cyclic", "last-update"] = Field(
        "cyclic",
        description="shared-k: cyclic (a public permutation's block per round) or "
        "last-update (the largest coordinates of the last global update, plus a cyclic "
        "block of cyclic_share of them)",
    )
    cyclic_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="shared-k with support last-update: share of the kept "
        "coordinates from the cyclic block (the rest follow the last global update)",
    )
    value_bits: Literal[32, 16, 8] = Field(
        32,
        description="shared-k: width of each kept value; 32: float32; 16 or 8: unbiased "
        "stochastic codes of the kept values' range (under secagg+: 16 masks in a 16-bit "
        "ring, 8 is refused)",
    )

    @model_validator(mode="after")
    def _check(self) -> CompressionConfig:
        if self.value_bits != 32 and self.method != "shared-k":
            raise ValueError(
                f"compression.value_bits = {self.value_bits} applies to shared-k only "
                f"(compression.method = {self.method!r})"
            )
        return self


class VerticalConfig(_Section):
    """Vertical federation (federation.layout = 'vertical'; docs/vertical.md): parties hold
    different modalities of overlapping entities, aligned by PSI, trained by split learning."""

    parties: list[list[str]] = Field(
        default_factory=lambda: [["image"], ["audio"], ["text"]],
        description="the modalities each party holds (one list per party; each modality at "
        "one party)",
    )
    label_parties: list[int] = Field(
        default_factory=lambda: [2],
        description="indices of the parties holding the labels; the first runs the top model",
    )
    shared: float = Field(
        0.7, ge=0, le=1, description="share of entities held by every party; the rest by subsets"
    )
    secure_sum: bool = Field(
        False,
        description="the label holder receives only the sum of the parties' embeddings "
        "(pairwise masks among the feature parties)",
    )
    clip: float = Field(
        64.0, gt=0, description="secure sum: embedding coordinates are clipped to [-clip, clip]"
    )
    label_dp: Literal["none", "randomized-response"] = Field(
        "none",
        description="label protection: randomised response on the labels before training "
        "(Ghazi et al. 2021), ε = vertical.label_epsilon",
    )
    label_epsilon: float = Field(
        2.0, gt=0, le=50, description="ε of randomised response on the labels"
    )
    embedding_noise: float = Field(
        0.0,
        ge=0,
        description="per-record embedding DP: Gaussian noise multiplier on each party's "
        "clipped embedding rows (0: off)",
    )
    embedding_clip: float = Field(
        1.0, gt=0, description="embedding DP: L2 bound of one record's embedding row"
    )
    attack_records: int = Field(
        500, ge=10, le=100000, description="gradients a feature party keeps for the leakage audit"
    )

    @model_validator(mode="after")
    def _check(self) -> VerticalConfig:
        from umbra.data.dataset import MODALITIES

        if len(self.parties) < 2:
            raise ValueError(f"vertical.parties needs at least 2 parties, got {len(self.parties)}")
        seen: dict[str, int] = {}
        for i, mods in enumerate(self.parties):
            if not mods:
                raise ValueError(f"vertical.parties[{i}] holds no modality")
            for m in mods:
                if m not in MODALITIES:
                    raise ValueError(
                        f"vertical.parties[{i}] names {m!r}; known: {list(MODALITIES)}"
                    )
                if m in seen:
                    raise ValueError(f"modality {m!r} is at parties {seen[m]} and {i}; "
                                     "each modality belongs to one party")  # fmt: skip
                seen[m] = i
        if not self.label_parties:
            raise ValueError("vertical.label_parties is empty: some party must hold the labels")
        bad = [p for p in self.label_parties if not 0 <= p < len(self.parties)]
        if bad or len(set(self.label_parties)) != len(self.label_parties):
            raise ValueError(f"vertical.label_parties {self.label_parties} must be distinct "
                             f"party indices in [0, {len(self.parties) - 1}]")  # fmt: skip
        return self


class SynthConfig(_Section):
    """The DP synthetic data set of a finished run (``umbra synth DIR``): a class-conditional
    Gaussian over the run's fixed features, fitted from each organisation's noised
    statistics (docs/synthetic.md)."""

    epsilon: float = Field(
        3.0, gt=0, le=100, description="ε of the generator (all its statistics composed)"
    )
    delta: float | None = Field(
        None, gt=0, lt=1, description="δ of the generator; None: the run's privacy.delta"
    )
    require_dp: bool = Field(
        True,
        description="refuse a run trained without differential privacy (privacy.mode = "
        "'none'): its records left the organisations unprotected already",
    )
    model: Literal["gaussian", "discriminant"] = Field(
        "gaussian",
        description="gaussian: class-conditional Gaussians with a shared low-rank covariance; "
        "discriminant: class-conditional Gaussians in the subspace a DP linear classifier "
        "finds (no D × D statistic)",
    )
    rank: int = Field(
        16,
        ge=0,
        le=512,
        description="principal directions of each modality's covariance (model gaussian)",
    )
    max_dim: int | None = Field(
        None,
        ge=16,
        le=8192,
        description="(C, H, W) feature maps average-pooled to at most this many numbers; "
        "None: 729 for the gaussian model (the noise on a covariance grows with its side), "
        "8192 for the discriminant one",
    )
    teacher_steps: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="DP gradient steps of the discriminant model's classifier; None: 60·√ε",
    )
    teacher_clip: float | None = Field(
        None,
        gt=0,
        le=100,
        description="per-record gradient bound of the discriminant model's classifier; "
        "None: 0.6·ε^¼",
    )
    guidance: float = Field(
        10.0,
        ge=0,
        le=1000,
        description="discriminant model: γ of the classifier guidance, p(u | y) ∝ p(u) "
        "softmax(γ ℓ(u))_y with ℓ the DP classifier's logits; 0: each class's own Gaussian",
    )
    noise: Literal["local", "distributed"] | None = Field(
        None,
        description="local: each organisation adds the full noise to its own sums (holds "
        "against any collusion); distributed: each adds a discrete Gaussian share inside a "
        "secure sum, so only the sum carries the full noise (holds against the server while "
        "at most n − t organisations collude with it, t = ⌈secure.threshold · n⌉); None: "
        "distributed when the run used privacy.noise = 'distributed', else local",
    )
    subspace_clip: float = Field(
        0.3,
        gt=0,
        le=100,
        description="per-record bound of a standardised record's discriminant coordinates",
    )
    cov_weight: float = Field(
        1.0,
        gt=0,
        description="share of the privacy loss of each covariance against its class means (1)",
    )
    render: int = Field(
        32, ge=0, le=100_000, description="synthetic images rendered back to PNG pixels"
    )
    render_steps: int = Field(
        100, ge=1, le=10_000, description="L-BFGS-B iterations of each rendering"
    )
    audit_records: int = Field(
        1000, ge=10, le=100_000, description="records per side of the membership attack"
    )
    classifier: Literal["linear", "network"] = Field(
        "linear",
        description="TSTR classifier: logistic regression on the standardised feature maps, or the run's "
        "own network trained from scratch on the synthetic records",
    )
    classifier_epochs: int = Field(
        10, ge=1, le=1000, description="epochs of the network classifier (synth.classifier)"
    )


class RunConfig(_Section):
    seed: int = Field(0, ge=0, description="seed for data, partition, initialisation and training")
    eval_every: int = Field(1, ge=1, description="evaluate the global model every k rounds")
    threads: int = Field(
        1,
        ge=1,
        le=64,
        description="torch threads per client process (and for the centralized baseline)",
    )
    num_cpus: int = Field(2, ge=1, le=256, description="CPUs given to Flower's simulation engine")
    progress: bool = Field(True, description="show the per-round progress line")
    tensorboard: bool = Field(False, description="also write TensorBoard scalars")


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)  # type: ignore[arg-type]
    model: ModelConfig = Field(default_factory=ModelConfig)  # type: ignore[arg-type]
    federation: FederationConfig = Field(default_factory=FederationConfig)  # type: ignore[arg-type]
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)  # type: ignore[arg-type]
    secure: SecureConfig = Field(default_factory=SecureConfig)  # type: ignore[arg-type]
    audit: AuditConfig = Field(default_factory=AuditConfig)  # type: ignore[arg-type]
    attack: AttackConfig = Field(default_factory=AttackConfig)  # type: ignore[arg-type]
    compression: CompressionConfig = Field(default_factory=CompressionConfig)  # type: ignore[arg-type]
    vertical: VerticalConfig = Field(default_factory=VerticalConfig)  # type: ignore[arg-type]
    synth: SynthConfig = Field(default_factory=SynthConfig)  # type: ignore[arg-type]
    hetero: HeteroConfig = Field(default_factory=HeteroConfig)  # type: ignore[arg-type]
    run: RunConfig = Field(default_factory=RunConfig)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _cross(self) -> Config:
        n_records = self.data.n_train
        if (
            self.data.source == "fmnist-avt"
            and self.federation.num_clients * max(1, self.data.min_client_size) > n_records
        ):
            raise ValueError(
                f"federation.num_clients = {self.federation.num_clients} needs at least "
                f"{self.federation.num_clients * self.data.min_client_size} records "
                f"(data.n_train = {n_records}, data.min_client_size = {self.data.min_client_size})"
            )
        for m, rate in self.data.missing.items():
            if rate >= 1.0:
                raise ValueError(f"data.missing.{m} = {rate} removes {m} from every record")
        everywhere = set.intersection(
            *(set(self.data.absent.get(str(c), [])) for c in range(self.federation.num_clients))
        )
        if everywhere:
            raise ValueError(
                f"data.absent removes {sorted(everywhere)} at every client; drop the modality "
                "from the data instead"
            )
        if self.privacy.mode != "none" and self.federation.mode == "centralized":
            raise ValueError(
                "privacy.mode needs federation.mode = 'federated' (the centralized baseline "
                "is the non-private reference)"
            )
        if self.privacy.mode != "none" and self.data.tabular_stats == "per-client":
            raise ValueError(
                "data.tabular_stats = 'per-client' is not allowed under differential privacy "
                "(each record's features would depend on every other record's); use 'identity' "
                "or public statistics"
            )
        if self.privacy.mode == "client" and self.federation.strategy == "scaffold":
            raise ValueError(
                "privacy.mode = 'client' with federation.strategy = 'scaffold' is not supported: "
                "control variates would leave the clients without clipping or noise"
            )
        if self.privacy.noise == "distributed" and self.privacy.mode != "none":
            if self.secure.aggregation == "none":
                raise ValueError(
                    "privacy.noise = 'distributed' needs secure.aggregation = 'secagg+' or "
                    "'ckks': in the clear every update would carry only its share of the noise"
                )
            if self.privacy.mode == "example" and self.federation.strategy == "scaffold":
                raise ValueError(
                    "privacy.noise = 'distributed' with federation.strategy = 'scaffold' is "
                    "not supported: one joint DP-SGD step per round leaves no local drift to "
                    "correct"
                )
        if self.privacy.mode != "none" and self.data.source == "fmnist-avt":
            per_client = self.data.n_train / self.federation.num_clients
            if self.privacy.delta > 1.0 / max(1.0, per_client) and self.privacy.mode == "example":
                raise ValueError(
                    f"privacy.delta = {self.privacy.delta:g} exceeds 1 / (records per client ≈ "
                    f"{per_client:.0f}): δ must be well below 1/n"
                )
        fed = self.federation
        if fed.aggregator != "mean" or fed.clip_updates is not None or fed.detect or fed.reputation:
            what = (
                f"federation.aggregator = {fed.aggregator!r}"
                if fed.aggregator != "mean"
                else "federation.clip_updates" if fed.clip_updates is not None
                else "federation.detect" if fed.detect
                else "federation.reputation"
            )  # fmt: skip
            if self.secure.aggregation != "none":
                raise ValueError(
                    f"{what} needs each client's update, which secure aggregation "
                    f"({self.secure.aggregation!r}) hides from the server"
                )
            if self.privacy.mode == "client":
                raise ValueError(
                    f"{what} does not fit privacy.mode = 'client': its sensitivity "
                    "analysis assumes the plain mean of clipped updates"
                )
        if fed.mode == "async":
            _check_async_fits(self)
        for pid in self.attack.clients:
            if pid >= fed.num_clients:
                raise ValueError(
                    f"attack.clients names client {pid}, but federation.num_clients = "
                    f"{fed.num_clients}"
                )
        method = self.compression.method
        shared_under_secagg = method == "shared-k" and self.secure.aggregation == "secagg+"
        if shared_under_secagg and self.privacy.mode != "none":
            raise ValueError(
                "compression.method = 'shared-k' under secure.aggregation = 'secagg+' does "
                "not support differential privacy yet (the noise plan covers every coordinate)"
            )
        if method != "none" and self.secure.aggregation != "none" and not shared_under_secagg:
            raise ValueError(
                f"compression.method = {method!r} does not fit secure.aggregation = "
                f"{self.secure.aggregation!r}: masked or encrypted updates are summed "
                "coordinate by coordinate, which per-client codes and supports break "
                "(shared-k fits secagg+)"
            )
        bits = self.compression.value_bits
        if shared_under_secagg and bits != 32:
            n = self.federation.num_clients  # a round masks among at most these
            if bits == 8:
                raise ValueError(
                    "compression.value_bits = 8 does not fit secure.aggregation = 'secagg+': "
                    "an 8-bit ring leaves too few levels per client (use 16 or 32)"
                )
            if n > 256:
                raise ValueError(
                    f"compression.value_bits = 16 under secagg+ with {n} clients leaves "
                    f"{65535 // n} levels per client (< 256): use 32"
                )
        if method in ("q8", "q4") and self.privacy.mode == "client":
            raise ValueError(
                f"compression.method = {method!r} does not fit privacy.mode = 'client': "
                "quantisation can push a clipped update past its clip norm; use topk or "
                "shared-k"
            )
        if method != "none" and self.federation.mode == "centralized":
            raise ValueError("compression needs federation.mode = 'federated'")
        for c in self.data.absent:
            if int(c) >= self.federation.num_clients:
                raise ValueError(
                    f"data.absent names client {c}, but federation.num_clients = "
                    f"{self.federation.num_clients}"
                )
        self._check_hetero()
        return self

    def _check_hetero(self) -> None:
        for c, org in self.hetero.organisations.items():
            if int(c) >= self.federation.num_clients:
                raise ValueError(
                    f"hetero.organisations names client {c}, but federation.num_clients = "
                    f"{self.federation.num_clients}"
                )
            if org.embed_dim is not None and org.embed_dim != self.model.embed_dim:
                raise ValueError(
                    f"hetero.organisations.{c}.embed_dim = {org.embed_dim} differs from "
                    f"model.embed_dim = {self.model.embed_dim}: organisations are joined in "
                    "one shared embedding space, which needs one size"
                )


def _check_async_fits(cfg: Config) -> None:
    """federation.mode = 'async' (FedBuff) with the rest of the config: what its buffers
    cannot carry is refused here, in one line."""
    fed, dp = cfg.federation, cfg.privacy
    if fed.strategy == "scaffold":
        raise ValueError(
            "federation.mode = 'async' does not support federation.strategy = 'scaffold' "
            "(control variates assume every client trains on the same model)"
        )
    if cfg.compression.method != "none":
        raise ValueError(
            "federation.mode = 'async' does not support compression: a stale update is "
            "encoded against a model the server no longer holds"
        )
    if dp.mode == "client" and dp.client_rate < 1.0:
        raise ValueError(
            f"privacy.client_rate = {dp.client_rate:g} under federation.mode = 'async': a "
            "buffer is filled by the clients' speeds, not a Poisson sample, so no "
            "amplification may be claimed; set privacy.client_rate = 1"
        )
    if dp.mode == "example" and dp.noise == "distributed":
        raise ValueError(
            "federation.mode = 'async' does not support privacy.noise = 'distributed' with "
            "privacy.mode = 'example' (a staleness weight would scale the noise shares down)"
        )


def _format_error(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        section = _section_model(tuple(str(p) for p in e["loc"][:-1]))
        valid = ", ".join(sorted(section.model_fields)) if section else ""
        return f"unknown key '{loc}'" + (f"; valid keys: {valid}" if valid else "")
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
        return msg if not loc or msg.startswith(loc + ".") else f"{loc}: {msg}"
    got = e.get("input")
    got_s = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{loc or 'config'}: {msg}{got_s}"


def _section_model(path: tuple[str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for p in path:
        field = model.model_fields.get(p)
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def validate_config(raw: dict[str, Any]) -> Config:
    """Validate a nested dict into a :class:`Config` or raise a one-line ConfigError."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def available_presets() -> list[str]:
    return sorted(
        p.name[: -len(".toml")]
        for p in resources.files("umbra.presets").iterdir()
        if p.name.endswith(".toml")
    )


def _read_toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{where}: malformed TOML: {err}") from None


def preset_dict(name: str) -> dict[str, Any]:
    if name not in available_presets():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(available_presets())}")
    text = resources.files("umbra.presets").joinpath(f"{name}.toml").read_text()
    return _read_toml(text, f"preset {name}")


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string such as fedprox


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``section.key=value`` (value parsed as TOML, else a string) to ``raw``."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected section.key=value")
    key, _, value = assignment.partition("=")
    parts = [p.strip() for p in key.strip().split(".")]
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {assignment!r}: expected section.key=value")
    node = raw
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {assignment!r}: {p} is not a section")
        node = nxt
    node[parts[-1]] = _parse_value(value.strip())


#: Encoders for a manifest (the user's own media) in place of a preset's choice, measured
#: on generated speech manifests (docs/data.md, bench/brought_data.py): the presets'
#: ``spectral-stats`` keeps each band's mean and spread over time, enough for
#: ``fmnist-avt``'s one phrase per class but blind to the order of sounds in real words,
#: where the conv encoder ``audio`` learns it.
MANIFEST_ENCODERS: dict[str, str] = {"audio": "audio"}


@dataclass(frozen=True)
class ResolvedConfig:
    """A validated config and the defaults chosen for it (one line each, for the user)."""

    config: Config
    notes: list[str] = field(default_factory=list)


def _manifest_modalities(path: str) -> set[str] | None:
    """The modalities whose columns the manifest at ``path`` has (``image``, ``audio``,
    ``text``, ``tabular`` for ``tab:`` columns), from its header alone; None when the header
    cannot be read (the manifest loader then reports why, with the rest of the checks)."""
    file = Path(path)
    try:
        if file.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            columns = {c.strip() for c in pq.read_schema(file).names}
        else:
            with file.open(encoding="utf-8-sig", newline="") as f:
                columns = {c.strip() for c in next(csv.reader(f), [])}
    except (OSError, ValueError, csv.Error):  # ValueError: bad encoding, bad Parquet
        return None
    tabular = {"tabular"} if any(c.startswith("tab:") for c in columns) else set()
    return (columns & {"image", "audio", "text"}) | tabular


def _manifest_defaults(raw: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """Replace the preset's fmnist-avt choices in ``raw`` where the overrides ``given`` do
    not name them: MANIFEST_ENCODERS for the manifest's modalities; no encoder, and for
    images no scattering, for a modality the manifest lacks. One note per change."""
    given_model, given_data = given.get("model", {}), given.get("data", {})
    named = given_model.get("encoders", {}) if isinstance(given_model, dict) else None
    model, data = raw.setdefault("model", {}), raw.get("data", {})
    encoders = model.setdefault("encoders", {}) if isinstance(model, dict) else None
    if not isinstance(encoders, dict) or not isinstance(named, dict) or not isinstance(data, dict):
        return []  # malformed tables: validation reports them
    declared = given_data.get("modalities")
    # a declared schema decides, so a node whose machine lacks the coordinator's manifest
    # resolves the same config
    present = (
        set(declared) if isinstance(declared, list) and declared
        else _manifest_modalities(str(given_data["manifest"]))
    )  # fmt: skip
    notes = []
    for modality, name in MANIFEST_ENCODERS.items():
        preset_choice = encoders.get(modality, modality)  # no entry: the modality's own
        absent = present is not None and modality not in present
        if modality in named or preset_choice == name or absent:
            continue
        encoders[modality] = name
        notes.append(
            f"model.encoders.{modality} = {name!r} for your manifest (the preset's "
            f"{preset_choice!r} suits fmnist-avt; --set model.encoders.{modality}="
            f"{preset_choice} keeps it; see docs/data.md)"
        )
    if present is None:
        return notes
    for modality in sorted(set(encoders) - present - set(named)):
        notes.append(
            f"model.encoders.{modality} dropped: your manifest has no {modality} column "
            f"(the preset's {encoders.pop(modality)!r})"
        )
    features = data.get("image_features", "pixels")
    if "image" not in present and features != "pixels" and "image_features" not in given_data:
        data["image_features"] = "pixels"
        notes.append(
            f"data.image_features = 'pixels': your manifest has no image column (the "
            f"preset's {features!r} needs images)"
        )
    return notes


def resolve_config(
    preset: str | None = "default",
    *,
    file: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> ResolvedConfig:
    """Resolve a preset (or a TOML file) plus ``--set`` overrides into a validated Config.

    A preset's ``data.source`` and encoders are defaults, not choices: when the overrides
    give ``data.manifest`` without ``data.source``, the manifest is the data set; each of
    its modalities in :data:`MANIFEST_ENCODERS` whose encoder the overrides do not name
    gets the encoder that suits real media, and a manifest without an ``image`` column
    gets ``data.image_features = "pixels"`` unless the overrides set it (each said in
    ``notes``; the manifest's header is read for its columns). In a config file every key
    is the user's own, so a manifest beside another source is an error and nothing is
    replaced.
    """
    if file is not None:
        try:
            text = Path(file).read_text()
        except OSError as err:
            raise ConfigError(f"cannot read config file {file}: {err.strerror}") from None
        raw = _read_toml(text, str(file))
    else:
        raw = preset_dict(preset or "default")
    given: dict[str, Any] = {}
    for o in overrides:
        apply_override(raw, o)
        apply_override(given, o)
    given_data = given.get("data")
    notes: list[str] = []
    if file is None and isinstance(given_data, dict) and given_data.get("manifest"):
        if "source" not in given_data and isinstance(raw.get("data"), dict):
            raw["data"].pop("source", None)
        notes = _manifest_defaults(raw, given)
    return ResolvedConfig(validate_config(raw), notes)


def load_config(
    preset: str | None = "default",
    *,
    file: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Config:
    """The validated Config of :func:`resolve_config` (its notes dropped)."""
    return resolve_config(preset, file=file, overrides=overrides).config


def config_fingerprint(cfg: Config, *, ignore: tuple[str, ...] = ("federation.rounds",)) -> str:
    """sha256 of the resolved config, minus fields a resumed run may change (the rounds,
    progress output, and the audit and synth settings: both work on a finished run and
    change nothing of the training)."""
    d = cfg.model_dump(mode="json")
    d.pop("audit", None)
    d.pop("synth", None)
    for path in ignore:
        section, key = path.split(".")
        d.get(section, {}).pop(key, None)
    d.get("run", {}).pop("progress", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()
