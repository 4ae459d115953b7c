"""SCAFFOLD (Karimireddy et al. 2020, https://arxiv.org/abs/1910.06378), option II.

The server keeps the global control variate ``c`` and sends it with the model under the
``cv.`` prefix; each client corrects every local gradient by ``c - c_i``, updates its own
``c_i`` and returns its new model ``y_i`` and ``Δc_i`` (also ``cv.``-prefixed). The server
applies ``x ← x + η_g (avg(y_i) - x)`` and ``c ← c + |S|/N · avg(Δc_i)``, both averages
modality-aware.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from umbra.federation.common import from_record, to_record
from umbra.federation.strategies.defence import Defence
from umbra.federation.strategies.modality import CONTROL_PREFIX, ModalityFedAvg

__all__ = ["Scaffold", "scaffold_server_update"]


def scaffold_server_update(
    x: Mapping[str, np.ndarray],
    c: Mapping[str, np.ndarray],
    avg_y: Mapping[str, np.ndarray],
    avg_dc: Mapping[str, np.ndarray],
    *,
    server_lr: float,
    participation: float,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One SCAFFOLD server step. ``participation`` = |S| / N in (0, 1]."""
    if server_lr <= 0:
        raise ValueError(f"server_lr must be > 0, got {server_lr}")
    if not 0 < participation <= 1:
        raise ValueError(f"participation must be in (0, 1], got {participation}")
    new_x = {k: (x[k] + server_lr * (avg_y[k] - x[k])).astype(x[k].dtype) for k in x}
    new_c = {k: (c[k] + participation * avg_dc[k]).astype(c[k].dtype) for k in c}
    return new_x, new_c


class Scaffold(ModalityFedAvg):
    """SCAFFOLD as a Flower strategy; see the module docstring."""

    def __init__(self, *, server_lr: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if server_lr <= 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        self.server_lr = server_lr
        self.control: dict[str, np.ndarray] | None = None
        self._num_nodes = 1

    def set_defence(self, defence: Defence) -> None:
        """SCAFFOLD refuses robust aggregation, clipping and screening: its control-variate
        deltas are averaged with the model and assume the mean."""
        if defence.active:
            raise ValueError(
                "federation.strategy = 'scaffold' cannot use robust aggregation, update "
                "clipping, screening or reputation: its control variates assume the plain mean"
            )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.control is None:
            self.control = {k: np.zeros_like(v.numpy()) for k, v in arrays.items()}
        self._num_nodes = max(1, len(list(grid.get_node_ids())))
        with_control = to_record(
            {
                **from_record(arrays),
                **{CONTROL_PREFIX + k: v for k, v in self.control.items()},
            }
        )
        messages = super().configure_train(server_round, with_control, config, grid)
        # The global model alone is what the strategy tracks (not the control variates).
        self.global_arrays = {k: v.numpy() for k, v in arrays.items()}
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        record, metrics = super().aggregate_train(server_round, replies)
        if record is None or self.global_arrays is None or self.control is None:
            return record, metrics
        avg = {k: v.numpy() for k, v in record.items()}
        avg_y = {k: v for k, v in avg.items() if not k.startswith(CONTROL_PREFIX)}
        avg_dc = {
            k[len(CONTROL_PREFIX) :]: v for k, v in avg.items() if k.startswith(CONTROL_PREFIX)
        }
        n_ok = sum(1 for m in replies if not m.has_error())
        new_x, self.control = scaffold_server_update(
            self.global_arrays,
            self.control,
            avg_y,
            avg_dc,
            server_lr=self.server_lr,
            participation=min(1.0, n_ok / self._num_nodes),
        )
        return to_record(new_x), metrics

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {f"c/{k}": v for k, v in (self.control or {}).items()}

    def load_state_arrays(self, state: Mapping[str, np.ndarray]) -> None:
        c = {k[2:]: np.asarray(v) for k, v in state.items() if k.startswith("c/")}
        self.control = c or None
