"""k-party private set intersection as a chain of two-party sessions, so that no party
learns another's pairwise intersection.

A leader running two-party PSI with every other party would learn each pairwise
intersection ``S_1 ∩ S_j``, far more than the result. The chain passes the *running*
intersection on instead (parties ``P_1 … P_k`` in the given order, ``R_1 = S_1``):

* step ``i`` (``i = 2 … k``): ``P_{i-1}`` is the server with its running set ``R_{i-1}``,
  ``P_i`` the client with its own set ``S_i``; ``P_i`` learns ``R_i = R_{i-1} ∩ S_i``
  (which is ``S_1 ∩ … ∩ S_i``) and ``|R_{i-1}|``; ``P_{i-1}`` learns ``|S_i|``;
* ``P_k`` holds the result ``R_k`` and sends its SHA-256 id digests (sorted) to every
  other party, which checks that each is in its own set and keeps its matching ids.

So ``P_1`` and ``P_k`` learn only the result (and one neighbour's set size); a middle
party ``P_i`` also learns the prefix intersection ``S_1 ∩ … ∩ S_i`` — a superset of the
result, never a pairwise intersection with a party further down. Put the parties whose
prefix knowledge matters least in the middle. Under ``cardinality_only`` the last step
reveals only a size, ``P_k`` broadcasts that size, and the middle parties still learn
their prefix intersections (the chain needs them). The guarantees assume semi-honest
parties who do not collude: two colluding neighbours ``P_{i-1}, P_{i+1}`` learn ``R_{i-1}``
and ``R_i``, i.e. which of ``R_{i-1}`` ``P_i`` holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from umbra.services.psi import PsiClient, PsiConfig, PsiServer
from umbra.services.psi_errors import PsiError
from umbra.services.psi_ids import IdSet

__all__ = ["ChainResult", "PartyView", "intersect_chain"]

DIGEST_BYTES = 32


@dataclass(frozen=True)
class PartyView:
    """What one party of the chain ends up with.

    ``positions``: indices into this party's input set of the shared ids, in the canonical
    order (ascending id digest) that every party shares, so ``positions[j]`` of every party
    is the same record; ``None`` under cardinality-only. ``running_size``: the size of the
    prefix intersection this party held (``None`` for the first party, which holds its own
    set). ``bytes_sent``: what this party put on the wire (serialized messages).
    """

    size: int
    positions: tuple[int, ...] | None
    shared: tuple[str, ...] | None
    running_size: int | None
    bytes_sent: int


@dataclass(frozen=True)
class ChainResult:
    """The intersection of all parties' sets and each party's view of it."""

    size: int
    views: tuple[PartyView, ...]

    @property
    def bytes_sent(self) -> int:
        return sum(v.bytes_sent for v in self.views)


def intersect_chain(sets: Sequence[IdSet], config: PsiConfig | None = None) -> ChainResult:
    """The intersection of ``sets`` (two or more), party ``i`` holding ``sets[i]``."""
    cfg = config or PsiConfig()
    if len(sets) < 2:
        raise PsiError(f"a private set intersection needs at least 2 parties, got {len(sets)}")
    if len({s.ignore_case for s in sets}) != 1:
        raise PsiError("the id sets were normalised with different case policies")
    for i, s in enumerate(sets):
        if len(s) > cfg.max_ids:
            raise PsiError(f"party {i + 1} has {len(s)} ids, more than max_ids = {cfg.max_ids}")
    k = len(sets)
    sent = [0] * k
    running: IdSet = sets[0]
    running_sizes: list[int | None] = [None] * k
    final_size = 0
    for i in range(1, k):
        last = i == k - 1
        step_cfg = PsiConfig(
            cardinality_only=cfg.cardinality_only and last,
            data_structure=cfg.data_structure,
            fpr=cfg.fpr,
            max_ids=cfg.max_ids,
        )
        server = PsiServer(running, step_cfg)
        client = PsiClient(sets[i], step_cfg)
        setup = server.setup(len(sets[i]))
        request = client.request()
        response = server.respond(request, client_size=len(sets[i]))
        sent[i - 1] += len(setup) + len(response)
        sent[i] += len(request)
        running_sizes[i] = len(running)
        final_size, positions = client.finish(setup, response)
        if positions is not None:
            running = sets[i].subset(positions)
    if cfg.cardinality_only:
        sent[k - 1] += 8 * (k - 1)  # the size, as a 64-bit integer, to every other party
        views = tuple(
            PartyView(final_size, None, None, running_sizes[i], sent[i]) for i in range(k)
        )
        return ChainResult(final_size, views)
    result = sorted(running.digests)
    sent[k - 1] += DIGEST_BYTES * len(result) * (k - 1)
    views_list = []
    for i, s in enumerate(sets):
        pos = tuple(s.positions_of(result))
        views_list.append(
            PartyView(len(pos), pos, tuple(s.ids[p] for p in pos), running_sizes[i], sent[i])
        )
    return ChainResult(len(result), tuple(views_list))
