"""Differential privacy: accountant wrappers, per-group budgets, the ledger, DP-SGD, client DP.

Pure math lives in :mod:`~umbra.privacy.accounting` (dp-accounting events and ε),
:mod:`~umbra.privacy.budget` (noise per parameter group) and :mod:`~umbra.privacy.client_dp`
(clipping and noise of client updates); :mod:`~umbra.privacy.ledger` holds the fsynced
record of releases and :mod:`~umbra.privacy.dpsgd` the per-group DP-SGD step (its
per-record gradient backends in :mod:`~umbra.privacy.dpsgd_backends`). What differs between
DP modes is one class per mode: on the server :mod:`~umbra.privacy.modes` (behind
:mod:`~umbra.privacy.controller`), in an organisation :mod:`~umbra.privacy.client`.
"""

from typing import TYPE_CHECKING, Any

from umbra.privacy.accounting import (
    DEFAULT_ACCOUNTANT,
    accountant_names,
    client_dp_event,
    compose_steps,
    dpsgd_epsilons,
    dpsgd_event,
    effective_noise_multiplier,
    epsilon_for,
    gaussian_event,
    make_accountant,
    register_accountant,
)
from umbra.privacy.budget import (
    Allocation,
    Budget,
    allocate_budget,
    calibrate_noise_multiplier,
    validate_noise_multipliers,
    validate_privacy_params,
)
from umbra.privacy.client_dp import (
    central_noise,
    clip_update,
    noise_share,
    noise_shares_like,
    noised_mean_update,
    update_norm,
)
from umbra.privacy.ledger import (
    GroupRelease,
    LedgerReport,
    PrivacyLedger,
    Release,
    read_ledger,
    replay,
)

if TYPE_CHECKING:
    from umbra.privacy.dpsgd import DPSGD, StepStats, poisson_batches

_LAZY = {"DPSGD", "StepStats", "poisson_batches"}


def __getattr__(name: str) -> Any:
    # DP-SGD pulls in torch and Opacus; accounting and the ledger do not need them.
    if name in _LAZY:
        from umbra.privacy import dpsgd

        return getattr(dpsgd, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_ACCOUNTANT",
    "DPSGD",
    "Allocation",
    "Budget",
    "GroupRelease",
    "LedgerReport",
    "PrivacyLedger",
    "Release",
    "StepStats",
    "accountant_names",
    "allocate_budget",
    "calibrate_noise_multiplier",
    "central_noise",
    "client_dp_event",
    "clip_update",
    "compose_steps",
    "dpsgd_epsilons",
    "dpsgd_event",
    "effective_noise_multiplier",
    "epsilon_for",
    "gaussian_event",
    "make_accountant",
    "noise_share",
    "noise_shares_like",
    "noised_mean_update",
    "poisson_batches",
    "read_ledger",
    "register_accountant",
    "replay",
    "update_norm",
    "validate_noise_multipliers",
    "validate_privacy_params",
]
