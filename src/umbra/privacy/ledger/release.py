"""The release types of the privacy ledger: what one privacy-consuming release spent.

A :class:`Release` is ``steps`` Poisson-sampled Gaussian steps by one party; its
:class:`GroupRelease` parts are the parameter groups noised on the same sample (they compose
per step, see :mod:`umbra.privacy.accounting`). A :class:`LabelRelease` is randomised
response on every training label of one party, applied once. All validate their parameters
at construction, so a malformed release can neither be written nor read back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["LABEL_GROUP", "GroupRelease", "LabelRelease", "Release"]

#: The group name of label releases in ε reports.
LABEL_GROUP = "label"


@dataclass(frozen=True)
class GroupRelease:
    """One parameter group's part of a release.

    Attributes:
        group: parameter group (a modality, ``"shared"``, or e.g. ``"all"`` for one flat clip).
        noise_multiplier: σ_g = noise std / clip norm, > 0.
        clip_norm: C_g, the L2 bound of one record's (or client's) contribution, > 0.
    """

    group: str
    noise_multiplier: float
    clip_norm: float

    def __post_init__(self) -> None:
        if not self.group or self.group == "total":
            raise ValueError(
                f"group must be a non-empty name other than 'total', got {self.group!r}"
            )
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(
                f"noise_multiplier of group {self.group!r} must be finite and > 0,"
                f" got {self.noise_multiplier}"
            )
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(
                f"clip_norm of group {self.group!r} must be finite and > 0, got {self.clip_norm}"
            )


@dataclass(frozen=True)
class Release:
    """A privacy-consuming release: ``steps`` Poisson-sampled Gaussian steps by ``party``.

    Attributes:
        round: federation round, >= 0.
        party: client id (example-level) or ``"server"`` (client-level).
        sample_rate: Poisson rate q per step, in (0, 1] (records per step for DP-SGD,
            clients per round for client-level DP).
        steps: number of steps, >= 1 (1 for a client-level round).
        groups: the groups released on the same sample, with distinct names.
    """

    round: int
    party: str
    sample_rate: float
    steps: int
    groups: tuple[GroupRelease, ...]

    def __post_init__(self) -> None:
        if self.round < 0:
            raise ValueError(f"round must be >= 0, got {self.round}")
        if not self.party:
            raise ValueError("party must be a non-empty client id or 'server'")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps}")
        names = [g.group for g in self.groups]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"groups must be non-empty with distinct names, got {names}")
        object.__setattr__(self, "groups", tuple(self.groups))

    @classmethod
    def dpsgd(
        cls,
        *,
        round: int,
        party: str,
        sample_rate: float,
        steps: int,
        noise_multipliers: Mapping[str, float],
        clip_norms: Mapping[str, float],
    ) -> Release:
        """A release with one group per entry of ``noise_multipliers``.

        DP-SGD: ``party`` = client id, ``sample_rate`` = record sampling rate, ``steps`` =
        local steps. Client-level DP: ``party="server"``, ``sample_rate`` = client sampling
        rate, ``steps=1`` per round, one group (e.g. ``"all"`` for a flat clip).
        """
        return cls(
            round=round,
            party=party,
            sample_rate=sample_rate,
            steps=steps,
            groups=tuple(
                GroupRelease(g, float(s), float(clip_norms[g]))
                for g, s in noise_multipliers.items()
            ),
        )

    @property
    def noise_multipliers(self) -> dict[str, float]:
        return {g.group: g.noise_multiplier for g in self.groups}


@dataclass(frozen=True)
class LabelRelease:
    """Randomised response on each training label (label DP, Ghazi et al., NeurIPS 2021,
    https://arxiv.org/abs/2102.06062), applied once to every label ``party`` holds.

    Each label is kept with probability ``e^ε / (e^ε + K - 1)``, else replaced by one of
    the other ``K - 1`` classes uniformly; training then uses only the randomised labels, so
    however many rounds reuse them this one release is all the labels ever spend.
    Neighbouring data sets differ in one record's label (replace-one): ε is pure (δ = 0).

    Attributes:
        round: the round before which the labels are randomised (0: before training).
        party: who randomises (the label holder).
        epsilon: ε of one label, finite and > 0.
        num_classes: K >= 2.
    """

    round: int
    party: str
    epsilon: float
    num_classes: int

    def __post_init__(self) -> None:
        if self.round < 0:
            raise ValueError(f"round must be >= 0, got {self.round}")
        if not self.party:
            raise ValueError("party must be a non-empty party name")
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"epsilon must be finite and > 0, got {self.epsilon}")
        k = self.num_classes
        if isinstance(k, bool) or int(k) != k or k < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {self.num_classes}")

    @property
    def group(self) -> str:
        return LABEL_GROUP

    @property
    def noise_parameter(self) -> float:
        """dp-accounting's ``p``: the probability of reporting a uniformly drawn class
        (which may be the true one): ``K / (e^ε + K - 1)``."""
        return self.num_classes / (math.exp(self.epsilon) + self.num_classes - 1)
