"""Server strategies, each a Flower strategy with modality-aware averaging, by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from umbra.federation.strategies.architecture import (
    architecture_signature,
    grouped_average,
    signature_groups,
)
from umbra.federation.strategies.bucketing import bucket_means, buckets
from umbra.federation.strategies.centered_clip import (
    CenteredClipState,
    centered_clip,
    modality_centered_clip,
)
from umbra.federation.strategies.defence import Defence, clip_update
from umbra.federation.strategies.fedadam import UmbraFedAdam
from umbra.federation.strategies.fedavgm import UmbraFedAvgM
from umbra.federation.strategies.fedprox import UmbraFedProx
from umbra.federation.strategies.modality import (
    CONTROL_PREFIX,
    ModalityFedAvg,
    count_key,
    modality_weighted_average,
)
from umbra.federation.strategies.robust import (
    AGGREGATORS,
    ROBUST_RULES,
    max_byzantine,
    modality_robust_aggregate,
    register_robust_rule,
    robust_aggregate,
)
from umbra.federation.strategies.scaffold import Scaffold, scaffold_server_update

__all__ = [
    "AGGREGATORS",
    "CONTROL_PREFIX",
    "ROBUST_RULES",
    "STRATEGIES",
    "CenteredClipState",
    "Defence",
    "ModalityFedAvg",
    "Scaffold",
    "UmbraFedAdam",
    "UmbraFedAvgM",
    "UmbraFedProx",
    "architecture_signature",
    "bucket_means",
    "buckets",
    "build_strategy",
    "centered_clip",
    "clip_update",
    "count_key",
    "grouped_average",
    "max_byzantine",
    "modality_centered_clip",
    "modality_robust_aggregate",
    "modality_weighted_average",
    "register_robust_rule",
    "register_strategy",
    "robust_aggregate",
    "scaffold_server_update",
    "signature_groups",
]

StrategyFactory = Callable[..., ModalityFedAvg]
STRATEGIES: dict[str, StrategyFactory] = {}


def register_strategy(name: str, factory: StrategyFactory) -> None:
    """Register a strategy factory under ``name``; duplicates raise."""
    if name in STRATEGIES:
        raise ValueError(f"strategy {name!r} is already registered")
    STRATEGIES[name] = factory


def _fedavg(fed: Any, **common: Any) -> ModalityFedAvg:
    return ModalityFedAvg(**common)


def _fedprox(fed: Any, **common: Any) -> ModalityFedAvg:
    return UmbraFedProx(proximal_mu=fed.proximal_mu, **common)


def _fedadam(fed: Any, **common: Any) -> ModalityFedAvg:
    return UmbraFedAdam(
        eta=fed.server_lr,
        eta_l=fed.lr,
        beta_1=fed.server_beta1,
        beta_2=fed.server_beta2,
        tau=fed.server_tau,
        **common,
    )


def _fedavgm(fed: Any, **common: Any) -> ModalityFedAvg:
    return UmbraFedAvgM(
        server_learning_rate=fed.fedavgm_server_lr, server_momentum=fed.fedavgm_momentum, **common
    )


def _scaffold(fed: Any, **common: Any) -> ModalityFedAvg:
    return Scaffold(server_lr=fed.scaffold_server_lr, **common)


def build_strategy(
    name: str,
    fed: Any,
    *,
    key_modality: Callable[[str], str | None],
    seed: int = 0,
    **flower_kwargs: Any,
) -> ModalityFedAvg:
    """Build the registered strategy ``name`` from a FederationConfig-like ``fed``.

    ``flower_kwargs`` go to Flower's FedAvg constructor (fractions, minimum nodes).
    Modality-aware averaging follows ``fed.modality_aware``; the defences (robust rule,
    update clipping, screening) follow ``fed.aggregator`` and its companions; ``seed``
    (run.seed) draws the defence's buckets.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; registered: {', '.join(STRATEGIES)}")
    strategy = STRATEGIES[name](fed, **flower_kwargs)
    strategy.set_modality_map(key_modality, enabled=bool(fed.modality_aware))
    strategy.set_defence(Defence.from_federation(fed, seed=seed))
    return strategy


for _name, _factory in (
    ("fedavg", _fedavg),
    ("fedavgm", _fedavgm),
    ("fedprox", _fedprox),
    ("fedadam", _fedadam),
    ("scaffold", _scaffold),
):
    register_strategy(_name, _factory)
