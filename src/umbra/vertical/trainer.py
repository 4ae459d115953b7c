"""The label holder's training loop, independent of the transport.

One message per party per mini-batch carries the gradient of the previous batch and the
request for the next (so a batch costs one round trip, plus one per epoch to flush the
last gradient). ``exchange(action, {party: (config, arrays)})`` delivers the messages and
returns each party's reply arrays: over Flower's grid in :mod:`umbra.vertical.server_app`,
by direct calls in :func:`local_exchange` (tests, benchmarks).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from umbra.vertical import protocol as P
from umbra.vertical.label_holder import LabelHolder
from umbra.vertical.party import FeatureParty

__all__ = ["EpochStats", "Exchange", "local_exchange", "train_epoch"]

Arrays = dict[str, np.ndarray]
#: ``exchange(action, {party: (config, arrays)}) -> {party: reply arrays}``.
Exchange = Callable[[str, Mapping[int, tuple[dict[str, Any], Arrays]]], dict[int, Arrays]]


@dataclass(frozen=True)
class EpochStats:
    """One epoch as the label holder saw it."""

    epoch: int
    train_loss: float
    steps: int
    round_trips: int
    wall_s: float
    next_step: int


def train_epoch(
    holder: LabelHolder,
    exchange: Exchange,
    *,
    epoch: int,
    first_step: int,
    secure: bool,
    clip: float,
    observe: bool = False,
) -> EpochStats:
    """One pass over the aligned entities (see the module docstring)."""
    t0 = time.perf_counter()
    k = holder.parties
    pending: dict[int, np.ndarray] = {}
    step = first_step
    losses: list[float] = []
    sizes: list[int] = []
    trips = 0
    flags = {P.SECURE: int(secure), P.OBSERVE: int(observe)}
    for batch in holder.batches(epoch):
        requests = [holder.request(batch, p) for p in range(k)]
        msgs: dict[int, tuple[dict[str, Any], Arrays]] = {}
        for p, req in enumerate(requests):
            arrays: Arrays = {P.POSITIONS: req.positions, P.SLOTS: req.slots}
            if p in pending:
                arrays[P.GRAD] = pending[p]
            msgs[p] = ({P.STEP: step, P.BATCH: len(batch), **flags}, arrays)
        replies = exchange(P.STEP_ACTION, msgs)
        trips += 1
        if secure:
            total = holder.secure_total([replies[p][P.SHARE] for p in range(k)], len(batch), clip)
        else:
            rows = [replies[p][P.EMBEDDINGS] for p in range(k)]
            total = holder.plain_total(rows, requests, len(batch))
        loss, grad = holder.step(batch, total)
        losses.append(loss)
        sizes.append(len(batch))
        pending = {p: grad[req.slots].astype(np.float32) for p, req in enumerate(requests)}
        step += 1
    flush = {p: ({P.STEP: step, **flags}, {P.GRAD: g}) for p, g in pending.items()}
    exchange(P.STEP_ACTION, flush)
    trips += 1
    step += 1
    return EpochStats(
        epoch=epoch,
        train_loss=float(np.average(losses, weights=sizes)),
        steps=len(losses),
        round_trips=trips,
        wall_s=time.perf_counter() - t0,
        next_step=step,
    )


def local_exchange(
    parties: Sequence[FeatureParty], record: list[tuple[int, Arrays]] | None = None
) -> Exchange:
    """Deliver messages by calling the parties directly; ``record`` collects every reply
    (what the label holder receives)."""

    def exchange(
        action: str, msgs: Mapping[int, tuple[dict[str, Any], Arrays]]
    ) -> dict[int, Arrays]:
        out: dict[int, Arrays] = {}
        for p, (cfg, arrays) in msgs.items():
            res = parties[p].step(
                int(cfg[P.STEP]),
                positions=arrays.get(P.POSITIONS),
                slots=arrays.get(P.SLOTS),
                batch=int(cfg.get(P.BATCH, 0)),
                grad=arrays.get(P.GRAD),
                secure=bool(cfg.get(P.SECURE, 0)),
                observe=bool(cfg.get(P.OBSERVE, 0)),
            )
            key = P.SHARE if res is not None and res.dtype == np.uint32 else P.EMBEDDINGS
            out[p] = {} if res is None else {key: res}
            if record is not None:
                record.append((p, dict(out[p])))
        return out

    return exchange
