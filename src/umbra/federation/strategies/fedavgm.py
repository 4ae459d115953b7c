"""FedAvgM (server momentum, Hsu et al. 2019, https://arxiv.org/abs/1909.06335) on top of
the modality-aware average: Flower's FedAvgM takes :class:`ModalityFedAvg`'s aggregate as
the new point, forms the pseudo-gradient ``x - avg`` and applies a server SGD step with
heavy-ball momentum.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvgM

from umbra.federation.strategies.modality import ModalityFedAvg

__all__ = ["UmbraFedAvgM"]

_MOMENTUM = "momentum/"


class UmbraFedAvgM(FedAvgM, ModalityFedAvg):
    """Flower's FedAvgM whose inner average is modality-aware (MRO: FedAvgM ->
    ModalityFedAvg -> FedAvg)."""

    _restored: dict[str, np.ndarray] | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # Flower sets its reference point only once, then tracks its own output; the
        # global model is whatever the run holds now (a resumed checkpoint, a DP-noised
        # or securely aggregated step), so take it afresh every round.
        self.current_arrays = arrays
        if self._restored is not None:
            self.momentum_vector = [self._restored[k] for k in arrays]
            self._restored = None
        return super().configure_train(server_round, arrays, config, grid)

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = super().state_arrays()
        if self.momentum_vector is None or self.current_arrays is None:
            return out
        keys = list(self.current_arrays.keys())
        return out | {f"{_MOMENTUM}{k}": v for k, v in zip(keys, self.momentum_vector, strict=True)}

    def load_state_arrays(self, state: Mapping[str, np.ndarray]) -> None:
        super().load_state_arrays(state)
        # Flower keeps the momentum as a list in the order of the global ArrayRecord's
        # keys; checkpoints hold it by name, put back in that order at the next round.
        named = {
            k[len(_MOMENTUM) :]: np.asarray(v) for k, v in state.items() if k.startswith(_MOMENTUM)
        }
        self._restored = named or None
