"""The server-side half of a DP mode: what :class:`~umbra.privacy.controller.PrivacyController`
plans, releases and reports for one privacy unit.

A mode answers the controller's few questions (which groups are clipped, what each round
releases into the ledger, what each sampled client is told, how ε is reported); the
controller keeps the loop that is the same for every mode (budget check before the ledger
write, the ledger itself, the report). The registry of modes is
:mod:`umbra.privacy.modes.registry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from umbra.privacy.ledger import Release

__all__ = ["DPMode", "ModeSetup"]


@dataclass(frozen=True)
class ModeSetup:
    """What every mode is built from (the controller's constructor arguments)."""

    cfg: Any
    groups: tuple[str, ...]
    rounds: int
    batch_size: int
    local_epochs: float


class DPMode(ABC):
    """One DP mode as the server sees it; subclasses set ``name`` and ``unit``.

    The attributes below are what the controller reports for every mode; a mode that has
    no such thing leaves the default (no per-client plans, no client-level σ).
    """

    #: ``privacy.mode`` value
    name: ClassVar[str]
    #: the unit of privacy (the ledger's and the report's)
    unit: ClassVar[Literal["example", "client"]]

    def __init__(self, setup: ModeSetup) -> None:
        self.setup = setup
        self.cfg = setup.cfg
        #: example-level DP with noise shared out among the silos under secure aggregation
        self.distributed: bool = False
        #: client -> its DP-SGD plan (:class:`~umbra.privacy.controller.ClientPlan`)
        self.plans: dict[int, Any] = {}
        #: distributed DP-SGD: client -> n_i · K / N
        self.scales: dict[int, float] = {}
        #: distributed DP-SGD: B̄ = qN / K
        self.mean_expected_batch: float | None = None
        #: client-level DP: the noise multiplier of the sum
        self.client_sigma: float | None = None

    @abstractmethod
    def clip_groups(self) -> list[str]:
        """The parameter groups that have a clip norm in this mode."""

    @abstractmethod
    def plan_clients(self, sizes: Mapping[int, int]) -> None:
        """Plan per-client noise from the clients' public record counts."""

    @abstractmethod
    def release_sensitivities(self, clips: Mapping[str, float], lr: float) -> dict[str, float]:
        """Per group, the L2 sensitivity of one client's distributed-noise contribution."""

    @abstractmethod
    def budget_groups(self, pid: int | None) -> dict[str, float]:
        """The per-group ε caps of party ``pid`` (None: the federation)."""

    @abstractmethod
    def releases(
        self, rnd: int, clients: Sequence[int], clips: Mapping[str, float]
    ) -> list[Release]:
        """The ledger releases of round ``rnd`` for the (sorted) sampled ``clients``."""

    @abstractmethod
    def client_config(self, pid: int, clips: Mapping[str, float]) -> dict[str, float | int]:
        """The DP entries of client ``pid``'s train ConfigRecord (after ``dp-mode``)."""

    def epsilon(self, eps: dict[str, float]) -> dict[str, float]:
        """The ledger's worst-party ε per group as the run reports it (default: as is)."""
        return eps

    @abstractmethod
    def summary(self) -> dict[str, Any]:
        """The mode's own entries of the privacy summary (after the common ones)."""
