"""The label holder's part of the model: masked-mean fusion and the classification head.

Given, per entity, the sum of the parties' embeddings ``(B, D)`` and how many modalities
went into it ``(B,)``, the fused embedding is ``sum / max(count, 1)``, exactly
:func:`umbra.models.masked_mean`; ``head`` has the parameter names of
:class:`umbra.models.MultimodalNet`'s.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from umbra.models import ModelSpec

__all__ = ["TopModel"]


class TopModel(nn.Module):
    """``head(sum / count)``: logits ``(B, num_classes)``."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        d = spec.embed_dim
        self.head = nn.Sequential(
            nn.Linear(d, d), nn.ReLU(), nn.Dropout(spec.dropout), nn.Linear(d, spec.num_classes)
        )

    def forward(self, total: Tensor, count: Tensor) -> Tensor:
        fused = total / count.clamp_min(1).to(total.dtype).unsqueeze(1)  # (B, D)
        return self.head(fused)

    def load_from_joint(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Take the head's tensors out of a whole :class:`MultimodalNet` state."""
        own = {k: torch.from_numpy(np.asarray(arrays[k]).copy()) for k in self.state_dict()}
        self.load_state_dict(own, strict=True)
