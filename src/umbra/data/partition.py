"""Split records across simulated clients (non-IID) and knock out modalities.

Partitioners (all seeded by a ``np.random.Generator``, pure numpy):

* ``iid``: a uniform random split into near-equal parts.
* ``dirichlet``: label skew. For every class, client shares are drawn from
  ``Dirichlet(alpha)`` (Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data
  Distribution for Federated Visual Classification", 2019,
  https://arxiv.org/abs/1909.06335), with the balancing rule of Yurochkin et al.'s
  reference code (a client already holding ``n / K`` records gets no more). Small alpha
  (0.1) gives each client few classes; large alpha (100) approaches IID.
* ``quantity``: quantity skew. Client sizes are ``min_size`` plus a multinomial draw with
  ``Dirichlet(alpha)`` probabilities; labels stay IID within a client.

Missing modalities: :func:`apply_missing` drops present cells at a per-modality rate and
:func:`absent_modalities` removes whole modalities at chosen clients (a hospital without a
microphone). Apply ``absent_modalities`` first, then ``apply_missing``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from umbra.errors import ConfigError, DataError

__all__ = [
    "PARTITIONERS",
    "absent_modalities",
    "apply_missing",
    "label_skew",
    "partition",
    "partition_dirichlet",
    "partition_iid",
    "partition_quantity",
    "register_partitioner",
]

#: ``(labels, num_clients, alpha, rng, min_size) -> one index array per client``.
Partitioner = Callable[[np.ndarray, int, float, np.random.Generator, int], list[np.ndarray]]
PARTITIONERS: dict[str, Partitioner] = {}


def register_partitioner(name: str) -> Callable[[Partitioner], Partitioner]:
    """Decorator adding a partitioner to :data:`PARTITIONERS`; a duplicate name raises."""

    def add(fn: Partitioner) -> Partitioner:
        if name in PARTITIONERS:
            raise ValueError(f"partitioner {name!r} is already registered")
        PARTITIONERS[name] = fn
        return fn

    return add


# --------------------------------------------------------------------------- validation
def _check_sizes(n: int, num_clients: int, min_size: int = 1) -> None:
    if isinstance(num_clients, bool) or not isinstance(num_clients, int | np.integer):
        raise ConfigError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    if num_clients < 1:
        raise ConfigError(f"num_clients must be >= 1, got {num_clients}")
    if min_size < 0:
        raise ConfigError(f"min_size must be >= 0, got {min_size}")
    if num_clients > n:
        raise DataError(f"num_clients ({num_clients}) exceeds the number of records ({n})")
    if num_clients * min_size > n:
        raise DataError(
            f"num_clients x min_size ({num_clients} x {min_size}) exceeds the number of "
            f"records ({n}); lower min_size or num_clients"
        )


def _check_alpha(alpha: float) -> None:
    if not (math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"alpha must be a finite number > 0, got {alpha}")


# --------------------------------------------------------------------------- partitioners
def partition_iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A uniform random split of ``range(n)`` into ``num_clients`` parts of size n//K or +1."""
    _check_sizes(n, num_clients)
    return [np.sort(p) for p in np.array_split(rng.permutation(n), num_clients)]


def partition_dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 10,
    *,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Label-skewed split: per class, client shares ~ ``Dirichlet(alpha * 1_K)``.

    Redraws (up to ``max_tries``) until every client holds ``>= min_size`` records; if
    that never happens (tiny alpha, many clients) the last draw is repaired by moving
    random records from the largest client to the smallest, one at a time.
    """
    labels = np.asarray(labels)
    n = len(labels)
    _check_sizes(n, num_clients, min_size)
    _check_alpha(alpha)
    classes = np.unique(labels)
    # a draw is kept as (shuffled class indices, cut points); the K pieces are cut only
    # from the accepted draw, so each try costs O(classes x K) in numpy, not in Python
    draw: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(max(1, max_tries)):
        draw = []
        sizes = np.zeros(num_clients, dtype=np.int64)
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            share = rng.dirichlet(np.full(num_clients, alpha))
            share = share * (sizes < n / num_clients)  # balancing rule
            total = share.sum()
            share = share / total if total > 0 else np.full(num_clients, 1.0 / num_clients)
            cuts = (np.cumsum(share)[:-1] * len(idx)).astype(np.int64)
            draw.append((idx, cuts))
            sizes += np.diff(np.concatenate(([0], np.clip(cuts, 0, len(idx)), [len(idx)])))
        if sizes.min() >= min_size:
            break
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for idx, cuts in draw:
        for k, piece in enumerate(np.split(idx, cuts)):
            parts[k].append(piece)
    out = [np.concatenate(p).astype(np.int64) for p in parts]
    _repair(out, min_size, rng)
    return [np.sort(p) for p in out]


def _repair(parts: list[np.ndarray], min_size: int, rng: np.random.Generator) -> None:
    """Move random records from the largest to the smallest part until all have min_size.

    One record per step; the sizes are kept up to date rather than recounted, so a step
    costs O(K) in numpy, not O(K) Python calls (1,000 clients need thousands of steps).
    """
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    while True:
        small, large = int(sizes.argmin()), int(sizes.argmax())
        if sizes[small] >= min_size:
            return
        j = int(rng.integers(len(parts[large])))
        parts[small] = np.append(parts[small], parts[large][j])
        parts[large] = np.delete(parts[large], j)
        sizes[small] += 1
        sizes[large] -= 1


def partition_quantity(
    n: int, num_clients: int, alpha: float, rng: np.random.Generator, min_size: int = 1
) -> list[np.ndarray]:
    """Quantity-skewed split: sizes ``min_size + Multinomial(n - K min_size, Dir(alpha))``."""
    _check_sizes(n, num_clients, min_size)
    _check_alpha(alpha)
    share = rng.dirichlet(np.full(num_clients, alpha))
    sizes = min_size + rng.multinomial(n - num_clients * min_size, share)
    cuts = np.cumsum(sizes)[:-1]
    return [np.sort(p) for p in np.split(rng.permutation(n), cuts)]


@register_partitioner("iid")
def _iid(
    labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator, m: int
) -> list[np.ndarray]:
    _check_sizes(len(labels), k, m)
    return partition_iid(len(labels), k, rng)


@register_partitioner("dirichlet")
def _dirichlet(
    labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator, m: int
) -> list[np.ndarray]:
    return partition_dirichlet(labels, k, alpha, rng, m)


@register_partitioner("quantity")
def _quantity(
    labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator, m: int
) -> list[np.ndarray]:
    return partition_quantity(len(labels), k, alpha, rng, m)


def partition(
    labels: np.ndarray,
    num_clients: int,
    *,
    scheme: str,
    alpha: float,
    seed: int,
    min_size: int = 10,
) -> list[np.ndarray]:
    """Split record indices ``0..len(labels)-1`` among clients with a registered scheme.

    Args:
        labels: int class labels ``(N,)``.
        num_clients: number of clients K, ``1 <= K <= N``.
        scheme: a key of :data:`PARTITIONERS` ("iid", "dirichlet", "quantity").
        alpha: Dirichlet concentration (> 0; ignored by "iid"; smaller = more skew).
        seed: seeds the ``np.random.Generator``.
        min_size: minimum records per client (``K * min_size <= N``).

    Returns:
        K sorted int64 index arrays; every record appears in exactly one.
    """
    if scheme not in PARTITIONERS:
        raise ConfigError(f"unknown partition scheme {scheme!r}; valid: {sorted(PARTITIONERS)}")
    _check_alpha(alpha)
    labels = np.asarray(labels)
    _check_sizes(len(labels), num_clients, min_size)
    return PARTITIONERS[scheme](labels, num_clients, alpha, np.random.default_rng(seed), min_size)


def label_skew(labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: int) -> float:
    """Mean total-variation distance (in [0, 1]) between each non-empty client's label
    distribution and the global one; 0 for a perfectly stratified split."""
    labels = np.asarray(labels)
    glob = np.bincount(labels, minlength=num_classes) / len(labels)
    tvs = [
        0.5 * np.abs(np.bincount(labels[p], minlength=num_classes) / len(p) - glob).sum()
        for p in parts
        if len(p) > 0
    ]
    if not tvs:
        raise ValueError("parts must hold at least one non-empty client")
    return float(np.mean(tvs))


# --------------------------------------------------------------------------- missingness
def _column(key: int | str, num_cols: int, modalities: Sequence[str] | None, what: str) -> int:
    if isinstance(key, str):
        if modalities is None or key not in modalities:
            raise ConfigError(f"{what}: unknown modality {key!r}; known: {list(modalities or [])}")
        return list(modalities).index(key)
    if not 0 <= int(key) < num_cols:
        raise ConfigError(f"{what}: modality index {key} outside [0, {num_cols})")
    return int(key)


def _rates(
    rates: Mapping[int | str, float] | Sequence[float] | np.ndarray,
    num_cols: int,
    modalities: Sequence[str] | None,
) -> np.ndarray:
    if isinstance(rates, Mapping):
        out = np.zeros(num_cols)
        for key, r in rates.items():
            out[_column(key, num_cols, modalities, "missing rates")] = float(r)
    else:
        out = np.asarray(rates, dtype=np.float64)
        if out.shape != (num_cols,):
            raise ConfigError(f"missing rates need one value per modality ({num_cols})")
    bad = ~((out >= 0) & (out <= 1))
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        name = modalities[j] if modalities is not None else j
        raise ConfigError(f"missing rate of modality {name} must be in [0, 1], got {out[j]}")
    return out


def apply_missing(
    mask: np.ndarray,
    *,
    rates: Mapping[int | str, float] | Sequence[float] | np.ndarray,
    seed: int,
    modalities: Sequence[str] | None = None,
) -> np.ndarray:
    """Drop each present cell of ``mask`` independently with its modality's rate.

    Args:
        mask: bool ``(N, M)`` presence mask; every record must hold a modality.
        rates: per modality, the probability in [0, 1] of dropping it: a mapping from
            column index (or name, with ``modalities``) to rate (absent keys: 0), or one
            value per column.
        seed: seeds the ``np.random.Generator``.
        modalities: column names, to allow names as keys of ``rates``.

    Returns:
        A new mask. A record whose every modality was dropped gets one of its originally
        present modalities back, chosen uniformly at random: no record is ever empty. So
        the realised drop rate of modality j on full rows is ``r_j - prod(r) / M``, a bit
        below ``r_j`` when every rate is high.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (N, M), got {mask.shape}")
    if not mask.any(axis=1).all():
        raise DataError(f"{int((~mask.any(axis=1)).sum())} records hold no modality")
    r = _rates(rates, mask.shape[1], modalities)
    rng = np.random.default_rng(seed)
    out = mask & (rng.random(mask.shape) >= r[None, :])
    empty = np.flatnonzero(~out.any(axis=1))
    if empty.size:
        present = mask[empty]  # (E, M)
        pick = np.floor(rng.random(len(empty)) * present.sum(axis=1)).astype(np.int64)
        col = (np.cumsum(present, axis=1) > pick[:, None]).argmax(axis=1)  # pick-th present
        out[empty, col] = True
    return out


def absent_modalities(
    mask: np.ndarray,
    client_index_lists: Sequence[np.ndarray],
    absent: Mapping[int, Sequence[int | str]],
    *,
    modalities: Sequence[str] | None = None,
) -> np.ndarray:
    """Remove whole modalities at chosen clients.

    Args:
        mask: bool ``(N, M)`` presence mask.
        client_index_lists: record indices of each client (as from :func:`partition`).
        absent: client number -> modalities (column indices, or names with
            ``modalities``) that client does not have at all.
        modalities: column names, to allow names in ``absent``.

    Returns:
        A new mask. Raises :class:`DataError` if a modality would be absent at every
        client or if a record would be left with no modality.
    """
    out = np.array(mask, dtype=bool, copy=True)
    if out.ndim != 2:
        raise ValueError(f"mask must have shape (N, M), got {out.shape}")
    num_clients = len(client_index_lists)
    lacking: dict[int, set[int]] = {}
    for client, mods in absent.items():
        if not 0 <= int(client) < num_clients:
            raise ConfigError(f"absent modalities: client {client} outside [0, {num_clients})")
        for key in mods:
            col = _column(key, out.shape[1], modalities, "absent modalities")
            lacking.setdefault(col, set()).add(int(client))
            out[np.asarray(client_index_lists[int(client)], dtype=np.int64), col] = False
    for col, clients in lacking.items():
        if len(clients) == num_clients:
            name = modalities[col] if modalities is not None else col
            raise DataError(f"absent modalities: modality {name} is absent at every client")
    emptied = np.asarray(mask, dtype=bool).any(axis=1) & ~out.any(axis=1)
    if emptied.any():
        raise DataError(
            f"absent modalities leave {int(emptied.sum())} records with no modality; "
            "keep at least one modality per client (apply missing rates afterwards)"
        )
    return out
