"""A feature party's part of the model: the encoders and projections of its modalities.

The bottom model is the slice ``encoders[m]``, ``projections[m]`` (for the party's
modalities ``m``) of :class:`umbra.models.MultimodalNet`, with the same parameter names, so
the parties' slices and the label holder's top model put back together are that network.
It outputs one row per entity: the sum of its modalities' projected embeddings and how many
there were (a party holds all of its modalities for every one of its rows), which is all
the masked-mean fusion needs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from umbra.models import ModelSpec, build_encoder

__all__ = ["BottomModel"]


class BottomModel(nn.Module):
    """``encoders`` and ``projections`` of ``modalities``, shaped as in ``spec``."""

    def __init__(self, spec: ModelSpec, modalities: tuple[str, ...]) -> None:
        super().__init__()
        missing = [m for m in modalities if m not in spec.input_shapes]
        if not modalities or missing:
            raise ValueError(f"bottom model needs modalities of the spec, got {list(modalities)}")
        self.modalities = modalities
        self.encoders = nn.ModuleDict(
            {
                m: build_encoder(
                    spec.encoders.get(m, m),
                    spec.input_shapes[m],
                    hidden=spec.hidden,
                    dropout=spec.dropout,
                )
                for m in modalities
            }
        )
        self.projections = nn.ModuleDict(
            {m: nn.Linear(spec.hidden, spec.embed_dim) for m in modalities}
        )

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """Sum over the party's modalities of the projected embeddings, ``(n, embed_dim)``."""
        total: Tensor | None = None
        for m in self.modalities:
            z = self.projections[m](self.encoders[m](inputs[m]))  # (n, D)
            total = z if total is None else total + z
        assert total is not None
        return total

    def load_from_joint(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Take this party's tensors out of a whole :class:`MultimodalNet` state."""
        own = {k: torch.from_numpy(np.asarray(arrays[k]).copy()) for k in self.state_dict()}
        self.load_state_dict(own, strict=True)
