"""What a run's ``results.json`` says about its data, protections and privacy budget.

Read leniently (a missing field gives None or an empty value), in the format
:func:`umbra.experiment.run_experiment` writes: ``secure_aggregation`` is a mode string,
``config.secure.threshold`` a *fraction* of a round's participants, ``privacy`` the
controller's summary (``mode`` is ``"none"`` when DP was off, else ``epsilon`` is
``{"total", <group>...}``) plus ε per observer (:mod:`umbra.privacy.observers`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from umbra.report.format import get_in, is_number

__all__ = [
    "budget_target",
    "bytes_total",
    "clients",
    "distributed_noise",
    "epsilon",
    "modalities",
    "observers",
    "privacy_on",
    "secure_mode",
    "threshold",
]


def privacy_on(results: Mapping[str, Any]) -> bool:
    """Differential privacy was active: ``privacy.mode`` is not ``"none"`` and ε was reported."""
    p = results.get("privacy")
    if not isinstance(p, Mapping) or p.get("mode") == "none":
        return False
    eps = p.get("epsilon")
    return isinstance(eps, Mapping) and is_number(eps.get("total"))


def epsilon(results: Mapping[str, Any]) -> dict[str, float]:
    """``privacy.epsilon``: ``{"total": ε, <group>: ε_g}`` ({} when DP was off)."""
    eps = get_in(results, "privacy", "epsilon")
    if isinstance(eps, Mapping):
        return {str(k): float(v) for k, v in eps.items() if is_number(v)}
    return {}


def secure_mode(results: Mapping[str, Any]) -> str | None:
    """``secure_aggregation``: ``"none"``, ``"secagg+"`` or ``"ckks"`` (None when absent)."""
    sa = results.get("secure_aggregation")
    return sa if isinstance(sa, str) else None


def threshold(results: Mapping[str, Any]) -> float | None:
    """The unmasking threshold as a fraction of a round's participants, in (0, 1]."""
    t = get_in(results, "config", "secure", "threshold")
    return float(t) if is_number(t) and 0 < t <= 1 else None


def clients(results: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(number of organisations, training records) from ``data`` (else the config)."""
    per_client = get_in(results, "data", "clients")
    n_clients: int | None = None
    records: int | None = None
    if isinstance(per_client, list) and per_client:
        n_clients = len(per_client)
        rec = [c.get("records") for c in per_client if isinstance(c, Mapping)]
        nums = [int(r) for r in rec if is_number(r)]
        if rec and len(nums) == len(rec):
            records = sum(nums)
    else:
        n = get_in(results, "config", "federation", "num_clients")
        n_clients = int(n) if is_number(n) else None
    n_train = get_in(results, "data", "n_train")
    if records is None and is_number(n_train):
        records = int(n_train)
    return n_clients, records


def modalities(results: Mapping[str, Any]) -> list[str]:
    """The run's modalities (``data.modalities``, else the per-modality accuracies' keys)."""
    mods = get_in(results, "data", "modalities")
    if isinstance(mods, list):
        return [str(m) for m in mods]
    per = get_in(results, "final", "per_modality_accuracy")
    return [str(m) for m in per if m != "fused"] if isinstance(per, Mapping) else []


def bytes_total(results: Mapping[str, Any], key: str) -> float | None:
    """Bytes moved ``"up"`` or ``"down"`` over the run (``bytes``, else the rounds' sum)."""
    tot = get_in(results, "bytes", f"{key}_total")
    if is_number(tot):
        return float(tot)
    rounds = results.get("rounds")
    if isinstance(rounds, list) and rounds:
        vals = [r.get(f"bytes_{key}") for r in rounds if isinstance(r, Mapping)]
        nums = [float(v) for v in vals if is_number(v)]
        if vals and len(nums) == len(vals):
            return sum(nums)
    return None


def observers(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``privacy.observers``: observer -> ``{epsilon, amplified, why}``."""
    obs = get_in(results, "privacy", "observers")
    if not isinstance(obs, Mapping):
        return {}
    return {str(k): dict(v) for k, v in obs.items() if isinstance(v, Mapping)}


def distributed_noise(results: Mapping[str, Any]) -> bool:
    """The DP noise was shared out among the organisations (``privacy.noise``)."""
    return get_in(results, "privacy", "noise") == "distributed"


def budget_target(results: Mapping[str, Any]) -> float | None:
    """The configured ε budget (``privacy.budget.epsilon``)."""
    t = get_in(results, "privacy", "budget", "epsilon")
    return float(t) if is_number(t) else None
