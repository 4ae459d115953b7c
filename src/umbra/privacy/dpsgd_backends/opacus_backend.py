"""``"opacus"``: per-record gradients from Opacus' ``GradSampleModule`` hooks."""

from __future__ import annotations

import warnings
from typing import Any

from opacus import GradSampleModule
from torch import Tensor, nn

from umbra.privacy.bookkeeping import PerSample
from umbra.privacy.dpsgd_backends.backend import PerSampleBackend, PerSampleLossFn, check_losses

__all__ = ["OpacusBackend"]


class OpacusBackend(PerSampleBackend):
    """Opacus' hooks (the model must be in ``train()`` mode, its convs NCHW); the hooks'
    state is cleared before and after every step so that steps do not accumulate."""

    name = "opacus"

    _gsm: GradSampleModule

    def attach(self) -> None:
        """Opacus' hooks; ``strict=True`` applies its layer rules itself."""
        self._gsm = GradSampleModule(
            self.model, batch_first=True, loss_reduction="sum", strict=True
        )

    def _check_layout(self) -> None:
        for name, module in self.model.named_modules():
            w = getattr(module, "weight", None)
            conv = isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d)
            if conv and isinstance(w, Tensor) and not w.is_contiguous():
                raise ValueError(
                    f"backend='opacus' needs contiguous (NCHW) conv layers, {name!r} is"
                    " channels-last: Opacus' conv grad sampler assumes NCHW strides."
                    " Use backend='bookkeeping' (any layout)"
                )

    def _reset(self) -> None:
        for module in self.model.modules():
            if hasattr(module, "activations"):
                setattr(module, "activations", [])  # noqa: B010 (Opacus stores it there)
            if hasattr(module, "max_batch_len"):
                del module.max_batch_len
        for plist in self.params.values():
            for p in plist:
                p.grad_sample = None  # type: ignore[attr-defined]
                p._forward_counter = 0  # type: ignore[attr-defined]
                if hasattr(p, "_current_grad_sample"):
                    del p._current_grad_sample

    def before_step(self) -> None:
        self._check_layout()
        self._reset()

    def after_step(self, batch_size: int) -> None:
        if batch_size > 0:
            self._reset()

    def per_sample(
        self, loss_fn: PerSampleLossFn, batch: Any, batch_size: int
    ) -> dict[str, list[PerSample | None]]:
        """Per-record gradients ``(B, *p.shape)`` per group, via Opacus' hooks."""
        self._gsm.enable_hooks()
        try:
            losses = loss_fn(self.model, batch)
            check_losses(losses, batch_size)
            with warnings.catch_warnings():
                # Layers fed integer inputs (embeddings): expected, Opacus handles them.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                losses.sum().backward()
        finally:
            self._gsm.disable_hooks()
        grads: dict[str, list[PerSample | None]] = {}
        for g, plist in self.params.items():
            gs = [getattr(p, "grad_sample", None) for p in plist]
            if any(not isinstance(t, Tensor) for t in gs):
                raise RuntimeError(f"Opacus gave no per-sample gradient for a parameter of {g!r}")
            grads[g] = [t for t in gs if isinstance(t, Tensor)]
        return grads

    def close(self) -> None:
        self._gsm.remove_hooks()
