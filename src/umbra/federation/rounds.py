"""How one training round moves updates between clients and server.

A *round transport* takes the strategy, the Grid, the round number, the global arrays and
the server spec and returns a :class:`RoundOutcome`. ``"none"`` sends plaintext updates
and lets the strategy aggregate them; secure aggregation workflows register their own
(``register_train_round``) and hand the strategy only the aggregate
(:func:`strategy_step`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from umbra.errors import UmbraError
from umbra.federation.messaging import send_and_receive
from umbra.federation.records import message_bytes, to_record
from umbra.federation.strategies import ModalityFedAvg, count_key
from umbra.federation.strategies.modality import strip_prefix
from umbra.models import SHARED_GROUP, parameter_modality
from umbra.privacy.client_dp import noised_mean_update, shares_needed
from umbra.privacy.controller import (
    CLIENT_GROUP,
    DP_INTEGER_NOISE,
    DP_NOISE_SHARES,
    DP_RANGE,
    PrivacyController,
)
from umbra.privacy.ddg import plan_integer_noise, range_divisor
from umbra.privacy.randomness import SecureRandom

__all__ = [
    "TRAIN_ROUNDS",
    "RoundOutcome",
    "RoundPrivacy",
    "TrainRound",
    "check_integer_noise",
    "client_dp_model",
    "plain_train_round",
    "poisson_client_sample",
    "prepare_train_messages",
    "register_train_round",
    "reply_partition",
    "strategy_step",
]

log = logging.getLogger("umbra")


@dataclass
class RoundOutcome:
    """What one training round produced.

    ``record`` is the new global model (None: the round aborted and the model stays as it
    was); bytes are real serialized message sizes, in total and per client (keyed by
    partition id, ``{"up": ..., "down": ...}``).
    """

    record: ArrayRecord | None
    metrics: MetricRecord | None
    bytes_up: int
    bytes_down: int
    clients: int
    per_client: dict[int, dict[str, int]] = field(default_factory=dict)
    note: str | None = None


#: (strategy, grid, round, global arrays, server spec) -> outcome
TrainRound = Callable[[ModalityFedAvg, Grid, int, dict[str, np.ndarray], Any], RoundOutcome]
#: How a training round moves updates: "none" (plaintext), or secure aggregation modes.
TRAIN_ROUNDS: dict[str, TrainRound] = {}


def register_train_round(name: str, fn: TrainRound) -> None:
    """Register a round transport (e.g. a secure aggregation workflow); duplicates raise."""
    if name in TRAIN_ROUNDS:
        raise ValueError(f"train round {name!r} is already registered")
    TRAIN_ROUNDS[name] = fn


def reply_partition(msg: Message) -> int:
    metrics = next(iter(msg.content.metric_records.values()))
    return int(metrics["partition-id"])  # type: ignore[arg-type]


@dataclass
class RoundPrivacy:
    """Server-side DP state a round transport needs (set by the server loop).

    ``controller`` writes the ledger and hands out each client's noise plan;
    ``node_pids`` maps Flower node ids to partition ids (the ledger's parties).
    """

    controller: PrivacyController
    node_pids: dict[int, int]

    @property
    def client_level(self) -> bool:
        return self.controller.mode == "client"


class _SubsetGrid:
    """A view of a Grid that offers only the nodes sampled for this round."""

    def __init__(self, grid: Grid, nodes: list[int]) -> None:
        self._grid, self._nodes = grid, nodes

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def poisson_client_sample(nodes: Iterable[int], rate: float) -> list[int]:
    """Each node independently with probability ``rate``, drawn from the privacy stream
    (:class:`~umbra.privacy.randomness.SecureRandom`), never from a seeded generator."""
    ordered = sorted(nodes)
    keep = SecureRandom().bernoulli(rate, len(ordered))
    return [n for n, k in zip(ordered, keep, strict=True) if k]


def prepare_train_messages(
    strategy: ModalityFedAvg,
    grid: Grid,
    rnd: int,
    arrays: dict[str, np.ndarray],
    spec: Any,
) -> list[Message]:
    """The round's train messages, with privacy applied when DP is on.

    Client-level DP samples clients with Poisson rate q (:func:`poisson_client_sample`,
    from the privacy stream: the sample must be unpredictable to everyone but the server,
    which draws it and is therefore accounted without amplification, see
    :mod:`umbra.privacy.observers`). Distributed noise is split into ``t`` shares
    (``dp-noise-shares``, the secure threshold); under SecAgg+ the shares are discrete
    Gaussians added after quantisation (``dp-integer-noise``), whose plan is checked here
    first. Before any message exists, the DP controller checks the budget and writes the
    round's releases to the ledger (fsynced); then each message gets its own ConfigRecord
    with that client's noise plan. May raise :class:`~umbra.errors.BudgetExhausted` or
    :class:`~umbra.privacy.ddg.DDGError`.
    """
    dp: RoundPrivacy | None = getattr(spec, "dp", None)
    view: Any = grid
    if dp is not None and dp.client_level:
        q = float(dp.controller.cfg.client_rate)
        view = _SubsetGrid(grid, poisson_client_sample(grid.get_node_ids(), q))
    if dp is not None and not list(view.get_node_ids()):
        dp.controller.before_round(rnd, [])  # an empty sample still releases noise
        return []
    messages = list(strategy.configure_train(rnd, to_record(arrays), ConfigRecord(), view))
    if dp is None:
        return messages
    pids = [dp.node_pids[m.metadata.dst_node_id] for m in messages]
    secure = dict(getattr(spec, "extra", {}).get("secure", {}))
    extra: dict[str, Any] = {}
    if dp.controller.cfg.noise == "distributed":
        # Shares sized for the smallest aggregate the secure aggregation accepts: every sum
        # the server can unmask carries the full noise, no top-up.
        extra[DP_NOISE_SHARES] = shares_needed(float(secure.get("threshold", 1.0)), len(messages))
        if dp.controller.distributed_example:
            lr = dp.controller.cfg.lr or getattr(getattr(spec, "federation", None), "lr", None)
            if lr is None:
                raise UmbraError("distributed DP-SGD needs a learning rate (privacy.lr)")
            extra["dp-lr"] = float(lr)
        if secure.get("aggregation") == "secagg+":
            # discrete Gaussian shares after quantisation: refuse a bad plan before any release
            extra[DP_INTEGER_NOISE] = True
            extra[DP_RANGE] = check_integer_noise(dp, arrays, secure, len(messages),
                                                  int(extra[DP_NOISE_SHARES]), extra.get("dp-lr"))  # fmt: skip
    plans = dp.controller.before_round(rnd, pids)  # ledger written before any release
    out = []
    for m, pid in zip(messages, pids, strict=True):
        config = ConfigRecord({**dict(m.content.config_records["config"]), **plans[pid], **extra})
        content = RecordDict({"arrays": m.content.array_records["arrays"], "config": config})
        out.append(Message(content=content, dst_node_id=m.metadata.dst_node_id,
                           message_type=m.metadata.message_type))  # fmt: skip
    return out


def check_integer_noise(
    dp: RoundPrivacy,
    arrays: dict[str, np.ndarray],
    secure: dict[str, Any],
    num_clients: int,
    shares: int,
    lr: float | None,
) -> int:
    """Plan-time choice and check of the distributed discrete Gaussian (clients recompute it).

    Returns ρ (``dp-range``), the power-of-two divisor that keeps a contribution's values
    (at most ``C``, or ``2 lr C_g`` for a joint DP-SGD step with a batch twice the expected
    one) and 12 standard deviations of its noise share inside the quantisation range.
    Raises :class:`~umbra.privacy.ddg.DDGError` when τ is not negligible or the shares still
    do not fit, before the round's releases are written.
    """
    from umbra.secure.secagg.quantize import QuantizationSpec

    spec = QuantizationSpec(clip=float(secure.get("clip_range", 4.0)), num_clients=num_clients)
    ctl = dp.controller
    sens = ctl.release_sensitivities(1.0 if dp.client_level else float(lr or 0.0))
    sigmas = (
        {CLIENT_GROUP: float(ctl.client_sigma or 0.0)}
        if dp.client_level
        else next(iter(ctl.plans.values())).noise_multipliers
    )
    clips = ctl.clip_norms()
    value_bound = max(clips.values()) * (1.0 if dp.client_level else 2.0 * float(lr or 0.0))
    share_std = max(sigmas[g] * sens[g] for g in sens) / np.sqrt(shares)
    rho = range_divisor(value_bound=value_bound, share_std=share_std, clip=spec.clip)
    plan_integer_noise(
        {k: int(v.size) for k, v in arrays.items() if not k.startswith("cv.")},
        key_group=(lambda _: CLIENT_GROUP)
        if dp.client_level
        else (lambda k: parameter_modality(k) or SHARED_GROUP),
        noise_multipliers=sigmas,
        sensitivities=sens,
        shares=shares,
        scale=spec.scale / rho,
        half_range=spec.clip * spec.scale,
        client_level=dp.client_level,
    )
    return rho


def client_dp_model(
    x: dict[str, np.ndarray],
    summed: dict[str, np.ndarray],
    *,
    received: int,
    sampled: int,
    dp: RoundPrivacy,
) -> dict[str, np.ndarray]:
    """x + the DP-FedAvg mean update from the sum of clipped (noised) client deltas."""
    ctl = dp.controller
    sigma = float(ctl.client_sigma or 0.0)
    clip = ctl.clip_norms()["all"]
    # Distributed shares are sized for the secure threshold t: any sum the server can unmask
    # (k >= t contributions) already carries the full noise; central noise is added here.
    carried = 1.0 if ctl.cfg.noise == "distributed" else 0.0
    mean = noised_mean_update(
        summed,
        noise_multiplier=sigma,
        clip_norm=clip,
        expected_clients=ctl.cfg.client_rate * ctl.num_clients,
        noise_already_added=carried,
    )
    return {k: (x[k] + mean[k]).astype(x[k].dtype) for k in x}


def plain_train_round(
    strategy: ModalityFedAvg,
    grid: Grid,
    rnd: int,
    arrays: dict[str, np.ndarray],
    spec: Any,
) -> RoundOutcome:
    """Send the model, collect plaintext updates, let the strategy aggregate them.

    Under client-level DP the clients send clipped deltas; they are summed unweighted,
    noised (:func:`client_dp_model`) and handed to the strategy as one averaged model.
    """
    dp: RoundPrivacy | None = getattr(spec, "dp", None)
    if dp is not None and dp.controller.distributed_example:
        raise UmbraError(
            "example-level DP with distributed noise needs secure aggregation: in the clear "
            "each update would carry only its share of the noise"
        )
    messages = prepare_train_messages(strategy, grid, rnd, arrays, spec)
    down = {m.metadata.dst_node_id: message_bytes([m]) for m in messages}
    replies = send_and_receive(grid, messages, timeout=spec.node_timeout_s) if messages else []
    ok = [m for m in replies if not m.has_error()]
    for m in replies:
        if m.has_error():
            log.warning("client reply error: %s", m.error.reason)
    if not ok and not (dp is not None and dp.client_level):
        reasons = "; ".join(sorted({str(m.error.reason) for m in replies if m.has_error()}))
        raise UmbraError(f"round {rnd}: no client returned an update ({reasons or 'timeout'})")
    per_client = {
        reply_partition(m): {"up": message_bytes([m]), "down": down.get(m.metadata.src_node_id, 0)}
        for m in ok
    }
    if dp is not None and dp.client_level:
        summed = {k: np.zeros_like(v, dtype=np.float64) for k, v in arrays.items()}
        for m in ok:
            for k, v in m.content.array_records["arrays"].items():
                summed[k] += v.numpy()
        new = client_dp_model(arrays, summed, received=len(ok), sampled=len(messages), dp=dp)
        losses = [x for m in ok if np.isfinite(x := _loss(m))]  # DP clients keep their loss
        metrics = {"train-total": float(np.mean(losses))} if losses else {}
        record, agg_metrics = strategy_step(strategy, rnd, new, metrics)
    else:
        record, agg_metrics = strategy.aggregate_train(rnd, ok)
    if record is None:
        raise UmbraError(f"round {rnd}: aggregation failed")
    return RoundOutcome(
        record=record,
        metrics=agg_metrics,
        bytes_up=sum(c["up"] for c in per_client.values()),
        bytes_down=sum(down.values()),
        clients=len(ok),
        per_client=per_client,
    )


def _loss(msg: Message) -> float:
    metrics = next(iter(msg.content.metric_records.values()))
    return float(metrics.get("train-total", float("nan")))  # type: ignore[arg-type]


def strategy_step(
    strategy: ModalityFedAvg, rnd: int, averaged: dict[str, np.ndarray], metrics: dict[str, float]
) -> tuple[ArrayRecord | None, MetricRecord | None]:
    """Hand an already-averaged update (e.g. from secure aggregation) to the strategy.

    The strategy sees one reply holding the average, so FedAvg/FedProx keep it as is and
    FedAdam/SCAFFOLD apply their server-side step to it.
    """
    counts: dict[str, int | float | list[int] | list[float]] = {
        "num-examples": 1,
        "partition-id": 0,
        **metrics,
    }
    for m in strategy_modalities(averaged):
        counts[count_key(m)] = 1
    content = RecordDict({"arrays": to_record(averaged), "metrics": MetricRecord(counts)})
    reply = Message(content=content, dst_node_id=0, message_type=MessageType.TRAIN)
    return strategy.aggregate_train(rnd, [reply])


def strategy_modalities(arrays: dict[str, np.ndarray]) -> set[str]:
    return {m for k in arrays if (m := parameter_modality(strip_prefix(k))) is not None}


register_train_round("none", plain_train_round)
