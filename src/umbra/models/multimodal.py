"""The multimodal classifier: per-modality encoders and projections, masked fusion, a head.

``MultimodalNet`` is a late-fusion network: ``encoders[m]`` maps modality ``m`` to
``hidden`` features, ``projections[m]`` maps those into one shared ``embed_dim`` space (where
the InfoNCE alignment loss of :mod:`umbra.models.losses` pulls a record's modalities
together, as in CLIP, https://arxiv.org/abs/2103.00020), :class:`MaskedMeanFusion` averages
the embeddings of the modalities a record holds and ``head`` classifies the result.

The forward pass has no data-dependent control flow: every encoder runs on the whole
(zero-filled) batch and the mask selects. So it works under ``opacus.GradSampleModule``, under
``torch.func.functional_call`` + ``vmap``, and every parameter always gets a (possibly zero)
gradient.

Parameter names carry their modality (``encoders.<m>.*``, ``projections.<m>.*``), which is
what per-modality clipping and budgets key on (:func:`parameter_modality`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from umbra.models.encoders import build_encoder, encoder_names
from umbra.models.fusion import MaskedMeanFusion

if TYPE_CHECKING:
    from umbra.data.dataset import MultimodalData

__all__ = [
    "SHARED_GROUP",
    "ModelSpec",
    "MultimodalNet",
    "num_parameters",
    "parameter_groups",
    "parameter_modality",
]

#: Key of :func:`parameter_groups` for parameters that belong to no single modality.
SHARED_GROUP = "shared"
_MODALITY_CONTAINERS = ("encoders", "projections")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a :class:`MultimodalNet` (and to rebuild it from a checkpoint).

    Attributes:
        input_shapes: modality -> per-sample feature shape, in the data's modality order
            (the order of the mask's columns). Each modality needs a registered encoder.
        num_classes: number of classes, >= 2.
        hidden: width of every encoder's output, >= 1.
        embed_dim: width of the shared embedding space and of the head's hidden layer, >= 1.
        dropout: dropout probability in encoders and head, in [0, 1).
        encoders: modality -> registered encoder name, for modalities that do not use the
            encoder registered under their own name (e.g. ``{"audio": "spectral-stats"}``).
        encoder_options: modality -> keyword settings of its encoder, JSON values (e.g.
            ``{"text": {"rank": 8, "alpha": 16.0, "targets": ["query", "value"]}}``).
    """

    input_shapes: dict[str, tuple[int, ...]]
    num_classes: int
    hidden: int = 128
    embed_dim: int = 64
    dropout: float = 0.1
    encoders: dict[str, str] = field(default_factory=dict)
    encoder_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.input_shapes:
            raise ValueError("input_shapes must name at least one modality")
        shapes = {str(m): tuple(int(s) for s in shp) for m, shp in self.input_shapes.items()}
        choice = {str(m): str(e) for m, e in self.encoders.items()}
        extra = sorted(set(choice) - set(shapes))
        if extra:
            raise ValueError(f"encoders names modalities the data lacks: {extra}")
        unknown = [m for m in shapes if choice.get(m, m) not in encoder_names()]
        if unknown:
            raise ValueError(
                f"no registered encoder for modalities {unknown}"
                f" ({', '.join(f'{m} -> {choice.get(m, m)}' for m in unknown)});"
                f" registered: {', '.join(encoder_names())}"
            )
        object.__setattr__(self, "encoders", choice)
        options = {str(m): dict(o) for m, o in self.encoder_options.items()}
        extra = sorted(set(options) - set(shapes))
        if extra:
            raise ValueError(f"encoder_options names modalities the data lacks: {extra}")
        object.__setattr__(self, "encoder_options", options)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {self.hidden}")
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {self.embed_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        object.__setattr__(self, "input_shapes", shapes)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modality names in mask-column order."""
        return tuple(self.input_shapes)

    @classmethod
    def from_data(cls, data: MultimodalData, **overrides: Any) -> ModelSpec:
        """Spec matching ``data``'s modalities, feature shapes and classes; ``overrides`` win."""
        kwargs: dict[str, Any] = {
            "input_shapes": data.feature_shapes(),
            "num_classes": data.num_classes,
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (shapes as lists); :meth:`from_dict` inverts it."""
        return {
            "input_shapes": {m: list(s) for m, s in self.input_shapes.items()},
            "num_classes": self.num_classes,
            "hidden": self.hidden,
            "embed_dim": self.embed_dim,
            "dropout": self.dropout,
            "encoders": dict(self.encoders),
            "encoder_options": {m: dict(o) for m, o in self.encoder_options.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        shapes = {m: tuple(s) for m, s in d["input_shapes"].items()}
        return cls(**{**d, "input_shapes": shapes})


class MultimodalNet(nn.Module):
    """Late-fusion classifier over any non-empty subset of modalities per record.

    Attributes:
        encoders: modality -> encoder, ``(B, *input_shape) -> (B, hidden)``.
        projections: modality -> ``Linear(hidden, embed_dim)`` into the shared space.
        fusion: masked mean over the modalities each record holds.
        head: ``Linear(D, D) -> ReLU -> Dropout -> Linear(D, num_classes)``.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.modalities: tuple[str, ...] = spec.modalities
        self.encoders = nn.ModuleDict(
            {
                m: build_encoder(
                    spec.encoders.get(m, m),
                    shape,
                    hidden=spec.hidden,
                    dropout=spec.dropout,
                    options=spec.encoder_options.get(m),
                )
                for m, shape in spec.input_shapes.items()
            }
        )
        self.projections = nn.ModuleDict(
            {m: nn.Linear(spec.hidden, spec.embed_dim) for m in self.modalities}
        )
        self.fusion = MaskedMeanFusion()
        self.head = nn.Sequential(
            nn.Linear(spec.embed_dim, spec.embed_dim),
            nn.ReLU(),
            nn.Dropout(spec.dropout),
            nn.Linear(spec.embed_dim, spec.num_classes),
        )

    def _check(self, inputs: dict[str, Tensor], mask: Tensor) -> None:
        # Shape/dtype checks only: static under vmap, no data-dependent branches.
        if set(inputs) != set(self.modalities):
            raise ValueError(
                f"inputs must hold exactly the modalities {list(self.modalities)},"
                f" got {sorted(inputs)}"
            )
        if mask.dim() != 2 or mask.shape[1] != len(self.modalities) or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a (B, {len(self.modalities)}) bool tensor,"
                f" got {mask.dtype} {tuple(mask.shape)}"
            )
        for m in self.modalities:
            x = inputs[m]
            if tuple(x.shape[1:]) != self.spec.input_shapes[m] or x.shape[0] != mask.shape[0]:
                raise ValueError(
                    f"inputs[{m!r}] must have shape (B={mask.shape[0]}, "
                    f"*{self.spec.input_shapes[m]}), got {tuple(x.shape)}"
                )

    def embed(self, inputs: dict[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
        """Per-modality embeddings in the shared space, ``m -> (B, embed_dim)``.

        Rows of records that lack modality ``m`` are exactly zero.
        """
        self._check(inputs, mask)
        out: dict[str, Tensor] = {}
        for j, m in enumerate(self.modalities):
            z = self.projections[m](self.encoders[m](inputs[m]))  # (B, D)
            out[m] = torch.where(mask[:, j : j + 1], z, torch.zeros_like(z))
        return out

    def forward_with_embeddings(
        self, inputs: dict[str, Tensor], mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits ``(B, num_classes)`` and the per-modality embeddings of :meth:`embed`."""
        emb = self.embed(inputs, mask)
        return self.fuse(emb, mask), emb

    def fuse(self, embeddings: dict[str, Tensor], mask: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` from per-modality embeddings (``m -> (B, embed_dim)``,
        as :meth:`embed` returns them), fusing only the modalities ``mask`` ``(B, M)`` flags.

        ``mask`` may hide modalities the embeddings were computed for (modality dropout
        hides them from the fusion while the alignment loss still pairs them).
        """
        stacked = torch.stack([embeddings[m] for m in self.modalities], dim=1)  # (B, M, D)
        return self.head(self.fusion(stacked, mask))

    def forward(self, inputs: dict[str, Tensor], mask: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` from ``inputs`` (``m -> (B, *shape)``) and mask ``(B, M)``.

        A record's logits depend only on the features of the modalities its mask row holds.
        """
        return self.forward_with_embeddings(inputs, mask)[0]


def parameter_modality(name: str) -> str | None:
    """Modality a parameter belongs to, from its dotted name; None for shared parameters.

    ``"encoders.audio.0.weight" -> "audio"``, ``"projections.text.weight" -> "text"``,
    ``"head.0.weight" -> None``. Wrapper prefixes (``"_module."`` of Opacus'
    ``GradSampleModule``, ``"module."`` of DDP) are ignored.
    """
    parts = name.split(".")
    for k, part in enumerate(parts[:-1]):
        if part in _MODALITY_CONTAINERS:
            return parts[k + 1]
    return None


def parameter_groups(model: nn.Module) -> dict[str, list[str]]:
    """Partition ``model``'s parameter names by modality, plus ``"shared"`` (always present).

    Modality keys appear in the order of the model's first parameter of each modality.
    """
    groups: dict[str, list[str]] = {}
    shared: list[str] = []
    for name, _ in model.named_parameters():
        modality = parameter_modality(name)
        if modality is None:
            shared.append(name)
        else:
            groups.setdefault(modality, []).append(name)
    if SHARED_GROUP in groups:
        raise ValueError(f"a modality may not be named {SHARED_GROUP!r}")
    groups[SHARED_GROUP] = shared
    return groups


def num_parameters(model: nn.Module) -> int:
    """Number of trainable scalars in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
