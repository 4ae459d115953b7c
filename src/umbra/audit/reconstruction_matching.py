"""Input recovery by gradient matching (Geiping et al., "Inverting Gradients — How easy is
it to break privacy in federated learning?", NeurIPS 2020, https://arxiv.org/abs/2003.14053).

Dummy inputs are optimised with Adam until the gradient they produce points the way of
the observed one: the loss is ``1 − cos(∇(x̂), ∇_obs)`` over all parameters at once (the
cosine ignores the update's scale: ``−lr·∇`` works as well as ``∇``), plus a
total-variation prior on inputs laid out as ``(C, H, W)`` maps. Used where the closed form
of :mod:`~umbra.audit.reconstruction_analytic` does not separate the records (a batch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["GradFn", "gradient_cosine_loss", "match_gradients", "total_variation"]

#: ``inputs -> gradients`` of the attacked model's loss, built with ``create_graph=True``
#: so that the matching loss can be differentiated with respect to the inputs.
GradFn = Callable[[dict[str, Tensor]], Sequence[Tensor]]


def gradient_cosine_loss(grads: Sequence[Tensor], target: Sequence[Tensor]) -> Tensor:
    """``1 − cos`` between two gradients given as matching lists of tensors."""
    if len(grads) != len(target):
        raise ValueError(f"{len(grads)} gradients against {len(target)} targets")
    dot = sum(((g * t).sum() for g, t in zip(grads, target, strict=True)), torch.zeros(()))
    ng = sum(((g * g).sum() for g in grads), torch.zeros(()))
    nt = sum(((t * t).sum() for t in target), torch.zeros(()))
    return 1.0 - dot / (ng.sqrt() * nt.sqrt()).clamp_min(1e-12)


def total_variation(x: Tensor) -> Tensor:
    """Mean absolute difference of neighbours along the last two axes (anisotropic TV)."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (
        x[..., :, 1:] - x[..., :, :-1]
    ).abs().mean()


def match_gradients(
    grad_fn: GradFn,
    target: Sequence[Tensor],
    init: Mapping[str, Tensor],
    *,
    steps: int = 300,
    lr: float = 0.1,
    tv_weight: float = 0.0,
) -> dict[str, Tensor]:
    """Inputs whose gradient matches ``target`` in direction, from ``init`` (the batch's
    shape; Geiping et al. start from noise). ``tv_weight`` weighs the TV prior on every
    input with per-record rank ≥ 3 (``(B, C, H, W)``). Adam with the learning rate cut
    tenfold at 3/8, 5/8 and 7/8 of the steps, as in Geiping et al.'s schedule."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    target = [t.detach() for t in target]
    x = {k: v.detach().clone().requires_grad_(True) for k, v in init.items()}
    opt = torch.optim.Adam(list(x.values()), lr=lr)
    milestones = [int(steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = gradient_cosine_loss(grad_fn(x), target)
        if tv_weight > 0:
            for v in x.values():
                if v.dim() >= 4:
                    loss = loss + tv_weight * total_variation(v)
        loss.backward()
        opt.step()
        sched.step()
    return {k: v.detach() for k, v in x.items()}
