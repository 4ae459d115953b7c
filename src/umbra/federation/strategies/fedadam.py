"""FedAdam (FedOpt, Reddi et al. 2021, https://arxiv.org/abs/2003.00295) on top of the
modality-aware average: Flower's FedAdam computes the pseudo-gradient from
:class:`ModalityFedAvg`'s aggregate and applies a server-side Adam step.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.serverapp.strategy import FedAdam

from umbra.federation.strategies.modality import ModalityFedAvg

__all__ = ["UmbraFedAdam"]


class UmbraFedAdam(FedAdam, ModalityFedAvg):
    """Flower's FedAdam whose inner average is modality-aware (MRO: FedAdam -> FedOpt ->
    ModalityFedAvg -> FedAvg)."""

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = super().state_arrays()
        for name, moment in (("m", self.m_t), ("v", self.v_t)):
            for k, v in (moment or {}).items():
                out[f"{name}/{k}"] = v
        return out

    def load_state_arrays(self, state: Mapping[str, np.ndarray]) -> None:
        super().load_state_arrays(state)
        m = {k[2:]: np.asarray(v) for k, v in state.items() if k.startswith("m/")}
        v = {k[2:]: np.asarray(x) for k, x in state.items() if k.startswith("v/")}
        self.m_t = m or None
        self.v_t = v or None
