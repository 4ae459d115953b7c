"""Client-level DP on the client (DP-FedAvg, McMahan et al. 2018,
https://arxiv.org/abs/1710.06963): train normally, then clip the update and, under
distributed noise, add this client's noise share (Flower's ``LocalDpMod`` shape)."""

from __future__ import annotations

from umbra.privacy.client.policy import Arrays, ClientPolicy, config_float, config_int
from umbra.privacy.client_dp import clip_update, noise_share
from umbra.privacy.controller import (
    CLIENT_GROUP,
    DP_INTEGER_NOISE,
    DP_NOISE_SHARES,
    DP_UNWEIGHTED,
    dp_config_keys,
    dp_sensitivity_key,
)
from umbra.privacy.randomness import SecureRandom

__all__ = ["ClientDP"]


class ClientDP(ClientPolicy):
    """Local SGD as without DP; the reply is the clipped update Δ = y - x, summed
    unweighted (``dp-unweighted``).

    Distributed noise: under SecAgg+ (``dp-integer-noise``) the update leaves here noiseless
    and gets a discrete Gaussian share after quantisation (its sensitivity, the clip, rides
    in the local metrics); otherwise (CKKS) this client adds a continuous share
    ``N(0, σ²C²/t)`` from the privacy stream, ``t`` the secure threshold.
    """

    name = "client"

    def reply(
        self, x: Arrays, y: Arrays, out: Arrays, metrics: dict[str, float]
    ) -> tuple[Arrays, dict[str, float]]:
        sigma_key, clip_key = dp_config_keys(CLIENT_GROUP)
        clip = config_float(self.config, clip_key)
        delta, _ = clip_update({k: y[k] - x[k] for k in x}, clip)
        shares = config_int(self.config, DP_NOISE_SHARES, 0)
        metrics = {**metrics, DP_UNWEIGHTED: 1.0}
        if shares > 0 and bool(self.config.get(DP_INTEGER_NOISE, False)):
            metrics[dp_sensitivity_key(CLIENT_GROUP)] = clip
        elif shares > 0:
            private = SecureRandom()  # the noise must be unpredictable
            sigma = config_float(self.config, sigma_key)
            delta = {
                k: (v + noise_share(v.shape, noise_multiplier=sigma, clip_norm=clip,
                                    num_clients=shares, generator=private)).astype(v.dtype)
                for k, v in delta.items()
            }  # fmt: skip
        return delta, metrics
