"""The per-record gradient step of DP-SGD as a pluggable backend.

:class:`~umbra.privacy.dpsgd.DPSGD` clips, sums and noises; a backend only computes, for
one Poisson batch, each record's gradient (or the terms it is made of) per parameter group.
All backends give the same gradients for a per-record-separable loss (tests compare them
with a batch-size-1 loop). The registry is :mod:`umbra.privacy.dpsgd_backends.registry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from opacus import GradSampleModule
from torch import Tensor, nn

from umbra.privacy.bookkeeping import PerSample

__all__ = ["PerSampleBackend", "PerSampleLossFn", "check_losses", "validate_layers"]

#: ``(model, batch) -> losses`` of shape ``(B,)``, one loss per record, no reduction
PerSampleLossFn = Callable[[nn.Module, Any], Tensor]


def check_losses(losses: Tensor, batch_size: int) -> None:
    """Refuse a loss function that does not return one loss per record."""
    if losses.dim() != 1 or losses.shape[0] != batch_size:
        raise ValueError(
            f"per_sample_loss_fn must return per-record losses of shape ({batch_size},),"
            f" got {tuple(losses.shape)}"
        )


def validate_layers(model: nn.Module) -> None:
    """Opacus' layer rules (no BatchNorm: it mixes records), for backends without its hooks."""
    errors = GradSampleModule.validate(model, strict=False)
    if errors:
        raise ValueError(f"model is not DP-SGD compatible: {errors}")


class PerSampleBackend(ABC):
    """Computes per-record gradient terms per parameter group; subclasses set ``name``.

    Args:
        model: the model DP-SGD trains.
        params: group -> its trainable parameters, in model order.
        names: ``id(parameter)`` -> its ``model.named_parameters()`` name.
    """

    name: ClassVar[str]

    def __init__(
        self,
        model: nn.Module,
        params: Mapping[str, Sequence[nn.Parameter]],
        names: Mapping[int, str],
    ) -> None:
        self.model = model
        self.params = params
        self.names = names
        self.attach()

    def attach(self) -> None:
        """Check the model and attach what the backend needs (default: Opacus' layer rules)."""
        validate_layers(self.model)

    @abstractmethod
    def per_sample(
        self, loss_fn: PerSampleLossFn, batch: Any, batch_size: int
    ) -> dict[str, list[PerSample | None]]:
        """Group -> per parameter, the batch's per-record gradient terms (``batch_size`` > 0)."""

    def before_step(self) -> None:  # noqa: B027 (optional hook, most backends need none)
        """Called at the start of every step, empty batches included."""

    def after_step(self, batch_size: int) -> None:  # noqa: B027 (optional hook)
        """Called after the clipped sum of every step is formed."""

    def close(self) -> None:  # noqa: B027 (optional hook: functorch attaches nothing)
        """Detach whatever the backend attached to the model."""
