"""Example-level DP on the client: the local trainer is DP-SGD
(:func:`~umbra.federation.train.train_local_dp`), with the distributed-noise variants of
cross-silo DP-SGD (Heikkilä et al. 2020, https://arxiv.org/abs/2006.07218)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from umbra.federation.train import Batchable, TrainSettings, train_local_dp
from umbra.models import MultimodalNet, parameter_groups
from umbra.privacy.client.policy import Arrays, ClientPolicy, Scaffold, config_float, config_int
from umbra.privacy.client_dp import share_multiplier
from umbra.privacy.controller import (
    DP_INTEGER_NOISE,
    DP_NOISE_SHARES,
    DP_UNWEIGHTED,
    dp_config_keys,
    dp_sensitivity_key,
)

__all__ = ["ExampleDP"]


class ExampleDP(ClientPolicy):
    """DP-SGD with the server's per-group plan (``dp-q``, ``dp-steps``, ``dp-sigma-<g>``,
    ``dp-clip-<g>``, optional ``dp-lr``/``dp-momentum``).

    Distributed noise (``dp-noise-shares`` = t > 0): one step per round, summed unweighted
    and scaled by ``dp-scale``. Under CKKS this silo adds ``1/√t`` of each group's noise;
    under SecAgg+ (``dp-integer-noise``) it adds none and releases the step computed from the
    gradient in float64, noised after quantisation, with its per-group sensitivities in the
    local metrics.
    """

    name = "example"

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self.shares = config_int(self.config, DP_NOISE_SHARES, 0)
        #: SecAgg+: noise added after quantisation, not here
        self.integer_noise = self.shares > 0 and bool(self.config.get(DP_INTEGER_NOISE, False))
        #: SecAgg+: the step, float64, from the gradient (filled by the trainer)
        self.release: Arrays | None = {} if self.integer_noise else None

    def settings(self, base: TrainSettings) -> TrainSettings:
        """``dp-lr`` and ``dp-momentum`` when the plan sets them (SCAFFOLD's control update
        then uses the step actually taken)."""
        return TrainSettings(
            **{
                **base.__dict__,
                "lr": config_float(self.config, "dp-lr", base.lr),
                "momentum": config_float(self.config, "dp-momentum", base.momentum),
            }
        )

    def train(
        self,
        model: MultimodalNet,
        data: Batchable,
        settings: TrainSettings,
        *,
        seed: int,
        scaffold: Scaffold | None,
    ) -> dict[str, float]:
        groups = parameter_groups(model)
        sig = {g: config_float(self.config, dp_config_keys(g)[0]) for g in groups}
        clip = {g: config_float(self.config, dp_config_keys(g)[1]) for g in groups}
        steps = config_int(self.config, "dp-steps")
        if self.integer_noise:
            if steps != 1:
                raise ValueError("distributed DP-SGD takes exactly one step per round")
            sig = dict.fromkeys(sig, 0.0)
        elif self.shares > 0:  # CKKS: this silo adds 1/√shares of each group's noise
            sig = {g: share_multiplier(s, self.shares) for g, s in sig.items()}
        q = config_float(self.config, "dp-q")
        metrics = train_local_dp(
            model,
            data,
            settings,
            sample_rate=q,
            steps=steps,
            noise_multipliers=sig,
            clip_norms=clip,
            seed=seed,
            scaffold=scaffold,
            deferred_noise=self.integer_noise,
            release=self.release,
        )
        if self.integer_noise:
            # A record moves Σ clipped by ≤ C_g; the reply is dp-scale · (y - x) with
            # y - x = -lr Σ clipped / (q n_i) + data-independent terms.
            factor = config_float(self.config, "dp-scale", 1.0) * settings.lr / (q * len(data))
            metrics.update({dp_sensitivity_key(g): factor * c for g, c in clip.items()})
        return metrics

    def reply(
        self, x: Arrays, y: Arrays, out: Arrays, metrics: dict[str, float]
    ) -> tuple[Arrays, dict[str, float]]:
        """Distributed noise: one noisy step, summed unweighted. Scaled by q·n_i / B̄
        (``dp-scale``, B̄ the mean expected batch), the sum over K clients divided by K is
        -lr/(qN) · (Σ clipped gradients + the full noise): a centralized DP-SGD step."""
        if self.shares <= 0:
            return out, metrics
        scale = config_float(self.config, "dp-scale", 1.0)
        if self.release is not None:  # SecAgg+: float64 from the gradient, noise added later
            release = self.release
            out = {k: release[k] * scale if k in release else np.zeros(x[k].shape) for k in x}
        else:
            out = {k: ((y[k] - x[k]) * scale).astype(y[k].dtype) for k in x}
        return out, {**metrics, DP_UNWEIGHTED: 1.0}
