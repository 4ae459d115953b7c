"""One party of the k-party chain (``psi_chain``) as its own process: ``umbra psi chain``.

Party ``P_i`` joins ``P_{i-1}`` (``--join HOST:PORT``) and serves ``P_{i+1}`` (``--serve
PORT``); the first party only serves, the last only joins. Each party listens before it
joins, so the parties may start in any order within the timeout::

    P_1 serve S_1 ◀── P_2 join S_2, learns R_2; serve R_2 ◀── P_3 join S_3, learns R_3 = result
    P_1 ◀── RESULT ── P_2 ◀── RESULT (sorted digests of the result) ── P_3

The result travels back along the same connections: every party checks that each digest
is in the set it served (its running intersection) and in its own set, then passes it
upstream. Who learns what is ``psi_chain``'s table; across processes the chain reveals the
intersection (no ``--cardinality-only``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from umbra.services.psi import PsiConfig
from umbra.services.psi_errors import PsiError
from umbra.services.psi_ids import IdSet
from umbra.services.psi_network import (
    DEFAULT_TIMEOUT_S,
    Channel,
    accept,
    connect,
    join_session,
    listen,
    send_result,
    serve_session,
)

__all__ = ["ChainPartyResult", "chain_party"]


@dataclass(frozen=True)
class ChainPartyResult:
    """One chain party's view: the result's positions in its set (ascending digest, the
    same record order at every party) and those ids; ``running_size`` is the size of the
    prefix intersection it learned (``None`` for the first party)."""

    size: int
    positions: tuple[int, ...]
    shared: tuple[str, ...]
    running_size: int | None
    bytes_sent: int
    bytes_received: int


def chain_party(
    ids: IdSet,
    config: PsiConfig,
    *,
    upstream: tuple[str, int] | None = None,
    listen_on: tuple[str, int] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    on_listening: Callable[[str, int], None] | None = None,
) -> ChainPartyResult:
    """Run this party's part of the chain: join ``upstream`` (unless first), serve on
    ``listen_on`` (unless last), and return the result as this party sees it."""
    if upstream is None and listen_on is None:
        raise PsiError("a chain party joins the previous party, serves the next, or both")
    if config.cardinality_only:
        raise PsiError("a chain across processes reveals the intersection: no --cardinality-only")
    if len(ids) > config.max_ids:
        raise PsiError(f"this set has {len(ids)} ids, more than max_ids = {config.max_ids}")
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(listen(*listen_on, on_listening)) if listen_on else None
        up: Channel | None = None
        down: Channel | None = None
        running, running_size = ids, None
        if upstream is not None:
            up = stack.enter_context(connect(*upstream, config.max_ids, timeout_s).refusing())
            _, positions = join_session(up, ids, config, share_result=True)
            assert positions is not None  # the chain never runs cardinality-only
            running, running_size = ids.subset(positions), len(positions)
        if listener is not None:
            down = stack.enter_context(accept(listener, config.max_ids, timeout_s).refusing())
            served = serve_session(down, running, config)
            if served.positions is None:
                raise PsiError("the next party of the chain did not announce the result")
            digests = [running.digests[p] for p in served.positions]
        else:
            digests = list(running.digests)  # the last party: its running set is the result
        if up is not None:
            send_result(up, digests)
        positions = ids.canonical(ids.positions_of(digests))
        open_channels = [c for c in (up, down) if c is not None]
        return ChainPartyResult(
            size=len(positions),
            positions=positions,
            shared=tuple(ids.ids[p] for p in positions),
            running_size=running_size,
            bytes_sent=sum(c.sent for c in open_channels),
            bytes_received=sum(c.received for c in open_channels),
        )
    raise AssertionError("unreachable")  # pragma: no cover  (ExitStack may swallow, for mypy)
