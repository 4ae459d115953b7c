"""The organisation's side of a buffered release: it weights its own update by staleness.

Under secure aggregation the server learns only the buffer's sum, so FedBuff's staleness
weight ``s(τ)`` (:mod:`umbra.federation.buffered.staleness`) must be applied before the
update leaves the organisation. The train message of a buffered release carries ``τ`` and
the rule's name; the trained model ``y`` is moved back towards the model ``x`` it started
from, ``x + s(τ) (y - x)``, so that every later step (client-level DP's clipping and noise
shares, the secure contribution ``(n / B)(y - x)``) sees the weighted update. The noise of
DP is added after this weighting and is therefore never scaled down.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from umbra.federation.buffered.staleness import RULE_KEY, STALENESS_KEY, staleness_weight

__all__ = ["staleness_scaled"]


def staleness_scaled(
    config: Mapping[str, Any], x: Mapping[str, np.ndarray], y: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``x + s(τ)(y - x)`` for a buffered train message (``config`` names ``τ``), else ``y``.

    ``x`` is the model the client trained from, ``y`` the trained model (same keys).
    """
    if STALENESS_KEY not in config:
        return dict(y)
    tau = config[STALENESS_KEY]
    if not isinstance(tau, int) or isinstance(tau, bool):
        raise ValueError(f"{STALENESS_KEY} must be an integer, got {tau!r}")
    weight = staleness_weight(tau, str(config.get(RULE_KEY, "sqrt")))
    if weight == 1.0:
        return dict(y)
    return {k: (x[k] + weight * (y[k] - x[k])).astype(y[k].dtype) for k in y}
