"""Which of a model's arrays travel between the server and the organisations.

Every entry of ``model.state_dict()`` travels except frozen parameters
(``requires_grad = False``): those are the same on every party by construction (e.g. the
pretrained MiniLM under LoRA, loaded from the bundled package, see
:mod:`umbra.models.text_lora`), are never trained, and would only add bytes (22.7M floats
for MiniLM) to every message, secure sum and checkpoint. Buffers, where a model has any,
still travel. For a model without frozen parameters this is the whole state, as before.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

__all__ = ["frozen_names", "load_travelling_state", "travelling_state"]


def frozen_names(model: nn.Module) -> frozenset[str]:
    """State names of ``model``'s frozen parameters: kept locally, never sent."""
    return frozenset(n for n, p in model.named_parameters() if not p.requires_grad)


def travelling_state(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` without its frozen parameters, in state order."""
    frozen = frozen_names(model)
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def load_travelling_state(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load exactly the travelling entries into ``model``; its frozen parameters stay.

    Raises:
        ValueError: ``state`` lacks a travelling entry or holds one that does not travel
            (a frozen weight sent along is refused too: it would silently replace the
            pretrained weights every party must share).
    """
    expected = set(travelling_state(model))
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise ValueError(
            f"model arrays do not match: missing {missing[:3]}{'...' if len(missing) > 3 else ''}"
            f", unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}"
        )
    model.load_state_dict(dict(state), strict=False)
