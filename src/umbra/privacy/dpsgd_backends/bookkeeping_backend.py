"""``"bookkeeping"``: book-keeping clipping (Bu et al. 2023, https://arxiv.org/abs/2210.00038),
one forward and one backward pass with forward hooks (:mod:`umbra.privacy.bookkeeping`)."""

from __future__ import annotations

from typing import Any

from umbra.privacy.bookkeeping import BookKeeper, PerSample
from umbra.privacy.dpsgd_backends.backend import PerSampleBackend, PerSampleLossFn, check_losses

__all__ = ["BookkeepingBackend"]


class BookkeepingBackend(PerSampleBackend):
    """Ghost norms for ``Linear``, materialised per-record gradients for the other layers;
    the summed parameter gradients are never computed. Exact in any memory layout."""

    name = "bookkeeping"

    _bk: BookKeeper

    def attach(self) -> None:
        super().attach()  # Opacus' layer rules
        self._bk = BookKeeper(self.model, [p for ps in self.params.values() for p in ps])

    def per_sample(
        self, loss_fn: PerSampleLossFn, batch: Any, batch_size: int
    ) -> dict[str, list[PerSample | None]]:
        """Per-record gradient terms per group from one forward and one backward pass."""
        with self._bk.record():
            losses = loss_fn(self.model, batch)
        check_losses(losses, batch_size)
        terms = self._bk.backward(losses.sum())
        return {g: [terms.get(id(p)) for p in plist] for g, plist in self.params.items()}

    def close(self) -> None:
        self._bk.close()
