"""What an organisation sends for the generator: its clipped statistics with Gaussian noise.

Runs inside the organisation. Each group ``g`` of :class:`SufficientStatistics` gets
independent noise of standard deviation ``σ_g · C_g`` per released entry (``C_g`` from
:data:`~umbra.synth.statistics.CLIP_NORMS`); a second-moment matrix is symmetric, so its
upper triangle is noised and mirrored (the released entries are the triangle's, whose
per-record L2 norm is at most ``‖u uᵀ‖_F = 1``). The noise comes from the privacy stream
(:class:`~umbra.privacy.randomness.SecureRandom`), never from the run's seed.

With ``synth.noise = "local"`` every organisation adds the full noise to its own sums, so
the server (and anyone who sees one organisation's message) learns each organisation's
statistics only under its (ε, δ); the server's sum then carries √(organisations) times one
organisation's noise. ``"distributed"`` sends them through
:mod:`umbra.synth.secure_release` instead.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from umbra.privacy.randomness import SecureRandom
from umbra.synth.statistics import CLIP_NORMS, SufficientStatistics

__all__ = ["noised_statistics"]


def _kind(group: str) -> str:
    return group.rsplit(".", 1)[-1]


def _symmetric_noise(d: int, std: float, rng: SecureRandom) -> np.ndarray:
    upper = np.triu(rng.normal((d, d), std=std))
    return upper + np.triu(upper, 1).T


def noised_statistics(
    stats: SufficientStatistics, *, noise_multipliers: Mapping[str, float], rng: SecureRandom
) -> SufficientStatistics:
    """``stats`` with each group's Gaussian noise added (``noise_multipliers``: σ_g of every
    group of ``stats.groups()``, each finite and > 0).

    Raises:
        ValueError: a group without a noise multiplier, or one that is not > 0.
    """
    for g in stats.groups():
        s = noise_multipliers.get(g)
        if s is None or not (np.isfinite(s) and s > 0):
            raise ValueError(f"noise_multipliers[{g!r}] must be finite and > 0, got {s}")
    means = {
        m: v + rng.normal(v.shape, std=noise_multipliers[f"{m}.mean"] * CLIP_NORMS["mean"])
        for m, v in stats.means.items()
    }
    counts = {
        m: v + rng.normal(v.shape, std=noise_multipliers[f"{m}.count"] * CLIP_NORMS["count"])
        for m, v in stats.counts.items()
    }
    covs = {
        m: v + _symmetric_noise(len(v), noise_multipliers[f"{m}.cov"] * CLIP_NORMS["cov"], rng)
        for m, v in stats.covs.items()
    }
    std = noise_multipliers["pattern"] * CLIP_NORMS["pattern"]
    patterns = stats.patterns + rng.normal(stats.patterns.shape, std=std)
    return SufficientStatistics(means, counts, covs, patterns)
