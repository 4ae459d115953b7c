"""An in-process SecAgg+ round for tests and benchmarks: every client and the server in one
process, with dropouts, tampering and byte and time accounting.

A run uses the Flower workflow (:mod:`umbra.secure.secagg.workflow`) and client mod
instead; this driver exercises the state machines alone, against the plaintext sum.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from umbra.secure.secagg import (
    PayloadLayout,
    ProtocolViolation,
    SecAggAbort,
    SecAggConfig,
    SecAggPlusClient,
    SecAggPlusServer,
)
from umbra.secure.secagg.advert import NodeIdentity
from umbra.secure.secagg.constants import (
    STAGE_ADVERTISE_KEYS,
    STAGE_COLLECT_MASKED,
    STAGE_REVEAL_SEED,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
)
from umbra.secure.secagg.messages import Message

__all__ = ["RoundAborted", "Transcript", "message_nbytes", "run_secagg_round"]

log = logging.getLogger(__name__)


def message_nbytes(msg: Any) -> int:
    """Payload size of a message in bytes: array ``nbytes``, byte lengths, 8 per number."""
    if isinstance(msg, np.ndarray):
        return int(msg.nbytes)
    if isinstance(msg, bytes | bytearray):
        return len(msg)
    if isinstance(msg, str):
        return len(msg.encode())
    if isinstance(msg, Mapping):
        return sum(len(str(k).encode()) + message_nbytes(v) for k, v in msg.items())
    if isinstance(msg, list | tuple):
        return sum(message_nbytes(v) for v in msg)
    return 8


@dataclass
class Transcript:
    """Everything the server received and sent in one round, plus byte and time accounting."""

    received: list[tuple[str, int, Message]] = field(default_factory=list, repr=False)
    sent: list[tuple[str, int, Message]] = field(default_factory=list, repr=False)
    bytes_up: dict[int, int] = field(default_factory=dict)
    bytes_down: dict[int, int] = field(default_factory=dict)
    client_seconds: dict[int, float] = field(default_factory=dict)
    server_seconds: float = 0.0
    survivors: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()
    excluded: dict[int, str] = field(default_factory=dict)
    flagged: dict[int, str] = field(default_factory=dict)
    #: clients that refused a server message (ProtocolViolation), with the reason
    refused: dict[int, str] = field(default_factory=dict)
    aborted: str | None = None


Tamper = Callable[[str, int, Message], Message | None]


class RoundAborted(SecAggAbort):
    """:class:`SecAggAbort` with the transcript of the round up to the abort."""

    def __init__(self, message: str, *, transcript: Transcript) -> None:
        super().__init__(message)
        self.transcript = transcript


def run_secagg_round(
    updates: Sequence[np.ndarray | Mapping[str, np.ndarray]],
    *,
    threshold: int,
    clip_range: float | Mapping[str, float],
    dropouts: Collection[int] | Mapping[str, Collection[int]] = (),
    ints: Sequence[Mapping[str, np.ndarray]] | None = None,
    round_number: int = 1,
    degree: int = -1,
    share_threshold: int = -1,
    tamper: Tamper | None = None,
    seen_digests: set[bytes] | None = None,
    rng: np.random.Generator | None = None,
    identities: Mapping[int, NodeIdentity] | None = None,
    server_roster: Mapping[int, bytes] | None = None,
    run_id: int | None = None,
    ring_bits: int = 32,
) -> tuple[np.ndarray | dict[str, np.ndarray], Transcript]:
    """Run one in-process SecAgg+ round over ``updates`` (client ``i`` has id ``i``).

    Returns the **sum** of the surviving clients' updates (float64, within quantization
    error; an array, or a dict when updates or ``ints`` are dicts - ``ints`` sum exactly)
    and the transcript. ``dropouts`` maps a stage name (`constants.STAGES`) to the clients
    that stop answering at that stage; a plain collection means they drop after sharing
    keys (before sending their masked input), the case SecAgg+ recovers from. ``tamper``
    may rewrite (or drop, by returning None) any client-to-server message, for tests.
    ``identities`` (client id -> `NodeIdentity`) makes the clients sign and check
    advertisements; ``server_roster`` (and ``run_id``) makes the server check them too.
    ``ring_bits``: the round's ring, Z_{2^32} or Z_{2^16}.
    Raises :class:`RoundAborted` (a SecAggAbort with ``.transcript``) when fewer than ``threshold`` remain.
    """
    n = len(updates)
    if n < 1:
        raise ValueError("updates must hold at least one client")
    drop: Mapping[str, Collection[int]] = (
        dropouts if isinstance(dropouts, Mapping) else {STAGE_COLLECT_MASKED: dropouts}
    )
    unknown = set(drop) - {
        STAGE_ADVERTISE_KEYS,
        STAGE_REVEAL_SEED,
        STAGE_SHARE_KEYS,
        STAGE_COLLECT_MASKED,
        STAGE_UNMASK,
    }
    if unknown:
        raise ValueError(f"dropouts has unknown stages {sorted(unknown)}")
    as_dict = isinstance(updates[0], Mapping) or ints is not None
    floats = [u if isinstance(u, Mapping) else {"update": np.asarray(u)} for u in updates]
    int_parts = list(ints) if ints is not None else [{} for _ in range(n)]
    layout = PayloadLayout.from_arrays(floats[0], int_parts[0], clip=clip_range, num_clients=n,
                                       bits=ring_bits)  # fmt: skip
    rng = rng if rng is not None else np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    config = SecAggConfig(
        round_number=round_number,
        num_clients=n,
        threshold=threshold,
        vector_length=layout.size,
        degree=degree,
        share_threshold=share_threshold,
        ring_bits=ring_bits,
    )
    transcript = Transcript()
    server = SecAggPlusServer(
        config, seen_digests=seen_digests, roster=server_roster, run_id=run_id
    )
    explicit = degree != -1 or share_threshold != -1
    ids = identities or {}
    clients = {
        i: SecAggPlusClient(i, check_graph=not explicit, identity=ids.get(i)) for i in range(n)
    }
    gone: set[int] = set()

    def exchange(
        stage: str, requests: Mapping[int, Message], act: Callable[..., Message]
    ) -> dict[int, Message]:
        gone.update(drop.get(stage, ()))
        replies: dict[int, Message] = {}
        for cid, req in requests.items():
            transcript.sent.append((stage, cid, req))
            transcript.bytes_down[cid] = transcript.bytes_down.get(cid, 0) + message_nbytes(req)
            if cid in gone:
                continue
            start = time.perf_counter()
            try:
                reply: Message | None = act(cid, req)
            except ProtocolViolation as err:
                log.warning("secagg+ client %d refused %s: %s", cid, stage, err)
                transcript.refused[cid] = str(err)
                gone.add(cid)
                continue
            finally:
                transcript.client_seconds[cid] = (
                    transcript.client_seconds.get(cid, 0.0) + time.perf_counter() - start
                )
            if tamper is not None and reply is not None:
                reply = tamper(stage, cid, reply)
            if reply is None:
                continue
            transcript.received.append((stage, cid, reply))
            transcript.bytes_up[cid] = transcript.bytes_up.get(cid, 0) + message_nbytes(reply)
            replies[cid] = reply
        return replies

    def timed(fn: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            transcript.server_seconds += time.perf_counter() - start

    def encode(cid: int) -> np.ndarray:
        return layout.encode(floats[cid], int_parts[cid], rng=rng)

    try:
        req = timed(server.advertise_keys, list(range(n)))
        rep = exchange(STAGE_ADVERTISE_KEYS, req, lambda c, m: clients[c].advertise_keys(m))
        if not config.complete:
            req = timed(server.reveal_seed, rep)
            rep = exchange(STAGE_REVEAL_SEED, req, lambda c, m: clients[c].reveal_seed(m))
        req = timed(server.share_keys, rep)
        rep = exchange(STAGE_SHARE_KEYS, req, lambda c, m: clients[c].share_keys(m))
        req = timed(server.collect_masked, rep)
        rep = exchange(
            STAGE_COLLECT_MASKED,
            req,
            lambda c, m: clients[c].collect_masked_input(m, vector=encode(c)),
        )
        req = timed(server.unmask, rep)
        rep = exchange(STAGE_UNMASK, req, lambda c, m: clients[c].unmask(m))
        total, summed = timed(server.aggregate, rep)
    except SecAggAbort as err:
        transcript.aborted = str(err)
        raise RoundAborted(str(err), transcript=transcript) from err
    finally:
        st = server.state
        transcript.excluded, transcript.flagged = dict(st.excluded), dict(st.flagged)
        transcript.survivors, transcript.dropped = st.survivors, st.dropped
    float_sums, int_sums = layout.decode_sum(total, num_summed=summed)
    if not as_dict:
        return float_sums["update"], transcript
    return {**float_sums, **int_sums}, transcript
