"""Staleness weights of buffered asynchronous aggregation (pure; read by both sides).

FedBuff (Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation",
AISTATS 2022, https://arxiv.org/abs/2106.06639) scales a client update that was computed
on a model ``τ`` server versions old by

    s(τ) = 1 / sqrt(1 + τ)

(the paper's polynomial staleness function with exponent 1/2). The server announces ``τ``
and the rule's name in the train message (`STALENESS_KEY`, `RULE_KEY`); the client computes
``s(τ)`` itself and applies it to its own update
(:mod:`umbra.federation.buffered.client_update`), because under secure aggregation the
server sees only the buffer's sum. Every rule maps into (0, 1]: a weighted update is never
longer than the update, so its DP sensitivity never grows.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = [
    "RULE_KEY",
    "STALENESS_KEY",
    "register_staleness_rule",
    "staleness_rules",
    "staleness_weight",
]

#: ConfigRecord key of a buffered train message: the update's staleness τ (an int >= 0).
STALENESS_KEY = "async-staleness"
#: ConfigRecord key of a buffered train message: the name of the staleness rule.
RULE_KEY = "async-staleness-rule"

StalenessRule = Callable[[int], float]
_RULES: dict[str, StalenessRule] = {}


def register_staleness_rule(name: str, rule: StalenessRule) -> None:
    """Add a staleness rule under ``name`` (a duplicate name raises ValueError)."""
    if name in _RULES:
        raise ValueError(f"staleness rule {name!r} is already registered")
    _RULES[name] = rule


def staleness_rules() -> list[str]:
    """The registered rule names."""
    return sorted(_RULES)


def staleness_weight(tau: int, rule: str = "sqrt") -> float:
    """The weight ``s(τ)`` in (0, 1] of an update ``tau`` server versions old.

    Raises:
        ValueError: ``tau`` negative or not an integer, or an unknown ``rule``.
    """
    if isinstance(tau, bool) or int(tau) != tau or tau < 0:
        raise ValueError(f"staleness must be an integer >= 0, got {tau!r}")
    if rule not in _RULES:
        raise ValueError(f"unknown staleness rule {rule!r} (known: {', '.join(staleness_rules())})")
    weight = float(_RULES[rule](int(tau)))
    if not 0.0 < weight <= 1.0:  # a weight above 1 would enlarge a clipped update
        raise ValueError(f"staleness rule {rule!r} gave s({tau}) = {weight}, outside (0, 1]")
    return weight


register_staleness_rule("sqrt", lambda tau: 1.0 / math.sqrt(1.0 + tau))
register_staleness_rule("constant", lambda tau: 1.0)
