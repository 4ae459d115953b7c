"""ε recomputed from the ledger's lines alone, through dp-accounting.

Per party, per group and in total; the reported total (and each ε_g) is the worst party's.
A party's label releases (randomised response) are its group ``"label"`` and compose into
its total (:func:`umbra.privacy.accounting.epsilon_with_labels`).
The writer (:class:`~umbra.privacy.ledger.writer.PrivacyLedger`) uses the same functions for
its running totals, so what a run reports and what a replay recomputes cannot differ.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from umbra.privacy.accounting import (
    compose_steps,
    epsilon_for,
    epsilon_with_labels,
    label_epsilon,
    randomized_response_event,
)
from umbra.privacy.ledger.jsonl import LedgerContents, read_ledger
from umbra.privacy.ledger.release import LABEL_GROUP, LabelRelease, Release

__all__ = [
    "LedgerReport",
    "compute_report",
    "dominant_parties",
    "party_epsilons",
    "replay",
]


@dataclass(frozen=True)
class LedgerReport:
    """ε recomputed from a ledger.

    Attributes:
        unit, delta, accountant: from the header.
        epsilon: ``{"total": worst party's composed ε, <group>: worst party's ε_g}``.
        per_party: ``party -> {"total": ..., <group>: ...}``.
        worst_party: the party with the largest total (None when nothing was released).
        releases: number of releases counted; rounds: sorted rounds that released.
        warnings: notes such as an ignored truncated last line.
    """

    unit: str
    delta: float
    accountant: str
    epsilon: dict[str, float]
    per_party: dict[str, dict[str, float]]
    worst_party: str | None
    releases: int
    rounds: list[int]
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def party_epsilons(
    releases: Iterable[Release],
    *,
    delta: float,
    accountant: str,
    labels: Iterable[LabelRelease] = (),
) -> dict[str, float]:
    """``{"total": composed ε, <group>: ε_g}`` of one party's releases; its label
    releases (if any) are the group ``"label"``, composed into the total by PLD whatever
    the accountant (dp-accounting's RDP accountant has no randomised response)."""
    rel = list(releases)
    rr = [randomized_response_event(epsilon=r.epsilon, num_classes=r.num_classes)
          for r in labels]  # fmt: skip
    out: dict[str, float] = {}
    groups = list(dict.fromkeys(g.group for r in rel for g in r.groups))
    for name in groups:
        steps = [
            ({name: g.noise_multiplier}, r.sample_rate, r.steps)
            for r in rel
            for g in r.groups
            if g.group == name
        ]
        out[name] = epsilon_for(*compose_steps(steps), delta=delta, accountant=accountant)
    joint = [(r.noise_multipliers, r.sample_rate, r.steps) for r in rel]
    if not rr:
        out["total"] = epsilon_for(*compose_steps(joint), delta=delta, accountant=accountant)
        return out
    out[LABEL_GROUP] = label_epsilon(rr, delta=delta)
    out["total"] = epsilon_with_labels(compose_steps(joint), rr, delta=delta)
    return out


def dominant_parties(parties: Mapping[str, Sequence[Release]]) -> list[str]:
    """The parties whose ε bounds every other party's, in every group and in total.

    Two parties whose releases are identical (rounds, steps, σ_g, C_g) except for one
    constant Poisson rate each are ordered by that rate: amplification by subsampling is
    monotone in q, so the larger rate spends at least as much in every group. This is the
    case of distributed DP-SGD, where every silo uses the same σ_g and only its own
    ``q_i = B / n_i`` differs. Only the largest-rate party of each such class is returned;
    a party with varying rates is its own class.
    """
    best: dict[Any, tuple[float, str]] = {}
    for party, rel in parties.items():
        rates = {r.sample_rate for r in rel}
        history = tuple((r.round, r.steps, r.groups) for r in rel)
        key: Any = (history, None if len(rates) == 1 else party)
        q = max(rates) if rates else 0.0
        if key not in best or q > best[key][0]:
            best[key] = (q, party)
    return sorted(p for _, p in best.values())


def compute_report(
    contents: LedgerContents,
    *,
    up_to_round: int | None = None,
    accountant: str | None = None,
    delta: float | None = None,
    worst_only: bool = False,
) -> LedgerReport:
    """ε per party, per group and in total from parsed ledger contents.

    Args:
        contents: from :func:`read_ledger` (or :attr:`PrivacyLedger.contents`).
        up_to_round: count only releases with ``round <= up_to_round`` (ε after that round).
        accountant, delta: override the header's (e.g. to cross-check with RDP).
        worst_only: compute only the :func:`dominant_parties` (``per_party`` then holds only
            them); ``epsilon`` and ``worst_party`` are the same as for all parties.
    """
    acc = accountant or contents.accountant
    d = contents.delta if delta is None else delta
    rel = [r for r in contents.releases if up_to_round is None or r.round <= up_to_round]
    labels = [r for r in contents.label_releases if up_to_round is None or r.round <= up_to_round]
    parties: dict[str, list[Release]] = {}
    for r in rel:
        parties.setdefault(r.party, []).append(r)
    by_party: dict[str, list[LabelRelease]] = {}
    for lr in labels:
        by_party.setdefault(lr.party, []).append(lr)
    if worst_only:  # a party with label releases is its own class
        keep = set(dominant_parties({p: rs for p, rs in parties.items() if p not in by_party}))
        parties = {p: rs for p, rs in parties.items() if p in keep or p in by_party}
    for p in by_party:
        parties.setdefault(p, [])
    per_party = {
        p: party_epsilons(rs, delta=d, accountant=acc, labels=by_party.get(p, ()))
        for p, rs in parties.items()
    }
    epsilon: dict[str, float] = {"total": 0.0}
    for eps in per_party.values():
        for k, v in eps.items():
            epsilon[k] = max(epsilon.get(k, 0.0), v)
    worst = max(per_party, key=lambda p: per_party[p]["total"]) if per_party else None
    return LedgerReport(
        unit=contents.unit,
        delta=d,
        accountant=acc,
        epsilon=epsilon,
        per_party=per_party,
        worst_party=worst,
        releases=len(rel) + len(labels),
        rounds=sorted({r.round for r in rel} | {r.round for r in labels}),
        warnings=list(contents.warnings),
    )


def replay(
    path: str | os.PathLike[str],
    *,
    up_to_round: int | None = None,
    accountant: str | None = None,
    delta: float | None = None,
) -> LedgerReport:
    """Recompute ε from the ledger file alone (see :func:`compute_report`)."""
    contents = read_ledger(path)
    for note in contents.warnings:
        warnings.warn(note, stacklevel=2)
    return compute_report(contents, up_to_round=up_to_round, accountant=accountant, delta=delta)
