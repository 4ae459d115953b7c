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
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from umbra.errors import BudgetExhausted, ConfigError
from umbra.privacy.budget import Allocation, Budget, allocate_budget, calibrate_noise_multiplier
from umbra.privacy.ledger import PrivacyLedger, Release, dominant_parties

__all__ = [
    "CLIENT_GROUP",
    "DP_INTEGER_NOISE",
    "DP_NOISE_SHARES",
    "DP_RANGE",
    "ClientPlan",
    "PrivacyController",
    "dp_config_keys",
    "dp_sensitivity_key",
]

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
        if privacy.mode not in ("example", "client"):
            raise ValueError(f"privacy.mode must be 'example' or 'client', got {privacy.mode!r}")
        self.cfg = privacy
        self.mode: str = privacy.mode
        self.groups = list(groups)
        self.rounds = int(rounds)
        self.batch_size = int(privacy.batch_size or batch_size)
        self.local_epochs = float(local_epochs)
        self.num_clients = int(num_clients)
        #: example-level DP with noise shared out among the silos under secure aggregation
        self.distributed_example = self.mode == "example" and privacy.noise == "distributed"
        unknown = sorted(set(privacy.clip_norms) - set(self.groups))
        if unknown:
            raise ConfigError(
                f"privacy.clip_norms names {unknown}, not a group of this model {self.groups}"
            )
        self.ledger = PrivacyLedger(
            ledger_path,
            unit="example" if self.mode == "example" else "client",
            delta=privacy.delta,
            accountant=privacy.accountant,
        )
        self.plans: dict[int, ClientPlan] = {}
        #: distributed DP-SGD: n_i · K / N, the factor turning a client's step (divided by
        #: its own expected batch q·n_i) into its share of the joint step
        self.scales: dict[int, float] = {}
        #: distributed DP-SGD: B̄ = qN / K, the divisor of the joint step's gradient sum
        self.mean_expected_batch: float | None = None
        self._cache: dict[tuple[float, int], Allocation] = {}
        self.client_sigma: float | None = None
        if self.mode == "client":
            self.client_sigma = privacy.noise_multiplier or calibrate_noise_multiplier(
                epsilon=privacy.epsilon,
                delta=privacy.delta,
                sample_rate=privacy.client_rate,
                steps=self.rounds,
                accountant=privacy.accountant,
            )

    # ----------------------------------------------------------------- example level
    def clip_norms(self) -> dict[str, float]:
        groups = self.groups if self.mode == "example" else [CLIENT_GROUP]
        return {g: float(self.cfg.clip_norms.get(g, self.cfg.clip_norm)) for g in groups}

    def _weights(self) -> tuple[dict[str, float] | None, dict[str, float] | None]:
        if self.cfg.targets is not None:
            return None, dict(self.cfg.targets)
        weights = dict(self.cfg.weights) if self.cfg.weights is not None else {}
        unknown = sorted(set(weights) - set(self.groups))
        if unknown:
            raise ConfigError(
                f"privacy.weights names {unknown}, not a group of this model {self.groups} "
                "(a modality the data lacks?)"
            )
        return {g: float(weights.get(g, 1.0)) for g in self.groups}, None

    def plan_clients(self, sizes: Mapping[int, int]) -> None:
        """Allocate per-group noise for every client from its record count (example DP)."""
        if self.mode != "example":
            return
        weights, targets = self._weights()
        total = sum(sizes.values())
        # Distributed DP-SGD samples every record of the federation at one rate, the
        # Poisson rate of a centralized step of expected batch B·K (B per organisation on
        # average): the smallest organisation no longer sets the noise for everyone.
        joint_q = min(1.0, self.batch_size * len(sizes) / total) if total > 0 else 1.0
        # (so every silo gets the same plan: one q, one σ_g, one set of caps)
        if self.distributed_example and total:
            self.scales = {pid: n * len(sizes) / total for pid, n in sizes.items()}
            self.mean_expected_batch = joint_q * total / len(sizes)
        for pid, n in sorted(sizes.items()):
            if n < 1:
                raise ConfigError(f"client {pid} holds no records")
            if self.cfg.delta > 1.0 / n:
                raise ConfigError(
                    f"privacy.delta = {self.cfg.delta:g} exceeds 1 / n = {1.0 / n:.2g} for "
                    f"client {pid} ({n} records)"
                )
            q = joint_q if self.distributed_example else min(1.0, self.batch_size / n)
            # Distributed noise covers one step per round: a silo's later local steps would
            # depend on its own partial noise only.
            steps = 1 if self.distributed_example else max(1, math.ceil(self.local_epochs / q))
            key = (q, steps)
            if key not in self._cache:
                self._cache[key] = allocate_budget(
                    epsilon=self.cfg.epsilon,
                    delta=self.cfg.delta,
                    sample_rate=q,
                    steps_per_round=steps,
                    rounds=self.rounds,
                    weights=weights,
                    targets=targets,
                    groups=self.groups,
                    accountant=self.cfg.accountant,
                )
            alloc = self._cache[key]
            self.plans[pid] = ClientPlan(
                q, steps, dict(alloc.noise_multipliers), dict(alloc.targets)
            )

    def release_sensitivities(self, lr: float) -> dict[str, float]:
        """Per group, the L2 sensitivity of one client's distributed-noise contribution in
        its float units: ``lr · C_g / B̄`` for a record in the joint DP-SGD step (the client
        sends ``dp-scale · (y - x)``, one step of size ``lr`` on ``Σ clipped / (q n_i)``),
        ``C`` for a client's clipped update (client-level DP)."""
        clips = self.clip_norms()
        if self.mode == "client":
            return clips
        if self.mean_expected_batch is None:
            raise ValueError("release sensitivities exist for distributed DP only")
        return {g: float(lr) * c / self.mean_expected_batch for g, c in clips.items()}

    def budget(self, pid: int | None = None) -> Budget:
        if self.mode == "example" and pid is not None and self.cfg.targets is not None:
            return Budget(self.cfg.epsilon, self.cfg.delta, groups=dict(self.cfg.targets))
        if self.mode == "example" and pid is not None:
            return Budget(self.cfg.epsilon, self.cfg.delta, groups=self.plans[pid].targets)
        return Budget(self.cfg.epsilon, self.cfg.delta, groups={})

    def _release(self, rnd: int, pid: int | None) -> Release:
        clips = self.clip_norms()
        if self.mode == "client":
            assert self.client_sigma is not None
            return Release.dpsgd(
                round=rnd,
                party="server",
                sample_rate=self.cfg.client_rate,
                steps=1,
                noise_multipliers={CLIENT_GROUP: self.client_sigma},
                clip_norms=clips,
            )
        assert pid is not None
        plan = self.plans[pid]
        return Release.dpsgd(
            round=rnd,
            party=str(pid),
            sample_rate=plan.sample_rate,
            steps=plan.steps,
            noise_multipliers=plan.noise_multipliers,
            clip_norms=clips,
        )

    def before_round(self, rnd: int, clients: Iterable[int]) -> dict[int, dict[str, float | int]]:
        """Check the budget, write the round's releases (fsynced), return each client's DP config.

        Raises:
            BudgetExhausted: a release of this round would exceed a budget; nothing is
                written for the round and nothing may be released.
        """
        clients = sorted(clients)
        releases = (
            [self._release(rnd, None)]
            if self.mode == "client"
            else [self._release(rnd, pid) for pid in clients]
        )
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
        clips = self.clip_norms()
        out: dict[int, dict[str, float | int]] = {}
        for pid in clients:
            cfg: dict[str, float | int] = {"dp-mode": 1 if self.mode == "example" else 2}
            if self.mode == "example":
                plan = self.plans[pid]
                cfg.update({"dp-q": plan.sample_rate, "dp-steps": plan.steps})
                if self.distributed_example:
                    # q·n_i / (mean expected batch): the client's step is then divided by the
                    # federation's mean expected batch, as one centralized step would be
                    cfg["dp-scale"] = self.scales[pid]
                if self.cfg.lr is not None:
                    cfg["dp-lr"] = float(self.cfg.lr)
                if self.cfg.momentum is not None:
                    cfg["dp-momentum"] = float(self.cfg.momentum)
                for g, s in plan.noise_multipliers.items():
                    ks, kc = dp_config_keys(g)
                    cfg[ks], cfg[kc] = s, clips[g]
            else:
                ks, kc = dp_config_keys(CLIENT_GROUP)
                cfg[ks], cfg[kc] = float(self.client_sigma or 0.0), clips[CLIENT_GROUP]
            out[pid] = cfg
        return out

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
        eps = dict(rep.epsilon)
        if self.mode == "client":  # one flat group: each modality spends the total
            total = eps.get("total", 0.0)
            eps = {"total": total, **{g: total for g in self.groups if g != "shared"}}
        return {k: float(v) for k, v in eps.items()}

    def summary(self) -> dict[str, Any]:
        rep = self.ledger.report()
        out: dict[str, Any] = {
            "mode": self.mode,
            "unit": "example" if self.mode == "example" else "client",
            "delta": self.cfg.delta,
            "accountant": self.cfg.accountant,
            "budget": {"epsilon": self.cfg.epsilon, "delta": self.cfg.delta},
            "epsilon": self.epsilon(),
            "worst_party": rep.worst_party,
            "per_party": rep.per_party,
            "releases": rep.releases,
            "clip_norms": self.clip_norms(),
        }
        if self.mode == "example":
            out["plans"] = {
                str(pid): {
                    "sample_rate": p.sample_rate,
                    "steps_per_round": p.steps,
                    "noise_multipliers": p.noise_multipliers,
                    "targets": p.targets,
                }
                for pid, p in sorted(self.plans.items())
            }
            out["noise"] = self.cfg.noise
        else:
            out.update(
                noise_multiplier=self.client_sigma,
                client_rate=self.cfg.client_rate,
                noise=self.cfg.noise,
            )
        return out
