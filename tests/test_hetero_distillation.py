"""FedDF distillation: the student moves towards the ensemble of teachers of other
architectures on the unlabeled transfer set."""

from __future__ import annotations

import torch

from umbra.data.sources.synthetic import make_synthetic
from umbra.federation.hetero.distillation import (
    DistillSettings,
    distil,
    ensemble_logits,
    kl_to_ensemble,
)
from umbra.federation.train import Batchable
from umbra.models import ModelSpec, MultimodalNet

MODS = ("image", "text")


def _model(seed: int, hidden: int = 16) -> MultimodalNet:
    torch.manual_seed(seed)
    data = make_synthetic(n=4, modalities=MODS, seed=0)
    return MultimodalNet(ModelSpec.from_data(data, hidden=hidden, embed_dim=8, dropout=0.0))


def test_ensemble_is_the_mean_of_the_teachers_logits() -> None:
    data = Batchable.from_data(make_synthetic(n=12, modalities=MODS, seed=1))
    teachers = [_model(1), _model(2, hidden=32)]
    inputs, mask, _ = data.take(torch.arange(12))
    with torch.no_grad():
        want = (teachers[0](inputs, mask) + teachers[1](inputs, mask)) / 2
    torch.testing.assert_close(ensemble_logits(teachers, inputs, mask), want)


def test_distillation_reduces_kl_between_student_and_ensemble() -> None:
    transfer = Batchable.from_data(make_synthetic(n=256, modalities=MODS, seed=3))
    # teachers of two architectures, made confident so the ensemble is far from uniform
    teachers = [_model(10), _model(11, hidden=32)]
    for t in teachers:
        with torch.no_grad():
            t.head[-1].weight.mul_(20.0)
    student = _model(12, hidden=8)
    before = kl_to_ensemble(student, teachers, transfer)
    stats = distil(student, teachers, transfer,
                   DistillSettings(steps=80, batch_size=64, lr=1e-2), seed=0)  # fmt: skip
    after = kl_to_ensemble(student, teachers, transfer)
    assert before > 0.1
    assert after < 0.3 * before, (before, after)
    assert stats["distil-last"] < stats["distil-first"]
    assert stats["distil-steps"] == 80


def test_zero_steps_leave_the_student_unchanged() -> None:
    transfer = Batchable.from_data(make_synthetic(n=16, modalities=MODS, seed=3))
    student = _model(5)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    distil(student, [_model(6)], transfer, DistillSettings(steps=0), seed=0)
    for k, v in student.state_dict().items():
        torch.testing.assert_close(v, before[k])
