"""The label holder: batch choice over the aligned entities, the top model, the gradients.

Runs at the organisation holding the labels (the ServerApp is run there). It knows its own
entities, which parties hold each (its PSI view), the labels (randomised first under label
DP), and per step only the parties' embedding rows — or, under the secure sum, their sum.
Batches are drawn by shuffling the aligned entities each epoch (training randomness from
``run.seed``: which entities share a batch reveals nothing beyond the alignment the parties
already know, see docs/vertical.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from umbra.models import ModelSpec
from umbra.secure.secagg.quantize import QuantizationSpec
from umbra.vertical.secure_sum import unmask_sum
from umbra.vertical.split_step import make_optimizer, scatter_rows, top_step
from umbra.vertical.top_model import TopModel

__all__ = ["BatchRequest", "LabelHolder"]


@dataclass(frozen=True)
class BatchRequest:
    """What one party is asked for in a step: its rows (positions in its aligned list) and
    their places in the batch."""

    positions: np.ndarray
    slots: np.ndarray


class LabelHolder:
    """The top model and the per-step book-keeping of the label holder.

    Args:
        model_spec: the joint model's spec (the head is built from it).
        init: the joint initial arrays (the head's slice is loaded).
        labels: ``(E,)`` training labels of the aligned entities (already randomised
            under label DP).
        positions: per party, ``(E,)`` index into that party's aligned rows, -1 if absent.
        widths: per party, how many modalities it contributes per entity.
    """

    def __init__(
        self,
        model_spec: ModelSpec,
        init: dict[str, np.ndarray],
        labels: np.ndarray,
        positions: Sequence[np.ndarray],
        widths: Sequence[int],
        *,
        batch_size: int,
        lr: float,
        momentum: float,
        weight_decay: float,
        seed: int,
    ) -> None:
        self.top = TopModel(model_spec)
        self.top.load_from_joint(init)
        self.optimizer = make_optimizer(self.top, lr=lr, momentum=momentum,
                                        weight_decay=weight_decay)  # fmt: skip
        self.labels = np.asarray(labels, dtype=np.int64)
        self.positions = [np.asarray(p, dtype=np.int64) for p in positions]
        held = np.stack([p >= 0 for p in self.positions], axis=1)  # (E, K)
        self.count = (held * np.asarray(widths)[None, :]).sum(axis=1)  # modalities per entity
        self.batch_size = batch_size
        self.seed = seed
        self.embed_dim = model_spec.embed_dim
        self.num_classes = model_spec.num_classes

    @property
    def parties(self) -> int:
        return len(self.positions)

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The epoch's batches: the aligned entities shuffled, in chunks of ``batch_size``."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.labels))
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def request(self, batch: np.ndarray, party: int) -> BatchRequest:
        """Party ``party``'s rows of ``batch`` and their slots."""
        pos = self.positions[party][batch]
        slots = np.flatnonzero(pos >= 0)
        return BatchRequest(positions=pos[slots], slots=slots)

    def plain_total(self, rows: Sequence[np.ndarray], requests: Sequence[BatchRequest],
                    batch: int) -> np.ndarray:  # fmt: skip
        """The batch's embedding sums from every party's plaintext rows."""
        parts = [(r.slots, x) for r, x in zip(requests, rows, strict=True)]
        return scatter_rows(parts, batch, self.embed_dim)

    def secure_total(self, shares: Sequence[np.ndarray], batch: int, clip: float) -> np.ndarray:
        """The batch's embedding sums from the parties' masked shares (only the sum)."""
        spec = QuantizationSpec(clip=clip, num_clients=self.parties)
        return unmask_sum(list(shares), spec=spec, shape=(batch, self.embed_dim))

    def step(self, batch: np.ndarray, total: np.ndarray) -> tuple[float, np.ndarray]:
        """Loss and ``∂L/∂total`` ``(B, D)`` of the batch; the head takes its SGD step."""
        return top_step(self.top, self.optimizer, total, self.count[batch], self.labels[batch])

    def export(self) -> dict[str, np.ndarray]:
        """The head's arrays (names as in the joint network)."""
        return {k: v.detach().numpy().copy() for k, v in self.top.state_dict().items()}
