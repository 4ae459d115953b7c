"""What one client contributes to a secure aggregate, and how the server turns sums back
into a modality-aware average (pure numpy: no Flower, no cryptography).

Secure aggregation reveals only sums, so every weighted mean must be written as a ratio of
sums. For a parameter ``k`` of weight group ``g(k)`` (shared parameters: ``num-examples``;
an encoder or projection of modality ``m``: ``n-m``; the ``cv.`` SCAFFOLD control keys
follow the key they control) client ``i`` contributes

    c_{i,k} = (n_{i,g(k)} / B) * (y_{i,k} - x_k)        (model keys)
    c_{i,k} = (n_{i,g(k)} / B) * dc_{i,k}                (``cv.`` keys: already deltas)

plus the exact integer counts ``n_{i,g}``. The server computes
``x_k + sum_i c_{i,k} / (sum_i n_{i,g(k)} / B)``, which equals the plaintext
modality-aware average (the strategies' ``modality_weighted_average``) of the
``y_i`` up to quantization error; a group nobody holds keeps the previous value (zeros
for ``cv.`` deltas), as in the plaintext rule.

Normalisation. ``B`` (``weight_scale``) is a public number the server announces each
round: the mean number of examples per summed client of the previous round (which the
server learnt from the previous *aggregate*), or `DEFAULT_WEIGHT_SCALE` in the first
round. It keeps ``n_i / B`` near 1, so the weighted deltas use the fixed-point range
``±clip_range`` well (quantization step ``2 clip_range n / 2^32`` in SecAgg+'s ring).
Values beyond ``±clip_range`` are clipped by the encoder; `clipped_fraction` reports how
many were.

Training metrics (``train-*`` losses) are aggregated securely too, weighted by
``num-examples`` and divided by `METRIC_SCALE` so that they fit the same range.

DP hook: a reply whose metrics hold ``dp-unweighted = 1`` carries arrays that are already
the client's clipped *update* (a delta): noised (central mode, CKKS shares) or noiseless
with its per-group sensitivities (``dp-sens-<group>``) when SecAgg+ adds the noise after
quantisation (:func:`integer_noise_for`, the distributed discrete Gaussian). They are
contributed as sent with weight 1 (a uniform sum), and the server adds ``sum / number of
summed clients`` to ``x``; the counts are still summed, the training losses are not sent
(they are not differentially private). A round mixing both kinds aborts.

Shared-coordinate sparsification (``compression.method = "shared-k"``): when the round's
config names it, every client keeps the same public coordinates of each model array
(:class:`~umbra.secure.shared_coordinates.RoundCoordinates`, the `round_coordinates` of
the round's config: public, from the run seed, the round and the previous released
aggregate), so only those are weighted, quantised, masked and sent
(:func:`shared_sparsify`, :func:`shared_shapes`), and the server scatters the sums back
(:func:`shared_densify`):
the unsent coordinates sum to zero and keep ``x``. ``cv.`` keys and metrics stay dense.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from umbra.data.dataset import MODALITIES
from umbra.federation.common import CONTROL_PREFIX
from umbra.privacy.controller import (
    CLIENT_GROUP,
    DP_INTEGER_NOISE,
    DP_MODE,
    DP_NOISE_SHARES,
    DP_RANGE,
    DP_UNWEIGHTED,
    dp_config_keys,
    dp_mode_code,
    dp_sensitivity_key,
)
from umbra.privacy.ddg import IntegerNoise, plan_integer_noise
from umbra.secure.shared_coordinates import RoundCoordinates

__all__ = [
    "CONTROL_PREFIX",
    "DEFAULT_WEIGHT_SCALE",
    "METRIC_KEYS",
    "METRIC_SCALE",
    "WEIGHT_GROUPS",
    "Contribution",
    "clipped_fraction",
    "combine_sums",
    "dp_range_of",
    "dp_sums",
    "int_template",
    "integer_noise_for",
    "make_contribution",
    "next_weight_scale",
    "payload_template",
    "shared_densify",
    "shared_shapes",
    "shared_sparsify",
]

#: Weight groups, in the order of the integer count vectors.
WEIGHT_GROUPS: tuple[str, ...] = ("num-examples", *(f"n-{m}" for m in MODALITIES))
#: Training metrics aggregated securely (weighted by num-examples).
METRIC_KEYS: tuple[str, ...] = ("train-ce", "train-align", "train-total")
#: Metrics travel divided by this, so that losses up to ``METRIC_SCALE * clip`` fit.
METRIC_SCALE = 64.0
#: ``B`` in the first round (Flower's SecAgg+ uses a fixed ``max_weight = 1000``).
DEFAULT_WEIGHT_SCALE = 1000.0
_METRIC_PREFIX = "metric/"

KeyModality = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Contribution:
    """One client's payload: float arrays (quantized/encrypted) and exact int64 counts."""

    floats: dict[str, np.ndarray]
    ints: dict[str, np.ndarray]


def _strip(key: str) -> str:
    return key[len(CONTROL_PREFIX) :] if key.startswith(CONTROL_PREFIX) else key


def _group(key: str, key_modality: KeyModality) -> int:
    modality = key_modality(_strip(key))
    if modality is None:
        return 0
    name = f"n-{modality}"
    if name not in WEIGHT_GROUPS:
        raise ValueError(f"parameter {key!r} has unknown modality {modality!r}")
    return WEIGHT_GROUPS.index(name)


def payload_template(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Zero float arrays of the payload for arrays of ``shapes`` (sorted names, fixed order)."""
    out = {k: np.zeros(shapes[k], dtype=np.float64) for k in sorted(shapes)}
    out.update({_METRIC_PREFIX + m: np.zeros(1) for m in METRIC_KEYS})
    return out


def int_template() -> dict[str, np.ndarray]:
    """Zero int arrays of the payload: counts, applied weights, DP flag, client count, and
    the DP range divisor ρ (each DP contribution's floats travel divided by it)."""
    g = len(WEIGHT_GROUPS)
    return {
        "counts": np.zeros(g, dtype=np.int64),
        "weights": np.zeros(g, dtype=np.int64),
        "dp": np.zeros(1, dtype=np.int64),
        "clients": np.zeros(1, dtype=np.int64),
        "dp-range": np.zeros(2, dtype=np.int64),
    }


def make_contribution(
    x: Mapping[str, np.ndarray],
    reply_arrays: Mapping[str, np.ndarray],
    metrics: Mapping[str, float | int],
    *,
    key_modality: KeyModality,
    weight_scale: float,
    dp_range: int = 1,
) -> Contribution:
    """Weighted update of one client (see the module docstring).

    Args:
        x: the global arrays the client started from (model keys; ``cv.`` keys ignored).
        reply_arrays: the client's reply (``y``, plus ``cv.`` control deltas).
        metrics: the reply metrics (``num-examples``, ``n-<m>``, ``train-*``, optionally
            ``dp-unweighted``).
        key_modality: parameter name -> modality or None (shared).
        weight_scale: ``B > 0``, the public normaliser announced by the server.
        dp_range: ρ >= 1, the public divisor of a DP contribution's floats (the round's
            ``dp-range``, chosen so that noise shares fit the quantisation range); the
            server multiplies the sums back (:func:`combine_sums`).
    """
    if not (np.isfinite(weight_scale) and weight_scale > 0):
        raise ValueError(f"weight_scale must be a finite float > 0, got {weight_scale}")
    if isinstance(dp_range, bool) or int(dp_range) != dp_range or dp_range < 1:
        raise ValueError(f"dp_range must be an integer >= 1, got {dp_range!r}")
    counts = np.array([int(metrics.get(k, 0)) for k in WEIGHT_GROUPS], dtype=np.int64)
    if np.any(counts < 0):
        raise ValueError("counts must be >= 0")
    dp = int(metrics.get(DP_UNWEIGHTED, 0)) == 1
    weights = np.ones_like(counts) if dp else counts
    scale = 1.0 / dp_range if dp else 1.0 / weight_scale
    floats: dict[str, np.ndarray] = {}
    for key in sorted(reply_arrays):
        y = np.asarray(reply_arrays[key], dtype=np.float64)
        if dp or key.startswith(CONTROL_PREFIX):
            delta = y
        else:
            if key not in x:
                raise ValueError(f"reply array {key!r} is not in the global model")
            delta = y - np.asarray(x[key], dtype=np.float64)
        floats[key] = delta * (weights[_group(key, key_modality)] * scale)
    n_ex = float(counts[0]) * scale
    for m in METRIC_KEYS:
        # a DP round releases no training loss: it is data-dependent and carries no noise
        value = 0.0 if dp else float(metrics.get(m, 0.0)) * n_ex / METRIC_SCALE
        floats[_METRIC_PREFIX + m] = np.array([value])
    ints = {
        "counts": counts,
        "weights": weights.astype(np.int64),
        "dp": np.array([int(dp)], dtype=np.int64),
        "clients": np.ones(1, dtype=np.int64),
        # ρ and ρ²: the sums show whether every contribution used the same ρ
        "dp-range": np.array([int(dp_range), int(dp_range) ** 2] if dp else [0, 0], dtype=np.int64),
    }
    return Contribution(floats=floats, ints=ints)


def dp_range_of(int_sums: Mapping[str, np.ndarray]) -> int:
    """ρ of a DP aggregate, 1 otherwise.

    Every contribution must have used the same ρ: with ``k`` clients, ``Σρ_i = kρ`` and
    ``Σρ_i² = kρ²`` hold together only when all ``ρ_i = ρ`` (Cauchy–Schwarz equality).
    """
    clients = int(np.asarray(int_sums["clients"]).ravel()[0])
    dp = int(np.asarray(int_sums["dp"]).ravel()[0])
    if not dp or "dp-range" not in int_sums:
        return 1
    total, squares = (int(v) for v in np.asarray(int_sums["dp-range"]).ravel()[:2])
    rho = total // max(clients, 1)
    if rho < 1 or rho * clients != total or rho * rho * clients != squares:
        raise ValueError(
            f"DP contributions used different range divisors (sums {total}, {squares})"
        )
    return rho


def integer_noise_for(
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    sizes: Mapping[str, int],
    *,
    key_group: Callable[[str], str],
    scale: float,
    half_range: float,
) -> IntegerNoise | None:
    """The integer-domain noise of one client's DP contribution, or None (no such round).

    Args:
        config: the round's ConfigRecord (``dp-noise-shares`` = t, ``dp-integer-noise``,
            ``dp-mode``, ``dp-sigma-<group>``).
        metrics: the local train reply's metrics (``dp-unweighted``, ``dp-sens-<group>``:
            each group's L2 sensitivity in the contribution's float units).
        sizes: DP-released array name -> number of coordinates (the model's arrays).
        key_group: array name -> parameter group (example-level DP; client-level DP has
            the one group ``"all"``).
        scale: the quantiser's integer units per float unit (before the round's ``dp-range``
            ρ divides the contribution: the plan works in ``scale / ρ``).
        half_range: the largest distance from its centre a client's level may take.

    Raises:
        ValueError: the reply is not a DP update, or carries no sensitivities.
        DDGError: the plan's shares are too narrow (τ) or too wide for the ring.
    """
    shares = int(config.get(DP_NOISE_SHARES, 0))
    if shares <= 0 or not bool(config.get(DP_INTEGER_NOISE, False)):
        return None
    if int(metrics.get(DP_UNWEIGHTED, 0)) != 1:
        raise ValueError("a round with integer DP noise needs a DP update (dp-unweighted)")
    prefix = dp_sensitivity_key("")
    sens = {k[len(prefix) :]: float(v) for k, v in metrics.items() if k.startswith(prefix)}
    if not sens:
        raise ValueError("the DP update carries no per-group sensitivities (dp-sens-<group>)")
    client_level = int(config.get(DP_MODE, 0)) == dp_mode_code("client")
    return plan_integer_noise(
        sizes,
        key_group=(lambda _: CLIENT_GROUP) if client_level else key_group,
        noise_multipliers={g: float(config[dp_config_keys(g)[0]]) for g in sens},
        sensitivities=sens,
        shares=shares,
        scale=scale / int(config.get(DP_RANGE, 1)),
        half_range=half_range,
        client_level=client_level,
    )


def clipped_fraction(contribution: Contribution, *, clip: float) -> float:
    """Fraction of float values outside ``±clip`` (they will be clipped by the encoder)."""
    total = sum(a.size for a in contribution.floats.values())
    if total == 0:
        return 0.0
    over = sum(int(np.count_nonzero(np.abs(a) > clip)) for a in contribution.floats.values())
    return over / total


def combine_sums(
    float_sums: Mapping[str, np.ndarray],
    int_sums: Mapping[str, np.ndarray],
    x: Mapping[str, np.ndarray],
    *,
    key_modality: KeyModality,
    weight_scale: float,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Turn the secure sums into the averaged arrays and the aggregated metrics.

    Returns ``(averaged, metrics)``: ``averaged[k] = x_k + sum_i c_{i,k} / W_{g(k)}`` for
    model keys and ``sum_i c_{i,k} / W_{g(k)}`` for ``cv.`` keys (cast to ``x``'s dtype,
    float32 for ``cv.``), where ``W`` is the summed weight in the contributions' units; a
    group with ``W = 0`` keeps ``x_k`` (zeros for ``cv.``). ``metrics`` holds
    ``num-examples``, the ``n-<m>`` totals and the example-weighted ``train-*`` means.
    Raises ValueError for a round that mixes DP and non-DP contributions.
    """
    clients = int(np.asarray(int_sums["clients"]).ravel()[0])
    dp = int(np.asarray(int_sums["dp"]).ravel()[0])
    if clients < 1:
        raise ValueError("the aggregate holds no client")
    if dp not in (0, clients):
        raise ValueError(f"{dp} of {clients} contributions are DP-unweighted: cannot mix them")
    counts = np.asarray(int_sums["counts"], dtype=np.int64)
    weights = np.asarray(int_sums["weights"], dtype=np.float64)
    divisor = weights if dp else weights / weight_scale
    rho = dp_range_of(int_sums)
    if rho != 1:
        float_sums = {k: np.asarray(v, dtype=np.float64) * rho for k, v in float_sums.items()}
    averaged: dict[str, np.ndarray] = {}
    # The global model's key order: strategies such as Flower's FedAvgM pair old and new
    # arrays by position.
    order = [k for k in x if k in float_sums]
    order += [k for k in float_sums if k not in x and not k.startswith(_METRIC_PREFIX)]
    for key in order:
        total = float_sums[key]
        w = divisor[_group(key, key_modality)]
        is_cv = key.startswith(CONTROL_PREFIX)
        base = None if is_cv else np.asarray(x[key])
        dtype = np.float32 if is_cv or base is None else base.dtype
        if w <= 0:
            averaged[key] = np.zeros(np.shape(total), dtype=dtype) if base is None else base.copy()
            continue
        mean = np.asarray(total, dtype=np.float64) / w
        averaged[key] = (mean if base is None else base.astype(np.float64) + mean).astype(dtype)
    metrics: dict[str, float] = {k: float(v) for k, v in zip(WEIGHT_GROUPS, counts, strict=True)}
    if dp:  # DP contributions carry no training loss (see make_contribution)
        return averaged, metrics
    n_ex = float(counts[0]) / weight_scale
    for m in METRIC_KEYS:
        s = float(np.asarray(float_sums[_METRIC_PREFIX + m]).ravel()[0]) * METRIC_SCALE
        metrics[m] = s / n_ex if n_ex > 0 else 0.0
    return averaged, metrics


def next_weight_scale(int_sums: Mapping[str, np.ndarray]) -> float:
    """``B`` for the next round: mean examples per summed client of this aggregate (>= 1)."""
    clients = int(np.asarray(int_sums["clients"]).ravel()[0])
    examples = int(np.asarray(int_sums["counts"]).ravel()[0])
    if clients < 1 or examples < 1:
        return DEFAULT_WEIGHT_SCALE
    return max(1.0, examples / clients)


def dp_sums(
    float_sums: Mapping[str, np.ndarray],
    int_sums: Mapping[str, np.ndarray],
    keys: Iterable[str],
) -> dict[str, np.ndarray]:
    """The summed DP contributions of ``keys`` in update units (float64): the secure sums
    times the round's range divisor ρ (:func:`dp_range_of`). Client-level DP finishes the
    round from these (noise top-up, fixed ``qN`` divisor) on the server's privacy side."""
    rho = dp_range_of(int_sums)
    return {k: np.asarray(float_sums[k], dtype=np.float64) * rho for k in keys}


def _sparse_key(key: str) -> bool:
    return not key.startswith((CONTROL_PREFIX, _METRIC_PREFIX))


def shared_shapes(
    shapes: Mapping[str, tuple[int, ...]], shared: RoundCoordinates | None
) -> dict[str, tuple[int, ...]]:
    """The payload shapes once model arrays keep only their shared coordinates."""
    if shared is None:
        return dict(shapes)
    return {
        k: (shared.count(int(np.prod(s))),) if _sparse_key(k) else tuple(s)
        for k, s in shapes.items()
    }


def shared_sparsify(contribution: Contribution, shared: RoundCoordinates | None) -> Contribution:
    """``contribution`` with each model array cut to its shared coordinates (a flat vector)."""
    if shared is None:
        return contribution
    floats = {
        k: v.ravel()[shared.indices(k, v.size)] if _sparse_key(k) else v
        for k, v in contribution.floats.items()
    }
    return Contribution(floats=floats, ints=contribution.ints)


def shared_densify(
    float_sums: Mapping[str, np.ndarray],
    shapes: Mapping[str, tuple[int, ...]],
    shared: RoundCoordinates | None,
) -> dict[str, np.ndarray]:
    """Sums of sparsified contributions back at their coordinates of ``shapes`` (zeros
    elsewhere), for :func:`combine_sums`."""
    if shared is None:
        return dict(float_sums)
    out: dict[str, np.ndarray] = {}
    for k, v in float_sums.items():
        if not _sparse_key(k) or k not in shapes:
            out[k] = v
            continue
        size = int(np.prod(shapes[k]))
        dense = np.zeros(size, dtype=np.float64)
        dense[shared.indices(k, size)] = np.asarray(v).ravel()
        out[k] = dense.reshape(shapes[k])
    return out
