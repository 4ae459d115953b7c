"""The Flower ClientApp: runs inside each organisation (a SuperNode), sees only its data.

`train_reply` and `info_reply` answer a train or query message for a `ClientSpec`;
``make_client_app(spec)`` binds them to one experiment (Flower's simulation engine ships
the app to its workers), while the Deployment Engine's module-level app
(`umbra.apps.client`) builds the spec from the run and node config at run time. Each train message carries the global arrays (and, for SCAFFOLD,
the control variate under ``cv.``); the reply carries the updated arrays and a
MetricRecord with ``num-examples``, ``n-<modality>`` counts and the ``partition-id``.

Under differential privacy the organisation reveals only what the zero-out neighbouring
relation keeps public (:data:`umbra.privacy.accounting.ADJACENCY`, :func:`public_metrics`):
with example-level DP its record count (a null record still occupies its slot), with
client-level DP nothing but its partition id. Losses, per-modality counts, sampled batch
sizes and update norms are functions of the private records and stay with the client.

Client state (SCAFFOLD's control variate c_i) is kept on the client's side, in the node's
own ``state-dir`` (node config) or else under ``ClientSpec.state_dir``, which must not be
the server's run folder.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from umbra.data.dataset import MultimodalData
from umbra.federation.attacks import AttackSpec, attack_policy
from umbra.federation.buffered.client_update import staleness_scaled
from umbra.federation.client_data import client_records, load_client_data
from umbra.federation.client_state import load_round_arrays, save_round_arrays
from umbra.federation.common import (
    CONTROL_PREFIX,
    ClientActionSpec,
    SecureSettings,
    SecureTransport,
    config_float,
    config_int,
    count_key,
    from_record,
    to_record,
)
from umbra.federation.compression_client import compress_reply
from umbra.federation.train import (
    TrainSettings,
    get_arrays,
    scaffold_control_update,
    set_arrays,
)
from umbra.models import ModelSpec, MultimodalNet
from umbra.privacy.client import client_policy

__all__ = [
    "ClientSpec",
    "client_state_dir",
    "info_reply",
    "make_client_app",
    "node_records",
    "public_metrics",
    "round_seed",
    "train_reply",
]


@dataclass(frozen=True)
class ClientSpec:
    """Everything a ClientApp needs, picklable (Flower's simulation ships it to workers).

    ``state_dir`` is the client-side root of per-node state (a node's own ``state-dir`` in
    its node config overrides it); ``privacy_unit`` is the organisation's own DP unit
    (``"none"``, ``"example"``, ``"client"``), which decides what its replies may reveal.
    Each of ``transports`` (registry entries; none: plaintext) adds the handler of its
    ``train.<client_action>`` messages, built from ``secure`` and ``identities`` (the
    simulated nodes' private identity keys; each node reads only its own; not in repr).
    ``own_data``: ``data_dir`` holds this organisation's records only (a deployed node's
    own folder, row set 0), not every simulated organisation's partitions.
    ``attack``: fault injection (``attack.*``): the organisations it names poison their
    data or update (:mod:`umbra.federation.attacks`); honest by default.
    """

    data_dir: str
    state_dir: str
    model_spec: dict[str, Any]
    settings: TrainSettings
    seed: int
    threads: int = 1
    transports: tuple[SecureTransport, ...] = ()
    secure: SecureSettings = field(default_factory=SecureSettings)
    identities: dict[int, bytes] = field(default_factory=dict, repr=False)
    privacy_unit: str = "none"
    own_data: bool = False
    attack: AttackSpec = field(default_factory=AttackSpec)

    def action_spec(self) -> ClientActionSpec:
        """What the secure transport's client mod is built from."""
        return ClientActionSpec(secure=self.secure, identities=dict(self.identities))


def round_seed(seed: int, server_round: int, client: int) -> int:
    """A per-(run, round, client) seed for non-private choices (batch order, modality
    dropout), stable across processes. Never for DP sampling or noise: those come from
    :class:`~umbra.privacy.randomness.SecureRandom`."""
    return zlib.crc32(f"{seed}/{server_round}/{client}".encode()) & 0x7FFFFFFF


Metrics = dict[str, int | float | list[int] | list[float]]

#: reply keys that carry no information about the private records (schedule and protocol)
_PUBLIC_KEYS = ("partition-id", "dp-unweighted")
#: SCAFFOLD's control variate c_i in the organisation's state folder: scaffold_r<round>.npz
_CONTROL_STEM = "scaffold_r"
#: Public per-group DP metrics (sensitivities: functions of the clip norms, the learning rate
#: and the public record count), read by the secure-aggregation client mods.
_PUBLIC_PREFIXES = ("dp-sens-",)


def public_metrics(
    unit: str,
    *,
    partition_id: int,
    num_examples: int,
    counts: dict[str, int],
    metrics: dict[str, float],
) -> Metrics:
    """The reply/info metrics an organisation may send under its DP ``unit``.

    ``"none"``: everything (record count, per-modality counts, training metrics).
    ``"example"`` (zero-out adjacency: the slot count is public): ``num-examples`` and, so
    that modality-aware averaging still has a weight, ``n-<m> = num-examples`` for every
    modality; no loss, no sampled-batch size. ``"client"``: only the partition id (the
    whole client is the unit; its size is private too).
    """
    if unit == "none":
        return {
            "num-examples": num_examples,
            "partition-id": partition_id,
            **{count_key(m): n for m, n in counts.items()},
            **metrics,
        }
    if unit not in ("example", "client"):
        raise ValueError(f"privacy unit must be 'none', 'example' or 'client', got {unit!r}")
    out: Metrics = {"partition-id": partition_id}
    if unit == "example":
        out["num-examples"] = num_examples
        out.update({count_key(m): num_examples for m in counts})
    out.update({k: metrics[k] for k in _PUBLIC_KEYS if k in metrics})
    out.update({k: v for k, v in metrics.items() if k.startswith(_PUBLIC_PREFIXES)})
    return out


def client_state_dir(spec: ClientSpec, node_config: Any, client: int) -> Path:
    """Where this node keeps its own state: the node's ``state-dir`` or ``spec.state_dir``."""
    own = node_config.get("state-dir") if hasattr(node_config, "get") else None
    return Path(str(own) if own else spec.state_dir) / f"client_{client}"


def _load_control(state_dir: Path, server_round: int) -> dict[str, np.ndarray] | None:
    """The newest stored SCAFFOLD c_i from a round before ``server_round`` (resume-safe)."""
    return load_round_arrays(state_dir, _CONTROL_STEM, server_round)


def _save_control(state_dir: Path, server_round: int, c_i: dict[str, np.ndarray]) -> None:
    save_round_arrays(state_dir, _CONTROL_STEM, server_round, c_i)


def node_records(spec: ClientSpec, client: int) -> tuple[str, int]:
    """The folder this node reads its records from and their row set in it: its own
    partition ``client`` of a pooled folder (simulation), or row set 0 of a folder that
    holds this organisation's records only (``spec.own_data``, a deployed SuperNode)."""
    return spec.data_dir, 0 if spec.own_data else client


def _reply_metrics(
    spec: ClientSpec, client: int, data: MultimodalData, metrics: dict[str, float]
) -> Metrics:
    """What this organisation may reveal about ``data`` under its DP unit (`public_metrics`)."""
    counts = data.counts()
    return public_metrics(
        spec.privacy_unit,
        partition_id=client,
        num_examples=len(data),
        counts={m: counts[m] for m in data.modalities},
        metrics=metrics,
    )


def train_reply(spec: ClientSpec, msg: Message, context: Context) -> Message:
    """Train on this node's records from the message's global model; the reply carries the
    update and the metrics the organisation's DP unit lets it reveal."""
    torch.set_num_threads(spec.threads)
    client = int(context.node_config["partition-id"])
    config = msg.content.config_records["config"]
    server_round = config_int(config, "server-round")
    incoming = from_record(msg.content.array_records["arrays"])
    x = {k: v for k, v in incoming.items() if not k.startswith(CONTROL_PREFIX)}
    c = {k[len(CONTROL_PREFIX) :]: v for k, v in incoming.items() if k.startswith(CONTROL_PREFIX)}

    data, batchable = client_records(*node_records(spec, client))
    model = MultimodalNet(ModelSpec.from_dict(spec.model_spec))
    set_arrays(model, x)
    settings = spec.settings
    mu = config_float(config, "proximal-mu", 0.0)
    if mu != settings.proximal_mu:
        settings = TrainSettings(**{**settings.__dict__, "proximal_mu": mu})
    state_dir = client_state_dir(spec, context.node_config, client)
    c_i = None
    if c:
        c_i = _load_control(state_dir, server_round) or {k: np.zeros_like(v) for k, v in c.items()}
    seed = round_seed(spec.seed, server_round, client)
    scaffold = (c, c_i) if c_i is not None else None
    attack = attack_policy(spec.attack, client)  # fault injection; honest unless named
    batchable = attack.poison_data(batchable, num_classes=model.spec.num_classes,
                                   seed=round_seed(spec.seed, 0, client))  # fmt: skip
    policy = client_policy(config)  # the DP mode's trainer and reply post-processing
    settings = policy.settings(settings)
    metrics = policy.train(model, batchable, settings, seed=seed, scaffold=scaffold)
    y = attack.poison_update(x, get_arrays(model))
    y = staleness_scaled(config, x, y)  # federation.mode = "async": FedBuff's s(τ), before DP
    out = dict(y)
    if c_i is not None:
        new_c_i = scaffold_control_update(
            c,
            c_i,
            x,
            y,
            steps=int(metrics["steps"]),
            lr=settings.lr,
            momentum=settings.momentum,
        )
        _save_control(state_dir, server_round, new_c_i)
        out.update({CONTROL_PREFIX + k: new_c_i[k] - c_i[k] for k in new_c_i})
    out, metrics = policy.reply(x, y, out, metrics)
    # compression (compression.*): the codes of the update as the round announced them
    out = compress_reply(config, x, out, metrics, state_dir=state_dir,
                         server_round=server_round, seed=seed)  # fmt: skip
    reply_metrics = _reply_metrics(spec, client, data, metrics)
    content = RecordDict({"arrays": to_record(out), "metrics": MetricRecord(reply_metrics)})
    return Message(content=content, reply_to=msg)


def info_reply(spec: ClientSpec, msg: Message, context: Context) -> Message:
    """Public metadata the server plans with (:func:`public_metrics`, no training)."""
    client = int(context.node_config["partition-id"])
    data = load_client_data(*node_records(spec, client))
    metrics = _reply_metrics(spec, client, data, {})
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def make_client_app(spec: ClientSpec) -> ClientApp:
    """A ClientApp bound to ``spec`` (the simulation engine's; a deployment uses the
    module-level app of :mod:`umbra.apps`, which builds its spec at run time)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return train_reply(spec, msg, context)

    @app.query()
    def info(msg: Message, context: Context) -> Message:
        return info_reply(spec, msg, context)

    for transport in spec.transports:
        app.train(transport.client_action)(transport.client_mod(train, spec.action_spec()))
    return app
