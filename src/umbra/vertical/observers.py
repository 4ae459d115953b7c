"""ε per observer of a vertical run, recomputed from its ledger (dp-accounting).

A record (entity) of a vertical federation is spread over the parties: its rows of
features at each party that holds it, its label at the label holder. Two mechanisms protect
it, both written to ``ledger.jsonl`` before they act: embedding DP (a Gaussian release of
each party's rows per epoch, zero-out adjacency) and label DP (randomised response on every
label, once, replace-one adjacency). Who is protected by which depends on what the
observer sees (docs/vertical.md, "Who learns what"):

``label_holder``
    Receives every party's embedding rows (or, under the secure sum, their sum per entity)
    and holds the labels. Features: the other parties' embedding releases, composed over
    the parties that hold the record. Labels: none (they are its own).
``feature_parties``
    Receive ``∂L/∂sum`` at their rows, a function of the randomised labels, the top model
    and the other parties' (noised) rows. Labels: the randomised response's ε, once,
    however many epochs reuse them. Features: every party's embedding releases (an upper
    bound: a party knows its own rows).
``model_holder``
    Whoever holds the bottom models and the head. They are trained on the randomised
    labels only (the label ε holds) but on the parties' raw features (no feature ε:
    embedding DP covers the released rows, not the bottom models).

Per observer: ``label`` ε, ``features`` ε, and ``record``: both composed (PLD), for
neighbouring data sets that differ in one record's features and its label; ``None`` where
no guarantee holds against that observer. Pure functions: no I/O, no Flower.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from umbra.privacy.accounting import (
    compose_steps,
    epsilon_for,
    epsilon_with_labels,
    label_epsilon,
    randomized_response_event,
)
from umbra.privacy.ledger import LedgerContents, Release

__all__ = ["VERTICAL_OBSERVERS", "observer_rows", "vertical_observer_epsilons"]

#: Observer names, in the order results list them.
VERTICAL_OBSERVERS: tuple[str, ...] = ("label_holder", "feature_parties", "model_holder")


def _steps(releases: Sequence[Release]) -> list[Any]:
    return compose_steps((r.noise_multipliers, r.sample_rate, r.steps) for r in releases)


def vertical_observer_epsilons(
    contents: LedgerContents, *, label_party: str
) -> dict[str, dict[str, Any]]:
    """``observer -> {"label", "features", "record": ε | None, "why"}`` (see the module
    docstring) from a vertical run's ledger (an empty one: nothing is protected)."""
    releases, labels = list(contents.releases), list(contents.label_releases)
    delta, accountant = contents.delta, contents.accountant
    rr = [randomized_response_event(epsilon=r.epsilon, num_classes=r.num_classes) for r in labels]
    label = label_epsilon(rr, delta=delta) if rr else None

    def features(rel: Sequence[Release]) -> float | None:
        return epsilon_for(*_steps(rel), delta=delta, accountant=accountant) if rel else None

    def record(rel: Sequence[Release]) -> float | None:
        if not rel or not rr:
            return None
        return epsilon_with_labels(_steps(rel), rr, delta=delta)

    others = [r for r in releases if r.party != label_party]
    views: dict[str, tuple[float | None, Sequence[Release], str]] = {
        "label_holder": (None, others, "it receives the other parties' embedding rows (or "
                         "their sum) and holds the labels"),
        "feature_parties": (label, releases, "it receives the gradient at its rows, computed "
                            "from the randomised labels and the other parties' rows"),
        "model_holder": (label, [], "the bottom models are trained on the randomised labels "
                         "but on raw features"),
    }  # fmt: skip
    out: dict[str, dict[str, Any]] = {}
    for name in VERTICAL_OBSERVERS:
        lab, rel, why = views[name]
        out[name] = {
            "label": lab,
            "features": features(rel),
            "record": record(rel) if lab is not None else None,
            "why": why,
        }
    return out


def observer_rows(contents: LedgerContents, summary: Mapping[str, Any]) -> list[list[str]]:
    """Table rows (observer, ε label, ε features, ε record, why) for ``umbra privacy ledger``;
    ``summary`` is results.json's ``vertical`` object (it names the label holder)."""
    label_party = str(summary["parties"][int(summary["label_party"])]["party"])
    rows = []
    for name, o in vertical_observer_epsilons(contents, label_party=label_party).items():
        cells = [("none holds" if o[k] is None else f"{o[k]:.3f}")
                 for k in ("label", "features", "record")]  # fmt: skip
        rows.append([name.replace("_", " "), *cells, str(o["why"])])
    return rows
