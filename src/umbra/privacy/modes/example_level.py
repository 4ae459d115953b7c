"""Example-level DP on the server: a DP-SGD plan per client, one release per sampled client.

Client i samples records with Poisson rate ``q_i = batch_size / n_i`` for
``steps_i = ceil(local_epochs / q_i)`` steps per round; each parameter group g has its own
clip norm and noise multiplier σ_{i,g} (:func:`~umbra.privacy.budget.allocate_budget`).
With ``privacy.noise = "distributed"`` the silos run one joint DP-SGD step per round at one
rate ``q = batch_size · K / N`` (see :mod:`umbra.privacy.controller`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from umbra.errors import ConfigError
from umbra.privacy.budget import Allocation, allocate_budget
from umbra.privacy.controller import ClientPlan, dp_config_keys
from umbra.privacy.ledger import Release
from umbra.privacy.modes.mode import DPMode, ModeSetup

__all__ = ["ExampleLevel"]


class ExampleLevel(DPMode):
    """Per-client, per-group DP-SGD plans; the unit of privacy is one record."""

    name = "example"
    unit = "example"

    def __init__(self, setup: ModeSetup) -> None:
        super().__init__(setup)
        self.distributed = setup.cfg.noise == "distributed"
        self.plans: dict[int, ClientPlan] = {}
        self._cache: dict[tuple[float, int], Allocation] = {}

    def clip_groups(self) -> list[str]:
        return list(self.setup.groups)

    def _weights(self) -> tuple[dict[str, float] | None, dict[str, float] | None]:
        groups = list(self.setup.groups)
        if self.cfg.targets is not None:
            return None, dict(self.cfg.targets)
        weights = dict(self.cfg.weights) if self.cfg.weights is not None else {}
        unknown = sorted(set(weights) - set(groups))
        if unknown:
            raise ConfigError(
                f"privacy.weights names {unknown}, not a group of this model {groups} "
                "(a modality the data lacks?)"
            )
        return {g: float(weights.get(g, 1.0)) for g in groups}, None

    def plan_clients(self, sizes: Mapping[int, int]) -> None:
        weights, targets = self._weights()
        total = sum(sizes.values())
        # Distributed DP-SGD samples every record of the federation at one rate, the
        # Poisson rate of a centralized step of expected batch B·K (B per organisation on
        # average): the smallest organisation no longer sets the noise for everyone.
        joint_q = min(1.0, self.setup.batch_size * len(sizes) / total) if total > 0 else 1.0
        # (so every silo gets the same plan: one q, one σ_g, one set of caps)
        if self.distributed and total:
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
            q = joint_q if self.distributed else min(1.0, self.setup.batch_size / n)
            # Distributed noise covers one step per round: a silo's later local steps would
            # depend on its own partial noise only.
            steps = 1 if self.distributed else max(1, math.ceil(self.setup.local_epochs / q))
            key = (q, steps)
            if key not in self._cache:
                self._cache[key] = allocate_budget(
                    epsilon=self.cfg.epsilon,
                    delta=self.cfg.delta,
                    sample_rate=q,
                    steps_per_round=steps,
                    rounds=self.setup.rounds,
                    weights=weights,
                    targets=targets,
                    groups=list(self.setup.groups),
                    accountant=self.cfg.accountant,
                )
            alloc = self._cache[key]
            self.plans[pid] = ClientPlan(
                q, steps, dict(alloc.noise_multipliers), dict(alloc.targets)
            )

    def release_sensitivities(self, clips: Mapping[str, float], lr: float) -> dict[str, float]:
        """``lr · C_g / B̄`` for a record in the joint DP-SGD step (the client sends
        ``dp-scale · (y - x)``, one step of size ``lr`` on ``Σ clipped / (q n_i)``)."""
        if self.mean_expected_batch is None:
            raise ValueError("release sensitivities exist for distributed DP only")
        return {g: float(lr) * c / self.mean_expected_batch for g, c in clips.items()}

    def budget_groups(self, pid: int | None) -> dict[str, float]:
        if pid is None:
            return {}
        if self.cfg.targets is not None:
            return dict(self.cfg.targets)
        return self.plans[pid].targets

    def releases(
        self, rnd: int, clients: Sequence[int], clips: Mapping[str, float]
    ) -> list[Release]:
        return [
            Release.dpsgd(
                round=rnd,
                party=str(pid),
                sample_rate=self.plans[pid].sample_rate,
                steps=self.plans[pid].steps,
                noise_multipliers=self.plans[pid].noise_multipliers,
                clip_norms=dict(clips),
            )
            for pid in clients
        ]

    def client_config(self, pid: int, clips: Mapping[str, float]) -> dict[str, float | int]:
        plan = self.plans[pid]
        cfg: dict[str, float | int] = {"dp-q": plan.sample_rate, "dp-steps": plan.steps}
        if self.distributed:
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
        return cfg

    def summary(self) -> dict[str, Any]:
        return {
            "plans": {
                str(pid): {
                    "sample_rate": p.sample_rate,
                    "steps_per_round": p.steps,
                    "noise_multipliers": p.noise_multipliers,
                    "targets": p.targets,
                }
                for pid, p in sorted(self.plans.items())
            },
            "noise": self.cfg.noise,
        }
