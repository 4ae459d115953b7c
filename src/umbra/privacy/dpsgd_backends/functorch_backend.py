"""``"functorch"``: ``torch.func`` ``functional_call`` + ``vmap(grad)``; the loss is evaluated
on batches of one record, so any model that runs under ``vmap`` works."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from umbra.privacy.bookkeeping import PerSample
from umbra.privacy.dpsgd_backends.backend import PerSampleBackend, PerSampleLossFn

__all__ = ["FunctorchBackend"]


def _map(fn: Callable[[Tensor], Tensor], batch: Any) -> Any:
    if isinstance(batch, Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {k: _map(fn, v) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(_map(fn, v) for v in batch)
    if isinstance(batch, list):
        return [_map(fn, v) for v in batch]
    return batch


class _LossOfOne(nn.Module):
    """``(batch) -> loss_fn(model, batch)`` as a module, so ``functional_call`` can swap the
    model's parameters while the caller's loss function calls ``model`` as usual."""

    def __init__(self, model: nn.Module, loss_fn: PerSampleLossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Tensor:
        one = _map(lambda t: t.unsqueeze(0), batch)  # a batch of one record
        return self.loss_fn(self.model, one)


class FunctorchBackend(PerSampleBackend):
    """Per-record gradients ``(B, *p.shape)`` per group via ``vmap(grad(...))``; separable by
    construction (each record's loss sees that record only)."""

    name = "functorch"

    def per_sample(
        self, loss_fn: PerSampleLossFn, batch: Any, batch_size: int
    ) -> dict[str, list[PerSample | None]]:
        wrapper = _LossOfOne(self.model, loss_fn)
        params = {
            "model." + self.names[id(p)]: p.detach()
            for plist in self.params.values()
            for p in plist
        }

        def one(ps: dict[str, Tensor], record: Any) -> Tensor:
            loss = functional_call(wrapper, ps, (record,))
            if loss.shape != (1,):
                raise ValueError(
                    "per_sample_loss_fn must return per-record losses of shape (B,),"
                    f" got {tuple(loss.shape)} for B = 1"
                )
            return loss[0]

        grads = vmap(grad(one), in_dims=(None, 0), randomness="different")(params, batch)
        return {
            g: [grads["model." + self.names[id(p)]] for p in plist]
            for g, plist in self.params.items()
        }
