"""No DP: plain local training, the reply as trained."""

from __future__ import annotations

from umbra.federation.train import Batchable, TrainSettings, train_local
from umbra.models import MultimodalNet
from umbra.privacy.client.policy import ClientPolicy, Scaffold

__all__ = ["NoDP"]


class NoDP(ClientPolicy):
    """Local SGD (FedProx/SCAFFOLD as configured); nothing to post-process."""

    name = "none"

    def train(
        self,
        model: MultimodalNet,
        data: Batchable,
        settings: TrainSettings,
        *,
        seed: int,
        scaffold: Scaffold | None,
    ) -> dict[str, float]:
        return train_local(model, data, settings, seed=seed, scaffold=scaffold)
