"""Client-level DP: clip each client's model update, add Gaussian noise to the sum.

The mechanism is DP-FedAvg (McMahan, Ramage, Talwar & Zhang 2018,
https://arxiv.org/abs/1710.06963) with flat clipping: a client's update (all arrays as one
vector) is scaled to L2 norm ≤ C, the server sums the clipped updates of the sampled
clients and the sum receives ``N(0, σ² C²)`` noise per coordinate. One round is then the
Gaussian mechanism with noise multiplier σ on a Poisson sample of clients; accounting is
:func:`umbra.privacy.accounting.client_dp_event`.

Noise can be added

* *centrally* (:func:`central_noise`) by a trusted server on the plaintext sum, or
* *distributed* (:func:`noise_share`): each client adds an independent share
  ``N(0, σ² C² / t)`` to its clipped update before secure aggregation, with ``t`` the
  fewest contributions the secure aggregate accepts (:func:`shares_needed`): any sum the
  server can obtain holds ``k ≥ t`` shares, hence at least the full ``N(0, σ² C²)``, with no
  top-up by the server, and no single update is ever seen in the clear. (Under SecAgg+ the
  shares are discrete Gaussians added after quantisation instead: :mod:`umbra.privacy.ddg`.)

All noise comes from :class:`~umbra.privacy.randomness.SecureRandom` (ChaCha20 keyed from
``os.urandom``): noise whose generator state an observer can predict protects nothing.
Tests may pass :meth:`SecureRandom.for_testing`; nothing here accepts a seed. Floating-point
Gaussian sampling is known to leak through its low-order bits (Mironov 2012); the integer
path of SecAgg+ (discrete Gaussian) avoids it, this float path does not.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np

from umbra.privacy.randomness import SecureRandom

__all__ = [
    "central_noise",
    "clip_update",
    "noise_share",
    "noise_shares_like",
    "noised_mean_update",
    "share_multiplier",
    "shares_needed",
    "update_norm",
]


def _check_clip(clip_norm: float) -> float:
    c = float(clip_norm)
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"clip_norm must be a finite number > 0, got {clip_norm!r}")
    return c


def _check_sigma(noise_multiplier: float) -> float:
    s = float(noise_multiplier)
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    if s == 0:
        warnings.warn(
            "noise_multiplier = 0: no noise is added, the release is not differentially private",
            stacklevel=3,
        )
    return s


def update_norm(update: Mapping[str, np.ndarray]) -> float:
    """L2 norm of all arrays of ``update`` flattened into one vector."""
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in update.values()))


def clip_update(
    update: Mapping[str, np.ndarray], clip_norm: float
) -> tuple[dict[str, np.ndarray], float]:
    """Scale ``update`` to flat L2 norm ≤ ``clip_norm`` (FlatClip of DP-FedAvg).

    Args:
        update: parameter name -> update array (e.g. new weights minus global weights).
        clip_norm: C > 0.

    Returns:
        ``(clipped, norm)``: new arrays (same dtypes) multiplied by ``min(1, C / norm)``, and
        the norm before clipping.
    """
    c = _check_clip(clip_norm)
    norm = update_norm(update)
    factor = 1.0 if norm <= c else c / norm
    return {
        k: (np.asarray(a) * factor).astype(np.asarray(a).dtype) for k, a in update.items()
    }, norm


def central_noise(
    total: Mapping[str, np.ndarray],
    *,
    noise_multiplier: float,
    clip_norm: float,
    rng: SecureRandom | None = None,
) -> dict[str, np.ndarray]:
    """``total`` (a sum of clipped updates) plus ``N(0, (σ C)²)`` noise per coordinate.

    Divide by the (expected) number of clients afterwards to get the noised mean.

    Raises:
        ValueError: ``noise_multiplier`` < 0 or ``clip_norm`` ≤ 0 (σ = 0 only warns).
    """
    std = _check_sigma(noise_multiplier) * _check_clip(clip_norm)
    g = rng if rng is not None else SecureRandom()
    return {
        k: (np.asarray(a) + g.normal(np.shape(a), std=std)).astype(np.asarray(a).dtype)
        for k, a in total.items()
    }


def shares_needed(threshold: float, num_clients: int) -> int:
    """``t = ceil(threshold · n)``: the fewest contributions a secure aggregate of ``n``
    clients accepts (SecAgg+ cannot unmask, and the CKKS round aborts, with fewer).

    Distributed noise is sized for ``t`` shares, so any aggregate the server can obtain
    carries at least the full noise, whoever drops out.
    """
    if not 0.5 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0.5, 1], got {threshold}")
    if isinstance(num_clients, bool) or int(num_clients) != num_clients or num_clients < 1:
        raise ValueError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    return max(1, min(int(num_clients), math.ceil(threshold * num_clients - 1e-9)))


def share_multiplier(noise_multiplier: float, shares: int) -> float:
    """σ / √t: the noise multiplier of one of ``t`` shares whose sum has multiplier σ."""
    if isinstance(shares, bool) or int(shares) != shares or shares < 1:
        raise ValueError(f"shares must be an integer >= 1, got {shares!r}")
    return _check_sigma(noise_multiplier) / math.sqrt(shares)


def noise_share(
    shape: tuple[int, ...],
    *,
    noise_multiplier: float,
    clip_norm: float,
    num_clients: int,
    generator: SecureRandom | None = None,
    dtype: np.dtype | type = np.float64,
) -> np.ndarray:
    """One client's share of distributed noise: ``N(0, σ² C² / n)`` per coordinate.

    The sum of ``num_clients`` independent shares is ``N(0, σ² C²)``, the noise of
    :func:`central_noise`.

    Raises:
        ValueError: ``noise_multiplier`` < 0, ``clip_norm`` ≤ 0 or ``num_clients`` < 1.
    """
    if isinstance(num_clients, bool) or int(num_clients) != num_clients or num_clients < 1:
        raise ValueError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    std = share_multiplier(noise_multiplier, num_clients) * _check_clip(clip_norm)
    g = generator if generator is not None else SecureRandom()
    return g.normal(shape, std=std).astype(dtype)


def noise_shares_like(
    update: Mapping[str, np.ndarray],
    *,
    noise_multiplier: float,
    clip_norm: float,
    num_clients: int,
    generator: SecureRandom | None = None,
) -> dict[str, np.ndarray]:
    """``update`` plus this client's :func:`noise_share` for every array (same dtypes)."""
    g = generator if generator is not None else SecureRandom()
    out = {}
    for k, a in update.items():
        arr = np.asarray(a)
        share = noise_share(
            arr.shape,
            noise_multiplier=noise_multiplier,
            clip_norm=clip_norm,
            num_clients=num_clients,
            generator=g,
        )
        out[k] = (arr + share).astype(arr.dtype)
    return out


def noised_mean_update(
    summed: Mapping[str, np.ndarray],
    *,
    noise_multiplier: float,
    clip_norm: float,
    expected_clients: float,
    noise_already_added: float,
    rng: SecureRandom | None = None,
) -> dict[str, np.ndarray]:
    """The DP-FedAvg mean update from a sum of clipped client updates.

    ``summed`` = Σ clip(Δ_i) (+ the clients' distributed noise shares). ``noise_already_added``
    is the fraction of the full ``N(0, σ² C²)`` variance the sum already carries: 0 with
    central noise (the server adds all of it here), 1 with distributed noise (shares sized
    for the secure threshold ``t``: every unmaskable sum carries the full noise, no top-up).
    A fraction in between is topped up. The result is divided by the *expected* number of
    clients qN (a fixed denominator keeps the sensitivity at C / qN).

    Raises:
        ValueError: ``expected_clients`` ≤ 0 or ``noise_already_added`` outside [0, 1].
    """
    if not expected_clients > 0:
        raise ValueError(f"expected_clients must be > 0, got {expected_clients}")
    if not 0.0 <= noise_already_added <= 1.0:
        raise ValueError(f"noise_already_added must be in [0, 1], got {noise_already_added}")
    missing = 1.0 - noise_already_added
    if missing > 0:
        noised = central_noise(
            summed,
            noise_multiplier=noise_multiplier * math.sqrt(missing),
            clip_norm=clip_norm,
            rng=rng,
        )
    else:
        noised = {k: np.asarray(v) for k, v in summed.items()}
    return {k: (v / expected_clients).astype(np.float32) for k, v in noised.items()}
