"""Per-group DP-SGD: exact clipping against a batch-size-1 loop, noise spread, Poisson batches."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from umbra.privacy.dpsgd import DPSGD, poisson_batches

MODS = ("image", "text")


class TinyMultimodal(nn.Module):
    """Encoders/projections per modality in ModuleDicts (the shared naming contract)."""

    def __init__(self, embedding: bool = False) -> None:
        super().__init__()
        text = (
            nn.Sequential(nn.Embedding(11, 8), nn.Flatten(), nn.Linear(24, 8))
            if embedding
            else nn.Sequential(nn.Linear(5, 8), nn.ReLU())
        )
        self.encoders = nn.ModuleDict(
            {
                "image": nn.Sequential(
                    nn.Conv2d(1, 4, 3),
                    nn.GroupNorm(2, 4),
                    nn.ReLU(),
                    nn.Flatten(),
                    nn.Linear(4 * 6 * 6, 8),
                ),
                "text": text,
            }
        )
        self.projections = nn.ModuleDict({m: nn.Linear(8, 6) for m in MODS})
        self.head = nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 3))

    def forward(self, x: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        z = torch.stack(
            [
                torch.where(mask[:, j : j + 1], self.projections[m](self.encoders[m](x[m])), 0.0)
                for j, m in enumerate(MODS)
            ],
            dim=1,
        )  # (B, M, D)
        return self.head(z.sum(dim=1))


def _groups(model: nn.Module) -> dict[str, list[str]]:
    names = [n for n, _ in model.named_parameters()]
    out = {m: [n for n in names if n.split(".")[1:2] == [m]] for m in MODS}
    out["shared"] = [n for n in names if n.startswith("head")]
    return out


def _batch(b: int, embedding: bool = False, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    text = (
        torch.randint(0, 11, (b, 3), generator=g) if embedding else torch.randn(b, 5, generator=g)
    )
    return {
        "x": {"image": torch.randn(b, 1, 8, 8, generator=g), "text": text},
        "mask": torch.rand(b, 2, generator=g) > 0.3,
        "y": torch.randint(0, 3, (b,), generator=g),
    }


def _loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return F.cross_entropy(model(batch["x"], batch["mask"]), batch["y"], reduction="none")


def _reference(model: nn.Module, groups, clip, batch, denom) -> dict[str, torch.Tensor]:
    """Clipped gradient sum from a plain loop over single records (no Opacus)."""
    params = dict(model.named_parameters())
    ref = {n: torch.zeros_like(p) for n, p in params.items()}
    b = batch["y"].shape[0]
    for i in range(b):
        model.zero_grad()
        one = {
            "x": {k: v[i : i + 1] for k, v in batch["x"].items()},
            "mask": batch["mask"][i : i + 1],
            "y": batch["y"][i : i + 1],
        }
        _loss(model, one).sum().backward()
        for g, names in groups.items():
            norm = torch.sqrt(sum((params[n].grad.double() ** 2).sum() for n in names))
            f = min(1.0, clip[g] / float(norm)) if norm > 0 else 1.0
            for n in names:
                ref[n] += f * params[n].grad
    return {n: r / denom for n, r in ref.items()}


@pytest.mark.parametrize(
    ("backend", "embedding"),
    [("functorch", False), ("functorch", True), ("opacus", False), ("opacus", True)],
)
def test_clipping_is_exact_against_single_record_loop(backend, embedding):
    torch.manual_seed(0)
    model = TinyMultimodal(embedding)
    twin = copy.deepcopy(model)
    groups = _groups(model)
    clip = {"image": 0.3, "text": 0.05, "shared": 0.2}  # small: most records get clipped
    dp = DPSGD(
        model,
        groups=groups,
        clip_norms=clip,
        noise_multipliers={"image": 1.0, "text": 1.0, "shared": 1.0},
        sample_rate=0.5,
        num_samples=20,
        generator=torch.Generator().manual_seed(1),
        backend=backend,
    )
    dp.noise_multipliers = dict.fromkeys(clip, 0.0)  # isolate the clipping
    batch = _batch(9, embedding)
    stats = dp.step(_loss, batch)
    assert stats.batch_size == 9 and 0 < stats.clipped_fraction["text"] <= 1
    ref = _reference(twin, groups, clip, batch, denom=0.5 * 20)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-7)
    # Clipping bounds every record, so ‖Σ_i ĝ_i,g‖ ≤ B·C_g (p.grad is that sum / qN).
    for g, names in groups.items():
        norm = torch.sqrt(sum((dict(model.named_parameters())[n].grad ** 2).sum() for n in names))
        assert float(norm) * 10 <= 9 * clip[g] + 1e-6
    dp.close()


def test_noise_std_on_empty_and_full_batches():
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {"encoders": nn.ModuleDict({"image": nn.Linear(40, 40)}), "head": nn.Linear(40, 30)}
    )

    def loss(m, batch):
        return (m["head"](m["encoders"]["image"](batch)) ** 2).mean(dim=1)

    groups = {
        "image": ["encoders.image.weight", "encoders.image.bias"],
        "shared": ["head.weight", "head.bias"],
    }
    clip = {"image": 0.5, "shared": 2.0}
    sigma = {"image": 1.5, "shared": 0.7}
    q, n = 0.1, 200
    gen = torch.Generator().manual_seed(3)
    dp = DPSGD(
        model,
        groups=groups,
        clip_norms=clip,
        noise_multipliers=sigma,
        sample_rate=q,
        num_samples=n,
        generator=gen,
    )
    params = dict(model.named_parameters())

    def noise_of(batch, clean):
        dp.step(loss, batch)
        return {
            g: torch.cat([(params[k].grad * q * n - clean.get(k, 0)).flatten() for k in names])
            for g, names in groups.items()
        }

    # Empty Poisson batch: the gradient is pure noise N(0, (σC)²) / (qN).
    empty = noise_of(torch.zeros(0, 40), {})
    # Full batch: subtract the noiseless clipped sum of the same batch.
    batch = torch.randn(16, 40, generator=torch.Generator().manual_seed(4))
    dp.noise_multipliers = dict.fromkeys(sigma, 0.0)
    dp.step(loss, batch)
    clean = {k: p.grad * q * n for k, p in params.items()}
    dp.noise_multipliers = dict(sigma)
    full = noise_of(batch, clean)
    for noise in (empty, full):
        for g in groups:
            x = noise[g].double()
            std = sigma[g] * clip[g]
            # ~1600 draws per group: sample std within 6 %, mean within 4 standard errors.
            assert x.numel() >= 1230
            assert float(x.std()) == pytest.approx(std, rel=0.06)
            assert abs(float(x.mean())) < 4 * std / x.numel() ** 0.5
    assert not torch.equal(empty["image"], full["image"])


def test_poisson_batches_seeded_and_variable():
    a = [
        b.tolist()
        for b in poisson_batches(
            50, sample_rate=0.1, steps=40, generator=torch.Generator().manual_seed(5)
        )
    ]
    b = [
        b.tolist()
        for b in poisson_batches(
            50, sample_rate=0.1, steps=40, generator=torch.Generator().manual_seed(5)
        )
    ]
    assert a == b and len(a) == 40
    sizes = [len(x) for x in a]
    assert len(set(sizes)) > 3  # variable size
    assert sum(sizes) / 40 == pytest.approx(5.0, abs=1.5)  # mean qN
    assert all(len(set(x)) == len(x) and all(0 <= i < 50 for i in x) for x in a)
    tiny = [
        len(x)
        for x in poisson_batches(
            5, sample_rate=0.01, steps=30, generator=torch.Generator().manual_seed(6)
        )
    ]
    assert 0 in tiny  # empty batches happen
    assert len(list(poisson_batches(10, sample_rate=0.25))) == 4  # default: one expected epoch


def test_validation():
    model = TinyMultimodal()
    groups = _groups(model)
    ok = {
        "clip_norms": dict.fromkeys(groups, 1.0),
        "noise_multipliers": dict.fromkeys(groups, 1.0),
        "sample_rate": 0.1,
        "num_samples": 10,
    }
    with pytest.raises(ValueError, match="no group"):
        DPSGD(model, groups={**groups, "shared": groups["shared"][:1]}, **ok)
    with pytest.raises(ValueError, match="unknown parameter"):
        DPSGD(model, groups={**groups, "shared": [*groups["shared"], "nope"]}, **ok)
    with pytest.raises(ValueError, match="clip_norms"):
        DPSGD(model, groups=groups, **{**ok, "clip_norms": {**ok["clip_norms"], "text": 0.0}})
    with pytest.raises(ValueError, match="noise_multipliers"):
        DPSGD(
            model,
            groups=groups,
            **{**ok, "noise_multipliers": {**ok["noise_multipliers"], "text": -1.0}},
        )
    with pytest.raises(ValueError, match="sample_rate"):
        DPSGD(model, groups=groups, **{**ok, "sample_rate": 0.0})
    with pytest.warns(UserWarning, match="not differentially private"):
        dp = DPSGD(
            model,
            groups=groups,
            **{**ok, "noise_multipliers": {**ok["noise_multipliers"], "text": 0.0}},
        )
    with pytest.raises(ValueError, match="per-record losses"):
        dp.step(lambda m, b: _loss(m, b).sum(), _batch(3))
    dp.close()


@pytest.mark.parametrize("backend", ["functorch", "opacus"])
def test_with_umbra_multimodal_net(backend):
    from umbra.models import ModelSpec, MultimodalNet, parameter_groups

    torch.manual_seed(0)
    spec = ModelSpec(
        input_shapes={"image": (1, 8, 8), "text": (6,)},
        num_classes=3,
        hidden=8,
        embed_dim=4,
        dropout=0.0,
    )
    model = MultimodalNet(spec)
    twin = copy.deepcopy(model)
    groups = parameter_groups(model)
    clip = {"image": 0.2, "text": 0.1, "shared": 0.3}
    dp = DPSGD(
        model,
        groups=groups,
        clip_norms=clip,
        noise_multipliers=dict.fromkeys(clip, 1.0),
        sample_rate=0.25,
        num_samples=24,
        generator=torch.Generator().manual_seed(0),
        backend=backend,
    )
    dp.noise_multipliers = dict.fromkeys(clip, 0.0)
    g = torch.Generator().manual_seed(1)
    batch = {
        "x": {"image": torch.rand(6, 1, 8, 8, generator=g), "text": torch.randn(6, 6, generator=g)},
        "mask": torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1], [0, 1], [1, 0]], dtype=torch.bool),
        "y": torch.randint(0, 3, (6,), generator=g),
    }
    dp.step(_loss, batch)
    assert dp.backend == backend
    ref = _reference(twin, groups, clip, batch, denom=0.25 * 24)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-7)
    dp.close()
