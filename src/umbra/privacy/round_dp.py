"""Differential privacy on the server side of a round, as two hooks around the strategy.

Flower wraps a strategy in ``DifferentialPrivacyServerSide...``; Umbra's round skeletons
(plaintext and secure, `umbra.federation.rounds`, `umbra.federation.secure_round`) call a
`RoundDP` at two points instead:

* `RoundDP.configure` builds the round's train messages: client-level DP first draws the
  Poisson client sample from the privacy stream; before any message exists the controller
  checks the budget and writes (fsyncs) the round's releases to the ledger; every message
  then carries that client's noise plan, the number of noise shares and, under SecAgg+,
  the checked integer-noise plan.
* `RoundDP.finish` turns the sum of client-level DP updates into the new model: the
  server's noise (unless the clients' shares already carry it) and the fixed ``qN``
  divisor of DP-FedAvg.

The controller (`umbra.privacy.controller.PrivacyController`) plans the noise and writes
the ledger; this module only applies its plan to a round.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from umbra.errors import UmbraError
from umbra.federation.common import CONTROL_PREFIX, SecureSettings, SubsetGrid, to_record
from umbra.models import SHARED_GROUP, parameter_modality
from umbra.privacy.client_dp import noised_mean_update, shares_needed
from umbra.privacy.controller import (
    CLIENT_GROUP,
    DP_INTEGER_NOISE,
    DP_NOISE_SHARES,
    DP_RANGE,
    PrivacyController,
)
from umbra.privacy.ddg import plan_integer_noise, range_divisor
from umbra.privacy.randomness import SecureRandom

__all__ = ["RoundDP", "check_integer_noise", "poisson_client_sample"]


class _Configures(Protocol):
    """The part of a strategy `RoundDP.configure` calls (Flower's ``configure_train``)."""

    def configure_train(self, server_round: int, arrays: Any, config: ConfigRecord,
                        grid: Any) -> Iterable[Message]: ...  # fmt: skip


def poisson_client_sample(nodes: Iterable[int], rate: float) -> list[int]:
    """Each node independently with probability ``rate``, drawn from the privacy stream
    (:class:`~umbra.privacy.randomness.SecureRandom`), never from a seeded generator."""
    ordered = sorted(nodes)
    keep = SecureRandom().bernoulli(rate, len(ordered))
    return [n for n, k in zip(ordered, keep, strict=True) if k]


class RoundDP:
    """Server-side DP of a run's rounds: the controller plus what a round needs around it.

    Args:
        controller: plans each client's noise and writes the ledger.
        node_pids: Flower node id -> partition id (the ledger's parties).
        secure: the run's secure-aggregation settings (None: plaintext). Distributed noise
            is split into ``t = ceil(threshold * n)`` shares, the secure threshold.
        integer_noise: the secure transport adds distributed noise as discrete Gaussian
            shares after quantisation (SecAgg+): the plan is checked before any release.
        lr: the federation's learning rate, used by distributed DP-SGD when
            ``privacy.lr`` is unset.
    """

    def __init__(
        self,
        controller: PrivacyController,
        node_pids: Mapping[int, int],
        *,
        secure: SecureSettings | None = None,
        integer_noise: bool = False,
        lr: float | None = None,
    ) -> None:
        self.controller = controller
        self.node_pids = dict(node_pids)
        self.secure = secure
        self.integer_noise = integer_noise
        self.lr = lr

    @property
    def client_level(self) -> bool:
        return self.controller.mode == "client"

    @property
    def distributed_example(self) -> bool:
        """Example-level DP with distributed noise (needs secure aggregation)."""
        return bool(self.controller.distributed_example)

    def configure(
        self, strategy: _Configures, grid: Any, rnd: int, arrays: dict[str, np.ndarray]
    ) -> list[Message]:
        """The round's train messages with each client's noise plan.

        Client-level DP samples clients with Poisson rate q (:func:`poisson_client_sample`,
        from the privacy stream: the sample must be unpredictable to everyone but the
        server, which draws it and is therefore accounted without amplification, see
        :mod:`umbra.privacy.observers`). Distributed noise is split into ``t`` shares
        (``dp-noise-shares``, the secure threshold); under SecAgg+ the shares are discrete
        Gaussians added after quantisation (``dp-integer-noise``), whose plan is checked
        here first. Before any message exists the controller checks the budget and writes
        the round's releases to the ledger (fsynced). May raise
        :class:`~umbra.errors.BudgetExhausted` or :class:`~umbra.privacy.ddg.DDGError`.
        """
        ctl = self.controller
        view: Any = grid
        if self.client_level:
            view = SubsetGrid(grid, poisson_client_sample(grid.get_node_ids(), ctl.cfg.client_rate))
        if not list(view.get_node_ids()):
            ctl.before_round(rnd, [])  # an empty sample still releases noise
            return []
        messages = list(strategy.configure_train(rnd, to_record(arrays), ConfigRecord(), view))
        pids = [self.node_pids[m.metadata.dst_node_id] for m in messages]
        extra: dict[str, Any] = {}
        if ctl.cfg.noise == "distributed":
            # Shares sized for the smallest aggregate the secure aggregation accepts: every
            # sum the server can unmask carries the full noise, no top-up.
            threshold = self.secure.threshold if self.secure is not None else 1.0
            extra[DP_NOISE_SHARES] = shares_needed(float(threshold), len(messages))
            if ctl.distributed_example:
                lr = ctl.cfg.lr or self.lr
                if lr is None:
                    raise UmbraError("distributed DP-SGD needs a learning rate (privacy.lr)")
                extra["dp-lr"] = float(lr)
            if self.integer_noise:
                # discrete Gaussian shares after quantisation: refuse a bad plan before any
                # release
                extra[DP_INTEGER_NOISE] = True
                clip = self.secure.clip_range if self.secure is not None else 4.0
                extra[DP_RANGE] = check_integer_noise(
                    ctl,
                    arrays,
                    clip_range=float(clip),
                    num_clients=len(messages),
                    shares=int(extra[DP_NOISE_SHARES]),
                    lr=extra.get("dp-lr"),
                )
        plans = ctl.before_round(rnd, pids)  # ledger written before any release
        out = []
        for m, pid in zip(messages, pids, strict=True):
            config = ConfigRecord(
                {**dict(m.content.config_records["config"]), **plans[pid], **extra}
            )
            content = RecordDict({"arrays": m.content.array_records["arrays"], "config": config})
            out.append(Message(content=content, dst_node_id=m.metadata.dst_node_id,
                               message_type=m.metadata.message_type))  # fmt: skip
        return out

    def finish(
        self,
        x: Mapping[str, np.ndarray],
        summed: Mapping[str, np.ndarray],
        *,
        received: int,
        sampled: int,
    ) -> dict[str, np.ndarray]:
        """x + the DP-FedAvg mean update from the sum of clipped (noised) client deltas.

        ``received`` of the ``sampled`` clients contributed to ``summed``; the divisor is
        the expected number of clients ``qN`` regardless (it must not depend on the data).
        """
        ctl = self.controller
        sigma = float(ctl.client_sigma or 0.0)
        clip = ctl.clip_norms()["all"]
        # Distributed shares are sized for the secure threshold t: any sum the server can
        # unmask (k >= t contributions) already carries the full noise; central noise is
        # added here.
        carried = 1.0 if ctl.cfg.noise == "distributed" else 0.0
        mean = noised_mean_update(
            dict(summed),
            noise_multiplier=sigma,
            clip_norm=clip,
            expected_clients=ctl.cfg.client_rate * ctl.num_clients,
            noise_already_added=carried,
        )
        return {k: (x[k] + mean[k]).astype(x[k].dtype) for k in x}


def check_integer_noise(
    controller: PrivacyController,
    arrays: Mapping[str, np.ndarray],
    *,
    clip_range: float,
    num_clients: int,
    shares: int,
    lr: float | None,
) -> int:
    """Plan-time choice and check of the distributed discrete Gaussian (clients recompute it).

    Returns ρ (``dp-range``), the power-of-two divisor that keeps a contribution's values
    (at most ``C``, or ``2 lr C_g`` for a joint DP-SGD step with a batch twice the expected
    one) and 12 standard deviations of its noise share inside the quantisation range.
    Raises :class:`~umbra.privacy.ddg.DDGError` when τ is not negligible or the shares still
    do not fit, before the round's releases are written.
    """
    from umbra.secure.secagg.quantize import QuantizationSpec

    spec = QuantizationSpec(clip=float(clip_range), num_clients=num_clients)
    ctl = controller
    client_level = ctl.mode == "client"
    sens = ctl.release_sensitivities(1.0 if client_level else float(lr or 0.0))
    sigmas = (
        {CLIENT_GROUP: float(ctl.client_sigma or 0.0)}
        if client_level
        else next(iter(ctl.plans.values())).noise_multipliers
    )
    clips = ctl.clip_norms()
    value_bound = max(clips.values()) * (1.0 if client_level else 2.0 * float(lr or 0.0))
    share_std = max(sigmas[g] * sens[g] for g in sens) / np.sqrt(shares)
    rho = range_divisor(value_bound=value_bound, share_std=share_std, clip=spec.clip)
    plan_integer_noise(
        {k: int(v.size) for k, v in arrays.items() if not k.startswith(CONTROL_PREFIX)},
        key_group=(lambda _: CLIENT_GROUP)
        if client_level
        else (lambda k: parameter_modality(k) or SHARED_GROUP),
        noise_multipliers=sigmas,
        sensitivities=sens,
        shares=shares,
        scale=spec.scale / rho,
        half_range=spec.clip * spec.scale,
        client_level=client_level,
    )
    return rho
