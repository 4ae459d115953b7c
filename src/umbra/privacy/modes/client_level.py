"""Client-level DP on the server (DP-FedAvg, McMahan et al. 2018,
https://arxiv.org/abs/1710.06963): one flat group, one release per round by the server.

Clients join each round with Poisson rate q, clip their update to C, and Gaussian noise σC
is added to the sum (by the server, or shared out among the clients under secure
aggregation in ``t`` shares). σ is ``privacy.noise_multiplier`` or calibrated to the budget
over the planned rounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from umbra.privacy.budget import calibrate_noise_multiplier
from umbra.privacy.controller import CLIENT_GROUP, dp_config_keys
from umbra.privacy.ledger import Release
from umbra.privacy.modes.mode import DPMode, ModeSetup

__all__ = ["ClientLevel"]


class ClientLevel(DPMode):
    """One noise multiplier for the clipped update sum; the unit of privacy is a client."""

    name = "client"
    unit = "client"

    def __init__(self, setup: ModeSetup) -> None:
        super().__init__(setup)
        cfg = setup.cfg
        self.client_sigma = cfg.noise_multiplier or calibrate_noise_multiplier(
            epsilon=cfg.epsilon,
            delta=cfg.delta,
            sample_rate=cfg.client_rate,
            steps=setup.rounds,
            accountant=cfg.accountant,
        )

    def clip_groups(self) -> list[str]:
        return [CLIENT_GROUP]

    def plan_clients(self, sizes: Mapping[int, int]) -> None:
        """Nothing to plan per client: the server draws the client sample each round."""

    def release_sensitivities(self, clips: Mapping[str, float], lr: float) -> dict[str, float]:
        """``C``: a client's clipped update."""
        return dict(clips)

    def budget_groups(self, pid: int | None) -> dict[str, float]:
        return {}

    def releases(
        self, rnd: int, clients: Sequence[int], clips: Mapping[str, float]
    ) -> list[Release]:
        assert self.client_sigma is not None
        return [
            Release.dpsgd(
                round=rnd,
                party="server",
                sample_rate=self.cfg.client_rate,
                steps=1,
                noise_multipliers={CLIENT_GROUP: self.client_sigma},
                clip_norms=dict(clips),
            )
        ]

    def client_config(self, pid: int, clips: Mapping[str, float]) -> dict[str, float | int]:
        ks, kc = dp_config_keys(CLIENT_GROUP)
        return {ks: float(self.client_sigma or 0.0), kc: clips[CLIENT_GROUP]}

    def epsilon(self, eps: dict[str, float]) -> dict[str, float]:
        """One flat group: each modality spends the total."""
        total = eps.get("total", 0.0)
        return {"total": total, **{g: total for g in self.setup.groups if g != "shared"}}

    def summary(self) -> dict[str, Any]:
        return {
            "noise_multiplier": self.client_sigma,
            "client_rate": self.cfg.client_rate,
            "noise": self.cfg.noise,
        }
