"""The SecAgg+ communication graph and its parameters (Bell et al., CCS 2020, §3-4).

Each client masks with, and Shamir-shares its secrets among, its neighbours only. Two regimes:

* **complete graph** (Bonawitz et al., CCS 2017) for ``n <= COMPLETE_GRAPH_MAX_CLIENTS``:
  every client is every other's neighbour and the Shamir threshold is the round threshold
  ``t`` among all ``n`` holders. Any ``n - t`` dropouts are recovered and fewer than ``t``
  colluding clients (with the server) learn nothing beyond the sum, deterministically;
* **random k-regular graph** (Bell et al.) beyond: a Harary graph H(k, n) (each node joined
  to the k/2 nearest nodes on each side of a cycle) over a uniformly random ordering of the
  clients, with degree ``k`` and per-neighbourhood threshold ``tau`` chosen by
  `graph_parameters` from the paper's failure events, for a corrupt fraction ``gamma`` and
  a dropout fraction ``delta = 1 - t / n``:

  - *security* (probability <= 2^-sigma): no honest client has ``tau`` or more corrupt
    neighbours (they would hold both of its secrets) and the honest surviving clients stay
    connected (else the server learns partial sums). Union bounds over the n clients with
    hypergeometric tails (scipy): ``n P[Hyp(n-1, gamma n, k) >= tau]`` plus
    ``n P[k/2 consecutive positions all corrupt or dropped]``;
  - *correctness* (probability <= 2^-eta): every client keeps ``tau`` surviving
    neighbours: ``n P[Hyp(n-1, delta n, k) > k - tau]``;
  - ``2 tau > k + 1``: a server that tells half of the holders a client dropped and the
    other half it survived still cannot collect ``tau`` shares of both of its secrets.

The ordering comes from a 32-byte seed through the ChaCha20 PRG, so every party derives the
same graph from (seed, ids); the seed itself is fixed by commit-reveal among the clients
(`graph_seed`), not by the server. The bounds treat colluders and dropouts as independent
of the graph: true for colluders (the seed is unknown until every commitment is in), an
assumption for dropouts (an honest-but-curious server does not fake them).
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import hypergeom

from umbra.secure.secagg.constants import (
    COMPLETE_GRAPH_MAX_CLIENTS,
    CORRECTNESS_BITS,
    CORRUPT_FRACTION,
    GRAPH_SEED_LABEL,
    KEY_BYTES,
    SECURITY_BITS,
)
from umbra.secure.secagg.crypto import prg_uint32

__all__ = [
    "CollusionBound",
    "GraphParameters",
    "collusion_bound",
    "correctness_failure",
    "corrupt_neighbourhood_probability",
    "default_degree",
    "graph_parameters",
    "graph_seed",
    "neighbour_graph",
    "removed_run_probability",
    "security_failure",
    "short_neighbourhood_probability",
    "shuffle_ids",
]

_GRAPH_PURPOSE = b"umbra/secagg+/v1/graph"


# ----------------------------------------------------------------------------- bounds


def corrupt_neighbourhood_probability(n: int, k: int, tau: int, corrupt: int) -> float:
    """P[a given honest client has >= ``tau`` corrupt clients among its ``k`` neighbours].

    Its neighbours are a uniform ``k``-subset of the other ``n - 1`` clients, of which
    ``corrupt`` collude: a hypergeometric tail.
    """
    return float(hypergeom.sf(tau - 1, n - 1, min(corrupt, n - 1), k))


def short_neighbourhood_probability(n: int, k: int, tau: int, dropped: int) -> float:
    """P[a given client keeps fewer than ``tau`` of its ``k`` neighbours] when ``dropped``
    of the other ``n - 1`` clients drop out (more than ``k - tau`` neighbours gone)."""
    return float(hypergeom.sf(k - tau, n - 1, min(dropped, n - 1), k))


def removed_run_probability(n: int, k: int, removed: int) -> float:
    """P[the ``k/2`` positions after a given one in the random order are all removed].

    Removing nodes disconnects H(k, n) only where ``k/2`` consecutive nodes of the cycle are
    removed (any two remaining nodes with fewer removed nodes between them stay adjacent).
    """
    half = k // 2
    if half == 0:
        return 1.0
    if removed < half:
        return 0.0
    return math.exp(sum(math.log((removed - i) / (n - i)) for i in range(half)))


def security_failure(n: int, k: int, tau: int, *, corrupt: int, dropped: int) -> float:
    """Upper bound on P[some honest client's update can be learned] in one round.

    ``corrupt`` clients collude with the server, ``dropped`` drop out (both independent of
    the graph). Complete graph (``k >= n - 1``): 0 if ``corrupt < tau``, else 1.
    """
    if corrupt >= n:
        return 1.0
    if k >= n - 1:
        return 0.0 if corrupt < tau else 1.0
    neighbourhood = n * corrupt_neighbourhood_probability(n, k, tau, corrupt)
    disconnect = n * removed_run_probability(n, k, corrupt + dropped)
    return min(1.0, neighbourhood + disconnect)


def correctness_failure(n: int, k: int, tau: int, *, dropped: int) -> float:
    """Upper bound on P[some client's secrets cannot be reconstructed] with ``dropped``
    dropouts. Complete graph: 0 if ``dropped <= n - tau``, else 1."""
    if k >= n - 1:
        return 0.0 if dropped <= n - tau else 1.0
    return min(1.0, n * short_neighbourhood_probability(n, k, tau, dropped))


@dataclass(frozen=True)
class GraphParameters:
    """Degree ``k`` and Shamir threshold ``tau`` of a round, with their failure bounds."""

    degree: int
    share_threshold: int
    complete: bool
    security_failure: float
    correctness_failure: float


@functools.lru_cache(maxsize=256)
def graph_parameters(
    num_clients: int,
    threshold: int,
    *,
    corrupt_fraction: float = CORRUPT_FRACTION,
    security_bits: int = SECURITY_BITS,
    correctness_bits: int = CORRECTNESS_BITS,
    complete_max: int = COMPLETE_GRAPH_MAX_CLIENTS,
) -> GraphParameters:
    """The graph for ``num_clients`` clients of which ``threshold`` (t) must survive.

    Complete graph with ``tau = t`` up to ``complete_max`` clients; beyond, the smallest
    even degree ``k < n - 1`` (and for it the largest ``tau``) whose bounds meet
    ``2^-security_bits`` with ``floor(corrupt_fraction n)`` colluders and
    ``2^-correctness_bits`` with ``n - t`` dropouts (Bell et al., CCS 2020); the complete
    graph when no sparse degree does. Beyond ``complete_max``, raises ValueError naming the
    parameters when not even the complete graph hides an update from
    ``floor(corrupt_fraction n)`` colluders (they reach ``t``).
    """
    n, t = num_clients, threshold
    if n < 1:
        raise ValueError(f"num_clients must be >= 1, got {n}")
    if not 1 <= t <= n:
        raise ValueError(f"threshold must be in [1, num_clients={n}], got {t}")
    if not 0 <= corrupt_fraction < 1:
        raise ValueError(f"corrupt_fraction must be in [0, 1), got {corrupt_fraction}")
    corrupt, dropped = math.floor(corrupt_fraction * n), n - t
    sigma, eta = 2.0**-security_bits, 2.0**-correctness_bits
    if n <= complete_max:  # protects against t - 1 colluders, whatever gamma
        return GraphParameters(max(n - 1, 0), t, True, 0.0, 0.0)
    for k in range(2, n - 1, 2):
        tau = _largest_correct_tau(n, k, dropped, eta)
        if tau is None or 2 * tau <= k + 1:
            continue
        sec = security_failure(n, k, tau, corrupt=corrupt, dropped=dropped)
        if sec <= sigma:
            cor = correctness_failure(n, k, tau, dropped=dropped)
            return GraphParameters(k, tau, False, sec, cor)
    # no sparse degree meets the bounds: the complete graph (k = n - 1) always does
    return _complete(n, t, corrupt, corrupt_fraction)


def _complete(n: int, t: int, corrupt: int, corrupt_fraction: float) -> GraphParameters:
    if corrupt >= t:
        raise ValueError(
            f"no neighbour graph of degree k <= n - 1 = {n - 1} protects an update: "
            f"threshold t = {t} of n = {n} clients does not exceed the {corrupt} colluders "
            f"of corrupt_fraction {corrupt_fraction:g}"
        )
    return GraphParameters(max(n - 1, 0), t, True, 0.0, 0.0)


def _largest_correct_tau(n: int, k: int, dropped: int, eta: float) -> int | None:
    """The largest ``tau`` in [1, k] with ``correctness_failure <= eta`` (None if none)."""
    # k - tau dropped neighbours are tolerated: find the smallest q with n P[X > q] <= eta
    q = int(hypergeom.isf(eta / n, n - 1, min(dropped, n - 1), k))
    q = max(0, min(q, k))
    while q > 0 and n * float(hypergeom.sf(q - 1, n - 1, min(dropped, n - 1), k)) <= eta:
        q -= 1
    while q <= k and n * float(hypergeom.sf(q, n - 1, min(dropped, n - 1), k)) > eta:
        q += 1
    tau = k - q
    return tau if tau >= 1 else None


@dataclass(frozen=True)
class CollusionBound:
    """How many clients may collude with the server before an update can be learned."""

    num_clients: int
    threshold: int
    degree: int
    share_threshold: int
    complete: bool
    #: the largest number of colluding clients the round tolerates
    colluders: int
    #: P[some honest update exposed] with that many colluders (0: never, on the complete graph)
    failure_probability: float


def collusion_bound(
    num_clients: int,
    threshold: int,
    *,
    corrupt_fraction: float = CORRUPT_FRACTION,
    security_bits: int = SECURITY_BITS,
    correctness_bits: int = CORRECTNESS_BITS,
    complete_max: int = COMPLETE_GRAPH_MAX_CLIENTS,
) -> CollusionBound:
    """The collusion the round with the `graph_parameters` of ``(num_clients, threshold)``
    tolerates: on the complete graph ``t - 1`` colluders, always (Bonawitz et al. 2017,
    Thm. 6.3); on a sparse graph the largest number ``c`` of colluders (placed independently
    of the graph) for which `security_failure` with ``n - t`` dropouts stays within
    ``2^-security_bits`` (Bell et al. 2020), and that bound.

    What any exact sum reveals is not counted: when every other summed client colludes,
    the sum itself gives the last honest client's update away.
    """
    n, t = num_clients, threshold
    params = graph_parameters(
        n,
        t,
        corrupt_fraction=corrupt_fraction,
        security_bits=security_bits,
        correctness_bits=correctness_bits,
        complete_max=complete_max,
    )
    k, tau = params.degree, params.share_threshold
    if params.complete:
        return CollusionBound(n, t, k, tau, True, tau - 1, 0.0)
    sigma = 2.0**-security_bits

    def fails(c: int) -> float:
        return security_failure(n, k, tau, corrupt=c, dropped=n - t)

    lo, hi = 0, n  # fails(lo) <= sigma < fails(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fails(mid) <= sigma:
            lo = mid
        else:
            hi = mid
    return CollusionBound(n, t, k, tau, False, lo, fails(lo))


def default_degree(num_clients: int, threshold: int | None = None) -> int:
    """The degree `graph_parameters` picks (``threshold`` defaults to ``ceil(2n/3)``)."""
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    t = math.ceil(2 * num_clients / 3) if threshold is None else threshold
    return graph_parameters(num_clients, t).degree


# ----------------------------------------------------------------------------- seed


def graph_seed(reveals: Mapping[int, bytes], *, round_number: int) -> bytes:
    """The graph seed: SHA-256 over the round and every client's revealed randomness.

    ``reveals`` maps each roster id to its 32-byte ``r_i``, revealed only after every
    client committed to ``H(r_i)``; one honest client's uniform ``r_i`` makes the seed
    uniform, whatever the server and the other clients chose.
    """
    h = hashlib.sha256(GRAPH_SEED_LABEL + struct.pack("<QQ", round_number, len(reveals)))
    for cid in sorted(reveals):
        r = reveals[cid]
        if len(r) != KEY_BYTES:
            raise ValueError(f"graph randomness must be {KEY_BYTES} bytes, got {len(r)}")
        h.update(struct.pack("<Q", cid) + r)
    return h.digest()


# ----------------------------------------------------------------------------- graph


def shuffle_ids(client_ids: Sequence[int], *, seed: bytes) -> list[int]:
    """Fisher-Yates shuffle of the sorted ids driven by the ChaCha20 PRG (rejection sampling)."""
    ids = sorted(client_ids)
    n = len(ids)
    length = 2 * n + 64
    stream = prg_uint32(seed, length=length, round_number=0, purpose=_GRAPH_PURPOSE)
    pos = 0
    for i in range(n - 1, 0, -1):
        bound = i + 1
        limit = (1 << 32) - ((1 << 32) % bound)
        while True:
            if pos >= len(stream):  # rare: extend deterministically
                length *= 2
                stream = prg_uint32(seed, length=length, round_number=0, purpose=_GRAPH_PURPOSE)
            r = int(stream[pos])
            pos += 1
            if r < limit:
                break
        j = r % bound
        ids[i], ids[j] = ids[j], ids[i]
    return ids


def neighbour_graph(
    client_ids: Sequence[int], *, degree: int, seed: bytes
) -> dict[int, frozenset[int]]:
    """Symmetric neighbour sets (a node is not its own neighbour).

    ``degree`` is rounded up to even; ``degree >= n - 1`` gives the complete graph (the
    seed is then unused).
    """
    n = len(client_ids)
    if len(set(client_ids)) != n:
        raise ValueError("client_ids must be distinct")
    if degree < 0:
        raise ValueError(f"degree must be >= 0, got {degree}")
    if degree >= n - 1:
        everyone = frozenset(client_ids)
        return {c: everyone - {c} for c in client_ids}
    half = (degree + 1) // 2
    order = shuffle_ids(client_ids, seed=seed)
    index = np.arange(n)
    graph: dict[int, frozenset[int]] = {}
    for p, c in enumerate(order):
        offsets = np.concatenate([index[1 : half + 1], -index[1 : half + 1]])
        graph[c] = frozenset(order[(p + d) % n] for d in offsets.tolist())
    return graph
