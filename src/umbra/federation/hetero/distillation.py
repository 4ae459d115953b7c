"""FedDF ensemble distillation at the server: each architecture's averaged model learns
the ensemble's predictions on an unlabeled transfer set.

Lin, Kong, Stich & Jaggi, "Ensemble Distillation for Robust Model Fusion in Federated
Learning", NeurIPS 2020 (https://arxiv.org/abs/2006.07242): after averaging, the server
trains each prototype model (here: one per architecture) to match the averaged logits of
the round's local models on unlabeled data, minimising
``KL(softmax(z̄ / T) || softmax(z_student / T))`` with Adam. The teachers' knowledge
crosses architectures this way, which parameter averaging cannot do.

Transfer records hold every modality; each batch hides modalities at random (the same
mask for teachers and student, :func:`~umbra.models.modality_dropout`), so the student
learns the ensemble on every modality subset it will meet at test time. No labels are
read. The randomness here (batch order, masks) is training noise, not privacy-relevant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from umbra.federation.train import Batchable
from umbra.models import MultimodalNet, modality_dropout

__all__ = ["DistillSettings", "distil", "ensemble_logits", "kl_to_ensemble"]


@dataclass(frozen=True)
class DistillSettings:
    """Server-side distillation settings (see ``HeteroConfig``)."""

    steps: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    temperature: float = 1.0
    modality_dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@torch.no_grad()
def ensemble_logits(
    teachers: Sequence[MultimodalNet], inputs: dict[str, Tensor], mask: Tensor
) -> Tensor:
    """Mean of the teachers' logits, ``(B, C)`` (FedDF's ensemble; teachers in eval mode)."""
    if not teachers:
        raise ValueError("the ensemble needs at least one teacher")
    for t in teachers:
        t.eval()
    return torch.stack([t(inputs, mask) for t in teachers]).mean(dim=0)  # (K, B, C) -> (B, C)


def _kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Batch-mean ``KL(p_teacher || p_student)`` at temperature T, times T² (Hinton et al.)."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    log_q = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * temperature**2


@torch.no_grad()
def kl_to_ensemble(
    student: MultimodalNet,
    teachers: Sequence[MultimodalNet],
    transfer: Batchable,
    *,
    temperature: float = 1.0,
    batch_size: int = 1000,
) -> float:
    """Mean KL divergence of the student from the ensemble over the whole transfer set,
    every modality present (the objective :func:`distil` lowers)."""
    student.eval()
    n = len(transfer)
    total = 0.0
    for lo in range(0, n, batch_size):
        idx = torch.arange(lo, min(n, lo + batch_size))
        inputs, mask, _ = transfer.take(idx)
        kl = _kl(student(inputs, mask), ensemble_logits(teachers, inputs, mask), temperature)
        total += float(kl) * len(idx)
    return total / max(1, n)


def distil(
    student: MultimodalNet,
    teachers: Sequence[MultimodalNet],
    transfer: Batchable,
    settings: DistillSettings,
    *,
    seed: int,
) -> dict[str, float]:
    """Train ``student`` in place towards the teachers' ensemble on ``transfer`` (Adam).

    Returns the mean distillation loss of the first and the last tenth of the steps
    (``distil-first``, ``distil-last``) and the step count.
    """
    if len(transfer) == 0:
        raise ValueError("the transfer set is empty")
    if settings.steps == 0:
        return {"distil-steps": 0.0}
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(student.parameters(), lr=settings.lr)
    n = len(transfer)
    losses: list[float] = []
    perm, pos = torch.randperm(n, generator=gen), 0
    for _ in range(settings.steps):
        if pos >= n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + settings.batch_size]
        pos += settings.batch_size
        inputs, mask, _ = transfer.take(idx)
        mask = modality_dropout(mask, settings.modality_dropout, gen)
        target = ensemble_logits(teachers, inputs, mask)
        student.train()
        loss = _kl(student(inputs, mask), target, settings.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    tenth = max(1, len(losses) // 10)
    return {
        "distil-first": sum(losses[:tenth]) / tenth,
        "distil-last": sum(losses[-tenth:]) / tenth,
        "distil-steps": float(len(losses)),
    }
