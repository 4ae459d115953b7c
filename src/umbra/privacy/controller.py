"""The server's privacy bookkeeping for one run: plan, budget stop, ledger, ε report.

Runs on the server, sees only public metadata (each client's record count and the noise
plan); no Flower here. Before every round the server asks :meth:`before_round` for the
noise each selected client must use; that call checks the budget and appends the round's
releases to ``ledger.jsonl`` (fsynced) *before* anything is released. When the next
release would exceed a budget it raises :class:`~umbra.errors.BudgetExhausted` and
training stops.

Example-level DP (DP-SGD in each client, Abadi et al. 2016): client i samples records
with Poisson rate ``q_i = batch_size / n_i`` for ``steps_i = ceil(local_epochs / q_i)``
steps per round; each parameter group g (a modality's encoder + projection, or the shared
fusion/head) has its own clip norm and noise multiplier σ_{i,g}, allocated so that every
group's ε and the composed total stay within budget for the planned rounds. ε is per client;
the report gives the worst client.

With ``privacy.noise = "distributed"`` (secure aggregation required) the silos run one
DP-SGD step per round *together* (Heikkilä et al. 2020, cross-silo distributed DP-SGD):
every record is Poisson-sampled at one rate ``q = batch_size · K / N`` (from the privacy
stream of :mod:`umbra.privacy.randomness`, never from ``run.seed``); each silo clips its
sample's per-record gradients, adds ``1/√t`` of the step's noise (``t`` = the fewest
contributions the secure aggregate accepts) and scales its step by ``n_i · K / N``, so the
only thing anyone sees, the sum, is one step of centralized DP-SGD over all records with at
least ``N(0, σ_g² C_g²)`` per group (√t less noise on the mean gradient than K silos each
noising their own). Under SecAgg+ the shares are discrete Gaussians added after
quantisation, sized for the rounding-inflated sensitivity (:mod:`umbra.privacy.ddg`), so
the noise multiplier of the integer release is still ``σ_g``. A record's ε is that of
``σ_g``, ``q`` and one step per round; what the strategy's server optimiser does with the
sum is post-processing.

Client-level DP (DP-FedAvg, McMahan et al. 2018): clients join each round with Poisson
rate q, clip their update to C, and Gaussian noise σC is added to the sum (by the server,
or shared out among the clients under secure aggregation in ``t`` shares, with no top-up
by the server). One group, ``"all"``.

Each mode is a class in :mod:`umbra.privacy.modes` (``ExampleLevel``, ``ClientLevel``); the
controller looks it up once by ``privacy.mode`` and delegates to it. The ConfigRecord keys
here are shared with the clients' DP policies (:mod:`umbra.privacy.client`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from umbra.errors import BudgetExhausted, ConfigError
from umbra.privacy.budget import Budget
from umbra.privacy.ledger import PrivacyLedger, Release, dominant_parties

if TYPE_CHECKING:
    from umbra.privacy.modes import DPMode

__all__ = [
    "CLIENT_GROUP",
    "DP_INTEGER_NOISE",
    "DP_MODE",
    "DP_MODE_CODES",
    "DP_NOISE_SHARES",
    "DP_RANGE",
    "DP_UNWEIGHTED",
    "ClientPlan",
    "PrivacyController",
    "dp_config_keys",
    "dp_mode_code",
    "dp_sensitivity_key",
]

#: ConfigRecord key: the DP mode a client trains under, as its code in :data:`DP_MODE_CODES`
#: (absent: no DP).
DP_MODE = "dp-mode"
#: ``dp-mode`` value per DP mode name (``privacy.mode``, or ``"none"``).
DP_MODE_CODES: dict[str, int] = {"none": 0, "example": 1, "client": 2}
#: The single parameter group of client-level DP.
CLIENT_GROUP = "all"
#: ConfigRecord key: t, the shares distributed noise is split into (0: central noise).
DP_NOISE_SHARES = "dp-noise-shares"
#: ConfigRecord key: distributed noise goes into the integer domain of SecAgg+ (discrete
#: Gaussian shares after quantisation, :mod:`umbra.privacy.ddg`) instead of the float update.
DP_INTEGER_NOISE = "dp-integer-noise"
#: ConfigRecord key: ρ, the power of two a DP contribution is divided by before SecAgg+
#: quantisation so that it and its noise share fit the range (:func:`~umbra.privacy.ddg.range_divisor`).
DP_RANGE = "dp-range"


#: Local train-reply metric: the update is a DP contribution, summed unweighted.
DP_UNWEIGHTED = "dp-unweighted"


def dp_mode_code(name: str) -> int:
    """The ``dp-mode`` value of DP mode ``name``; a name without one raises ValueError."""
    if name not in DP_MODE_CODES:
        raise ValueError(f"DP mode {name!r} has no dp-mode code in DP_MODE_CODES")
    return DP_MODE_CODES[name]


def dp_config_keys(group: str) -> tuple[str, str]:
    """ConfigRecord keys carrying a group's noise multiplier and clip norm to a client."""
    return f"dp-sigma-{group}", f"dp-clip-{group}"


def dp_sensitivity_key(group: str) -> str:
    """Local train-reply metric: the group's L2 sensitivity in the contribution's float units."""
    return f"dp-sens-{group}"


@dataclass(frozen=True)
class ClientPlan:
    """One client's DP-SGD plan: Poisson rate, steps per round and per-group noise."""

    sample_rate: float
    steps: int
    noise_multipliers: dict[str, float]
    targets: dict[str, float]


class PrivacyController:
    """Plans noise, enforces the budget and keeps the ledger (see the module docstring).

    What differs between DP modes (the groups, the plans, the releases, what a client is
    told, how ε is reported) is the mode object's (:mod:`umbra.privacy.modes`), looked up
    once from ``privacy.mode``; the controller runs the part every mode shares: the budget
    check before the fsynced ledger write, and the report.

    Args:
        privacy: a PrivacyConfig-like object (mode, epsilon, delta, accountant, weights,
            targets, clip_norm, clip_norms, noise_multiplier, noise, client_rate).
        groups: the model's parameter groups (modalities + ``"shared"``).
        rounds: planned rounds.
        batch_size, local_epochs: the clients' optimisation plan (example-level).
        num_clients: clients in the federation.
        ledger_path: where ``ledger.jsonl`` lives (appended to on resume).
    """

    def __init__(
        self,
        privacy: Any,
        *,
        groups: Sequence[str],
        rounds: int,
        batch_size: int,
        local_epochs: float,
        num_clients: int,
        ledger_path: Path,
    ) -> None:
        # The modes import this module's keys and ClientPlan: imported here, not above.
        from umbra.privacy.modes import ModeSetup, mode_class

        mode = mode_class(privacy.mode)
        self.cfg = privacy
        self.mode: str = mode.name
        self.groups = list(groups)
        self.rounds = int(rounds)
        self.batch_size = int(privacy.batch_size or batch_size)
        self.local_epochs = float(local_epochs)
        self.num_clients = int(num_clients)
        unknown = sorted(set(privacy.clip_norms) - set(self.groups))
        if unknown:
            raise ConfigError(
                f"privacy.clip_norms names {unknown}, not a group of this model {self.groups}"
            )
        self.ledger = PrivacyLedger(
            ledger_path, unit=mode.unit, delta=privacy.delta, accountant=privacy.accountant
        )
        self._mode: DPMode = mode(
            ModeSetup(privacy, tuple(self.groups), self.rounds, self.batch_size, self.local_epochs)
        )

    # ------------------------------------------------------------ the mode's state
    @property
    def distributed_example(self) -> bool:
        """Example-level DP with noise shared out among the silos under secure aggregation."""
        return self._mode.distributed

    @property
    def plans(self) -> dict[int, ClientPlan]:
        """Client -> its DP-SGD plan (example-level DP; empty otherwise)."""
        return self._mode.plans

    @property
    def scales(self) -> dict[int, float]:
        """Distributed DP-SGD: n_i · K / N, the factor turning a client's step (divided by
        its own expected batch q·n_i) into its share of the joint step."""
        return self._mode.scales

    @property
    def mean_expected_batch(self) -> float | None:
        """Distributed DP-SGD: B̄ = qN / K, the divisor of the joint step's gradient sum."""
        return self._mode.mean_expected_batch

    @property
    def client_sigma(self) -> float | None:
        """Client-level DP: the noise multiplier of the clipped update sum."""
        return self._mode.client_sigma

    # ------------------------------------------------------------------- planning
    def clip_norms(self) -> dict[str, float]:
        return {
            g: float(self.cfg.clip_norms.get(g, self.cfg.clip_norm))
            for g in self._mode.clip_groups()
        }

    def plan_clients(self, sizes: Mapping[int, int]) -> None:
        """Allocate per-group noise for every client from its record count (example DP)."""
        self._mode.plan_clients(sizes)

    def release_sensitivities(self, lr: float) -> dict[str, float]:
        """Per group, the L2 sensitivity of one client's distributed-noise contribution in
        its float units: ``lr · C_g / B̄`` for a record in the joint DP-SGD step (the client
        sends ``dp-scale · (y - x)``, one step of size ``lr`` on ``Σ clipped / (q n_i)``),
        ``C`` for a client's clipped update (client-level DP)."""
        return self._mode.release_sensitivities(self.clip_norms(), lr)

    def budget(self, pid: int | None = None) -> Budget:
        return Budget(self.cfg.epsilon, self.cfg.delta, groups=self._mode.budget_groups(pid))

    def before_round(self, rnd: int, clients: Iterable[int]) -> dict[int, dict[str, float | int]]:
        """Check the budget, write the round's releases (fsynced), return each client's DP config.

        Raises:
            BudgetExhausted: a release of this round would exceed a budget; nothing is
                written for the round and nothing may be released.
        """
        clients = sorted(clients)
        clips = self.clip_norms()
        releases = self._mode.releases(rnd, clients, clips)
        for rel in self._to_check(releases):
            party = None if rel.party == "server" else int(rel.party)
            if self.ledger.would_exceed(rel, self.budget(party)):
                spent = self.ledger.spent(rel.party)["total"] if self.ledger.releases else 0.0
                raise BudgetExhausted(
                    f"round {rnd} would exceed the privacy budget ε = {self.cfg.epsilon:g} "
                    f"(δ = {self.cfg.delta:g}) of {'client ' + rel.party if party is not None else 'the federation'}"
                    f" (spent so far: ε = {spent:.3f}); training stopped before releasing it"
                )
        for rel in releases:
            self.ledger.record(rel)
        return {
            pid: {DP_MODE: dp_mode_code(self.mode), **self._mode.client_config(pid, clips)}
            for pid in clients
        }

    def _to_check(self, releases: list[Release]) -> list[Release]:
        """The releases whose budget check implies the others' (see `dominant_parties`).

        Parties with the same budget whose histories differ only by a constant Poisson rate
        spend less at a smaller rate, so only the largest rate of each such class needs the
        (PLD) check. Saves 8 × 5 accountant runs per round in distributed DP-SGD.
        """
        budgets = {
            rel.party: self.budget(None if rel.party == "server" else int(rel.party))
            for rel in releases
        }
        signatures = {
            (b.epsilon, b.delta, tuple(sorted(b.groups.items()))) for b in budgets.values()
        }
        if len(signatures) != 1:
            return releases
        history = {
            rel.party: [*(r for r in self.ledger.contents.releases if r.party == rel.party), rel]
            for rel in releases
        }
        keep = set(dominant_parties(history))
        return [rel for rel in releases if rel.party in keep]

    # ------------------------------------------------------------------- reporting
    def epsilon(self) -> dict[str, float]:
        """ε spent so far: ``{"total", <group>...}`` (worst client for example-level DP)."""
        rep = self.ledger.report(worst_only=True)
        eps = self._mode.epsilon(dict(rep.epsilon))
        return {k: float(v) for k, v in eps.items()}

    def summary(self) -> dict[str, Any]:
        rep = self.ledger.report()
        return {
            "mode": self.mode,
            "unit": self._mode.unit,
            "delta": self.cfg.delta,
            "accountant": self.cfg.accountant,
            "budget": {"epsilon": self.cfg.epsilon, "delta": self.cfg.delta},
            "epsilon": self.epsilon(),
            "worst_party": rep.worst_party,
            "per_party": rep.per_party,
            "releases": rep.releases,
            "clip_norms": self.clip_norms(),
            **self._mode.summary(),
        }
