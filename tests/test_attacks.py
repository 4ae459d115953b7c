"""Fault injection: each attack transforms data or update as defined, only for the named
organisations; the backdoor's trigger touches only its modality; the success rate counts
triggered non-target records classified as the target."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from umbra.config import load_config
from umbra.data.sources.synthetic import make_synthetic
from umbra.errors import ConfigError
from umbra.federation.attacks import (
    AttackSpec,
    Honest,
    apply_trigger,
    attack_policy,
    attacker_ids,
    backdoor_success_rate,
)
from umbra.federation.train import Batchable
from umbra.models import ModelSpec, MultimodalNet

MODS = ("image", "audio", "text")


def _xy() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    x = {"w": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=4)}
    y = {k: v + rng.normal(size=v.shape).astype(v.dtype) for k, v in x.items()}
    y["steps"] = np.array([7], dtype=np.int64)  # a non-float buffer passes unchanged
    return x, y


def test_sign_flip_sends_the_negated_delta() -> None:
    x, y = _xy()
    out = attack_policy(AttackSpec(kind="sign-flip", attackers=(1,)), 1).poison_update(x, y)
    for k in x:
        np.testing.assert_allclose(out[k] - x[k], -(y[k] - x[k]), rtol=1e-5, atol=1e-6)
        assert out[k].dtype == y[k].dtype
    np.testing.assert_array_equal(out["steps"], y["steps"])


def test_scale_multiplies_the_delta() -> None:
    x, y = _xy()
    out = attack_policy(AttackSpec(kind="scale", attackers=(0,), scale=4.0), 0).poison_update(x, y)
    for k in x:
        np.testing.assert_allclose(out[k] - x[k], 4.0 * (y[k] - x[k]), rtol=1e-5, atol=1e-5)


def test_only_named_organisations_attack() -> None:
    spec = AttackSpec(kind="sign-flip", attackers=(2,))
    assert isinstance(attack_policy(spec, 1), Honest)
    x, y = _xy()
    assert attack_policy(spec, 1).poison_update(x, y) is y


def _batchable(n: int = 40) -> Batchable:
    data = make_synthetic(n=n, num_classes=4, modalities=MODS, seed=1)
    return Batchable.from_data(data)


def test_label_flip_flips_every_label() -> None:
    data = _batchable()
    out = attack_policy(AttackSpec(kind="label-flip", attackers=(0,)), 0).poison_data(
        data, num_classes=4, seed=0
    )
    assert torch.equal(out.labels, 3 - data.labels)
    assert all(torch.equal(out.inputs[m], data.inputs[m]) for m in data.inputs)


def test_backdoor_triggers_only_the_chosen_modality() -> None:
    data = _batchable(60)
    spec = AttackSpec(kind="backdoor", attackers=(0,), target_class=2, trigger_modality="text",
                      trigger_size=2, trigger_value=9.0, poison_fraction=0.5)  # fmt: skip
    out = attack_policy(spec, 0).poison_data(data, num_classes=4, seed=3)
    col = list(data.inputs).index("text")
    holders = set(np.flatnonzero(data.mask[:, col].numpy()).tolist())
    changed = torch.any(out.inputs["text"] != data.inputs["text"], dim=1).numpy()
    poisoned = set(np.flatnonzero(changed).tolist())
    assert poisoned <= holders and len(poisoned) == round(0.5 * len(holders))
    # trigger: the last size² entries of the text vector set to the value
    idx = sorted(poisoned)
    assert torch.all(out.inputs["text"][idx, -4:] == 9.0)
    torch.testing.assert_close(out.inputs["text"][idx, :-4], data.inputs["text"][idx, :-4])
    assert torch.all(out.labels[idx] == 2)
    rest = [i for i in range(len(data)) if i not in poisoned]
    assert torch.equal(out.labels[rest], data.labels[rest])
    for m in ("image", "audio"):
        assert torch.equal(out.inputs[m], data.inputs[m])
    # the caller's data is untouched
    assert not torch.equal(out.inputs["text"], data.inputs["text"])


def test_image_trigger_is_a_corner_patch() -> None:
    x = np.zeros((2, 1, 6, 6), dtype=np.float32)
    out = apply_trigger(x, size=2, value=1.0)
    assert out[:, :, 4:, 4:].min() == 1.0 and out.sum() == 2 * 4
    assert x.sum() == 0


def test_backdoor_success_rate_counts_non_target_records_predicted_as_target() -> None:
    data = make_synthetic(n=50, num_classes=3, modalities=MODS, seed=2)
    spec_d = ModelSpec.from_data(data, hidden=8, embed_dim=8)
    model = MultimodalNet(spec_d)
    with torch.no_grad():  # a model that always predicts class 1: bias only
        for p in model.parameters():
            p.zero_()
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        head.bias[1] = 10.0
    spec = AttackSpec(kind="backdoor", attackers=(0,), target_class=1, trigger_modality="image")
    rate, n = backdoor_success_rate(model, data, spec)
    col = data.modalities.index("image")
    assert n == int(np.sum(data.mask[:, col] & (data.labels != 1)))
    assert rate == 1.0
    rate0, _ = backdoor_success_rate(model, data, AttackSpec(kind="backdoor", target_class=0))
    assert rate0 == 0.0


def test_attackers_by_fraction_are_drawn_from_the_seed() -> None:
    a = attacker_ids(clients=[], fraction=0.2, num_clients=10, seed=0)
    assert len(a) == 2 and a == attacker_ids(clients=[], fraction=0.2, num_clients=10, seed=0)
    assert attacker_ids(clients=[3, 1], fraction=0.0, num_clients=10, seed=0) == (1, 3)
    assert attacker_ids(clients=[], fraction=0.0, num_clients=10, seed=0) == ()


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["attack.kind=sign-flip"], "names no attacker"),
        (["attack.clients=[1]"], "attack.kind = 'none'"),
        (["attack.kind=scale", "attack.clients=[1]", "attack.fraction=0.2"], "not both"),
        (["attack.kind=scale", "attack.clients=[9]"], "attack.clients names client 9"),
        (["attack.kind=flood", "attack.clients=[1]"], "attack.kind"),
    ],
)
def test_bad_attack_config_is_one_line(sets: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_config("smoke", overrides=sets)
    assert "\n" not in str(err.value)
