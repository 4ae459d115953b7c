"""A membership attack against the generator: does it give its training records a
higher density than records it never saw?

Whoever holds the released generator scores a record by its log-density given its class
(:meth:`~umbra.synth.generator.GaussianGenerator.density_score`: the log-density of its
present modalities, each relative to its expectation); members are training
records of the run, non-members its held-out records, given the members' presence
patterns (shuffled): the organisations' records lack modalities that the held-out ones
hold, and a score summed over present modalities would otherwise tell them apart by what
they lack, not by membership. The figures are the audit's
(:func:`umbra.audit.attack_summary.attack_summary`): AUC, TPR at low FPR, and whether the
curve stays under the (ε, δ) ceiling that DP puts on every such test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from umbra.audit.attack_summary import attack_summary
from umbra.data.dataset import MultimodalData
from umbra.synth.generator import GaussianGenerator

__all__ = ["generator_membership", "sample_records"]


def generator_membership(
    generator: GaussianGenerator,
    members: MultimodalData,
    non_members: MultimodalData,
    *,
    epsilon: float,
    delta: float,
    rng: np.random.Generator,
    fprs: Sequence[float] = (0.001, 0.01),
    roc_points: int = 100,
) -> dict[str, Any]:
    """The attack's figures, with the record counts of each side (as many non-members as
    members at most; each takes the presence pattern of a member drawn by ``rng``)."""
    k = min(len(members), len(non_members))
    non_members = non_members.subset(np.arange(k))
    patterns = members.mask[rng.permutation(len(members))[:k]] & non_members.mask
    patterns[~patterns.any(axis=1)] = non_members.mask[~patterns.any(axis=1)]
    non_members = non_members.with_mask(patterns)
    scores_in = generator.density_score(members)
    scores_out = generator.density_score(non_members)
    out = attack_summary(
        scores_in, scores_out, fprs=fprs, roc_points=roc_points, dp=(epsilon, delta)
    )
    return {
        "members": len(members),
        "non_members": len(non_members),
        "score": "log-density given the class, relative to its expectation",
        **out,
    }


def sample_records(data: MultimodalData, k: int, rng: np.random.Generator) -> MultimodalData:
    """At most ``k`` records of ``data``, drawn without replacement."""
    idx = rng.choice(len(data), size=min(k, len(data)), replace=False)
    return data.subset(np.sort(idx))
