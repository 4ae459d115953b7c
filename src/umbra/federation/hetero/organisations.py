"""Each organisation's model: the ``model`` section with its ``hetero.organisations``
override, checked to be joinable with the others.

Organisations are joined in the shared embedding space (the fused embedding the head
classifies, which distillation and the shared head rely on), so every model must have
the same embedding size and classes; encoders and their widths may differ.
"""

from __future__ import annotations

from typing import Any

from umbra.config import Config
from umbra.errors import ConfigError
from umbra.models import ModelSpec, MultimodalNet

__all__ = ["check_joinable", "organisation_specs"]


def organisation_specs(cfg: Config, base: dict[str, Any]) -> list[ModelSpec]:
    """One :class:`ModelSpec` per organisation (``base``: the run's spec as a dict, from
    :func:`umbra.run.prepare.model_spec_for`); ConfigError names a bad override."""
    base_spec = ModelSpec.from_dict(base)
    specs: list[ModelSpec] = []
    for i in range(cfg.federation.num_clients):
        org = cfg.hetero.organisations.get(str(i))
        if org is None:
            specs.append(base_spec)
            continue
        try:
            spec = ModelSpec(
                input_shapes=dict(base_spec.input_shapes),
                num_classes=base_spec.num_classes,
                hidden=org.hidden or base_spec.hidden,
                embed_dim=org.embed_dim or base_spec.embed_dim,
                dropout=base_spec.dropout,
                encoders={**base_spec.encoders, **org.encoders},
            )
            MultimodalNet(spec)  # an encoder that cannot take its modality's shape raises here
        except ValueError as err:
            raise ConfigError(f"hetero.organisations.{i}: {err}") from None
        specs.append(spec)
    check_joinable(specs)
    return specs


def check_joinable(specs: list[ModelSpec]) -> None:
    """ConfigError unless every spec has the same modalities, classes and embedding size."""
    if not specs:
        raise ConfigError("a federation needs at least one organisation")
    first = specs[0]
    for i, spec in enumerate(specs[1:], start=1):
        if spec.embed_dim != first.embed_dim:
            raise ConfigError(
                f"organisation {i} embeds into {spec.embed_dim} dimensions, organisation 0 "
                f"into {first.embed_dim}: architectures without a shared embedding size "
                "cannot be joined"
            )
        if spec.modalities != first.modalities or spec.num_classes != first.num_classes:
            raise ConfigError(
                f"organisation {i}'s model takes {list(spec.modalities)} into "
                f"{spec.num_classes} classes, organisation 0's {list(first.modalities)} into "
                f"{first.num_classes}: they cannot be joined"
            )
