"""Per-group DP-SGD: exact clipping against a batch-size-1 loop, noise spread, Poisson batches."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from umbra.privacy import dpsgd_backends
from umbra.privacy.dpsgd import DPSGD, poisson_batches
from umbra.privacy.dpsgd_backends import BACKENDS, PerSampleBackend, register_backend
from umbra.privacy.randomness import SecureRandom
from umbra.privacy.registry import Registry

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


def _record(batch, i: int):
    """Record i of a (nested) dict of tensors, as a batch of one."""
    if isinstance(batch, dict):
        return {k: _record(v, i) for k, v in batch.items()}
    return batch[i : i + 1]


def _reference_with_norms(model: nn.Module, groups, clip, batch, denom, loss=None):
    """Clipped gradient sum from a plain loop over single records (no Opacus, no hooks),
    and the per-group per-record gradient norms ``group -> (B,)``."""
    loss = loss or _loss
    params = dict(model.named_parameters())
    ref = {n: torch.zeros_like(p) for n, p in params.items()}
    b = batch["y"].shape[0]
    norms = {g: torch.zeros(b, dtype=torch.float64) for g in groups}
    for i in range(b):
        model.zero_grad()
        loss(model, _record(batch, i)).sum().backward()
        for g, names in groups.items():
            grads = [params[n].grad for n in names if params[n].grad is not None]
            norm = torch.sqrt(sum((t.double() ** 2).sum() for t in grads))
            norms[g][i] = norm
            f = min(1.0, clip[g] / float(norm)) if norm > 0 else 1.0
            for n in names:
                if params[n].grad is not None:
                    ref[n] += f * params[n].grad
    return {n: r / denom for n, r in ref.items()}, norms


def _clipping_only(model: nn.Module, groups, clip, *, sample_rate: float, num_samples: int,
                   **kw) -> DPSGD:  # fmt: skip
    """DPSGD built with σ = 1 for every group (σ = 0 warns), then noise off: clipping alone."""
    dp = DPSGD(model, groups=groups, clip_norms=clip,
               noise_multipliers=dict.fromkeys(clip, 1.0), sample_rate=sample_rate,
               num_samples=num_samples, **kw)  # fmt: skip
    dp.noise_multipliers = dict.fromkeys(clip, 0.0)
    return dp


def _reference(model: nn.Module, groups, clip, batch, denom) -> dict[str, torch.Tensor]:
    """Clipped gradient sum from a plain loop over single records (no Opacus)."""
    return _reference_with_norms(model, groups, clip, batch, denom)[0]


@pytest.mark.parametrize(
    ("backend", "embedding"),
    [(b, e) for b in ("bookkeeping", "functorch", "opacus") for e in (False, True)],
)
def test_clipping_is_exact_against_single_record_loop(backend, embedding):
    torch.manual_seed(0)
    model = TinyMultimodal(embedding)
    twin = copy.deepcopy(model)
    groups = _groups(model)
    clip = {"image": 0.3, "text": 0.05, "shared": 0.2}  # small: most records get clipped
    dp = _clipping_only(model, groups, clip, sample_rate=0.5, num_samples=20,
                        rng=SecureRandom.for_testing(1), backend=backend)  # fmt: skip
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
    dp = DPSGD(
        model,
        groups=groups,
        clip_norms=clip,
        noise_multipliers=sigma,
        sample_rate=q,
        num_samples=n,
        rng=SecureRandom.for_testing(3),
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


def test_poisson_batches_test_stream_and_variable():
    def draw(key: int) -> list[list[int]]:
        stream = SecureRandom.for_testing(key)
        return [b.tolist() for b in poisson_batches(50, sample_rate=0.1, steps=40, rng=stream)]

    a = draw(5)
    assert a == draw(5) and len(a) == 40  # a fixed test key reproduces the stream
    sizes = [len(x) for x in a]
    assert len(set(sizes)) > 3  # variable size
    assert sum(sizes) / 40 == pytest.approx(5.0, abs=1.5)  # mean qN
    assert all(len(set(x)) == len(x) and all(0 <= i < 50 for i in x) for x in a)
    tiny = [
        len(x)
        for x in poisson_batches(5, sample_rate=0.01, steps=30, rng=SecureRandom.for_testing(6))
    ]
    assert 0 in tiny  # empty batches happen
    assert len(list(poisson_batches(10, sample_rate=0.25))) == 4  # default: one expected epoch


def test_poisson_batches_are_secret_and_poisson():
    """Production calls take no seed: two calls draw different samples; the inclusion
    counts follow Binomial(steps, q) per record (mean and spread)."""
    n, q, steps = 400, 0.05, 200
    first = [b.tolist() for b in poisson_batches(n, sample_rate=q, steps=steps)]
    second = [b.tolist() for b in poisson_batches(n, sample_rate=q, steps=steps)]
    assert first != second
    counts = np.zeros(n)
    for b in first:
        counts[b] += 1
    assert counts.mean() == pytest.approx(steps * q, abs=4 * np.sqrt(steps * q * (1 - q) / n))
    assert counts.var() == pytest.approx(steps * q * (1 - q), rel=0.2)


def test_deferred_noise_leaves_the_clipped_sum_only():
    torch.manual_seed(0)
    model = TinyMultimodal(False)
    twin = copy.deepcopy(model)
    groups = _groups(model)
    clip = {"image": 0.3, "text": 0.05, "shared": 0.2}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not private" warning: the noise comes later
        dp = DPSGD(model, groups=groups, clip_norms=clip, noise_multipliers=dict.fromkeys(clip, 0.0),
                   sample_rate=0.5, num_samples=20, deferred_noise=True)  # fmt: skip
    batch = _batch(9, False)
    dp.step(_loss, batch)
    ref = _reference(twin, groups, clip, batch, denom=0.5 * 20)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[name], rtol=1e-5, atol=1e-7)
    dp.close()
    with pytest.raises(ValueError, match="deferred_noise"):
        DPSGD(model, groups=groups, clip_norms=clip, noise_multipliers=dict.fromkeys(clip, 1.0),
              sample_rate=0.5, num_samples=20, deferred_noise=True)  # fmt: skip


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


@pytest.mark.parametrize("variant", ["image+text", "+spectral-stats", "scattering+text"])
@pytest.mark.parametrize("backend", ["bookkeeping", "functorch", "opacus"])
def test_with_umbra_multimodal_net(backend, variant):
    from umbra.models import ModelSpec, MultimodalNet, parameter_groups

    torch.manual_seed(0)
    audio_stats = variant == "+spectral-stats"
    # the scattering head (GroupNorm + Linear) on (C, H, W) coefficients instead of the CNN
    image_shape = (9, 3, 3) if variant == "scattering+text" else (1, 8, 8)
    encoders = {"image": "scattering"} if variant == "scattering+text" else {}
    shapes: dict[str, tuple[int, ...]] = {"image": image_shape, "text": (6,)}
    if audio_stats:  # the small audio encoder: LayerNorm + Linear over time-pooled band stats
        shapes["audio"] = (1, 10, 6)
        encoders["audio"] = "spectral-stats"
    spec = ModelSpec(
        input_shapes=shapes,
        num_classes=3,
        hidden=8,
        embed_dim=4,
        dropout=0.0,
        encoders=encoders,
    )
    model = MultimodalNet(spec)
    twin = copy.deepcopy(model)
    groups = parameter_groups(model)
    clip = {"image": 0.2, "text": 0.1, "shared": 0.3}
    if audio_stats:
        clip["audio"] = 0.15
    dp = _clipping_only(model, groups, clip, sample_rate=0.25, num_samples=24,
                        rng=SecureRandom.for_testing(0), backend=backend)  # fmt: skip
    g = torch.Generator().manual_seed(1)
    x = {"image": torch.rand(6, *image_shape, generator=g), "text": torch.randn(6, 6, generator=g)}
    mask = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1], [0, 1], [1, 0]], dtype=torch.bool)
    if audio_stats:
        x["audio"] = torch.randn(6, 1, 10, 6, generator=g)
        mask = torch.cat([mask, torch.tensor([[1], [1], [0], [0], [1], [1]], dtype=torch.bool)], 1)
    batch = {"x": x, "mask": mask, "y": torch.randint(0, 3, (6,), generator=g)}
    dp.step(_loss, batch)
    assert dp.backend == backend
    ref = _reference(twin, groups, clip, batch, denom=0.25 * 24)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-7)
    dp.close()


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_bookkeeping_every_group_with_missing_modalities(layout):
    """The default backend on an Umbra net with three modalities (two conv encoders, the text
    encoder's LayerNorm + MLP): clipped sums and per-group norms match the batch-size-1 loop for
    every group, with records missing one or two modalities (and some after modality dropout),
    with the conv encoders in either memory layout (train_local_dp runs them channels-last)."""
    from contextlib import nullcontext

    from umbra.models import (
        ModelSpec,
        MultimodalNet,
        channels_last,
        modality_dropout,
        parameter_groups,
    )

    torch.manual_seed(0)
    spec = ModelSpec(
        input_shapes={"image": (1, 8, 8), "audio": (1, 10, 6), "text": (12,)},
        num_classes=4,
        hidden=8,
        embed_dim=5,
        dropout=0.0,
    )
    model = MultimodalNet(spec)
    twin = copy.deepcopy(model)
    groups = parameter_groups(model)
    assert set(groups) == {"image", "audio", "text", "shared"}
    clip = {"image": 0.3, "audio": 0.05, "text": 0.1, "shared": 0.2}
    dp = _clipping_only(model, groups, clip, sample_rate=0.5, num_samples=20)
    assert dp.backend == "bookkeeping"
    g = torch.Generator().manual_seed(2)
    b = 10
    mask = torch.tensor(
        [[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]]
        + [[1, 1, 1]] * 3,
        dtype=torch.bool,
    )
    mask = torch.cat([mask[:7], modality_dropout(mask[7:], 0.5, g)])
    batch = {
        "x": {
            "image": torch.rand(b, 1, 8, 8, generator=g),
            "audio": torch.randn(b, 1, 10, 6, generator=g),
            "text": torch.randn(b, 12, generator=g),
        },
        "mask": mask,
        "y": torch.randint(0, 4, (b,), generator=g),
    }
    with channels_last(model) if layout == "channels_last" else nullcontext():
        stats = dp.step(_loss, batch)
    ref, norms = _reference_with_norms(twin, groups, clip, batch, denom=0.5 * 20)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-7, msg=n)
    for grp, c in clip.items():
        assert stats.mean_norm[grp] == pytest.approx(float(norms[grp].mean()), rel=1e-5)
        assert stats.clipped_fraction[grp] == pytest.approx(float((norms[grp] > c).double().mean()))
        assert stats.clipped_fraction[grp] > 0
    # A record without a modality contributes nothing to that modality's group.
    assert float(norms["audio"][1]) == 0.0 and float(norms["image"][2]) == 0.0
    dp.close()
    assert all(not m._forward_hooks for m in model.modules())
    if layout == "channels_last":  # Opacus' own hooks would be silently wrong: refused
        opacus_dp = DPSGD(
            twin,
            groups=groups,
            clip_norms=clip,
            noise_multipliers=dict.fromkeys(clip, 1.0),
            sample_rate=0.5,
            num_samples=20,
            backend="opacus",
        )
        with channels_last(twin), pytest.raises(ValueError, match="channels-last"):
            opacus_dp.step(_loss, batch)
        opacus_dp.close()


class _Awkward(nn.Module):
    """Layers off the default model's paths: a Linear called twice, a Linear on (B, T, d),
    strided dilated convs (one input channel: im2col; two: records as groups), a grouped
    conv, channels-last activations."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=2, dilation=2, padding=1)
        self.mono = nn.Conv2d(1, 4, (3, 2), stride=(2, 1), dilation=(1, 2), padding=(1, 0))
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)
        self.seq = nn.Linear(3, 5)
        self.twice = nn.Linear(5, 5)
        self.head = nn.Linear(4 + 5, 3)

    def forward(self, x: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        img = x["image"].contiguous(memory_format=torch.channels_last)
        z = torch.relu(self.grouped(torch.relu(self.conv(img)))).mean(dim=(2, 3))  # (B, 4)
        z = z + torch.tanh(self.mono(img[:, :1])).mean(dim=(2, 3))
        s = torch.tanh(self.seq(x["seq"])).mean(dim=1)  # (B, 5)
        s = self.twice(torch.tanh(self.twice(s)))
        s = torch.where(mask[:, 1:2], s, 0.0)
        return self.head(torch.cat([z, s], dim=1))


def test_bookkeeping_shared_layers_sequences_strides_channels_last():
    torch.manual_seed(0)
    model = _Awkward()
    model.conv.weight.data = model.conv.weight.data.contiguous(memory_format=torch.channels_last)
    twin = copy.deepcopy(model)
    names = [n for n, _ in model.named_parameters()]
    groups = {
        "image": [n for n in names if n.startswith(("conv", "mono", "grouped"))],
        "seq": [n for n in names if n.startswith(("seq", "twice"))],
        "shared": [n for n in names if n.startswith("head")],
    }
    clip = {"image": 0.05, "seq": 0.1, "shared": 0.3}
    dp = _clipping_only(model, groups, clip, sample_rate=0.5, num_samples=14)
    g = torch.Generator().manual_seed(3)
    batch = {
        "x": {
            "image": torch.randn(7, 2, 9, 9, generator=g),
            "seq": torch.randn(7, 4, 3, generator=g),
        },
        "mask": torch.rand(7, 2, generator=g) > 0.3,
        "y": torch.randint(0, 3, (7,), generator=g),
    }
    stats = dp.step(_loss, batch)
    ref, norms = _reference_with_norms(twin, groups, clip, batch, denom=0.5 * 14)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-7, msg=n)
    for grp in clip:
        assert stats.mean_norm[grp] == pytest.approx(float(norms[grp].mean()), rel=1e-5)
    dp.close()


def test_bookkeeping_refuses_what_it_cannot_do_exactly():
    class Raw(nn.Module):  # a parameter used outside any layer with a per-record rule
        def __init__(self) -> None:
            super().__init__()
            self.encoders = nn.ModuleDict({"image": nn.Linear(4, 2)})
            self.scale = nn.Parameter(torch.ones(2))

        def forward(self, x):
            return self.encoders["image"](x) * self.scale

    raw = Raw()
    kw = {"sample_rate": 0.5, "num_samples": 8}
    groups = {"image": ["encoders.image.weight", "encoders.image.bias"], "shared": ["scale"]}
    ones = dict.fromkeys(groups, 1.0)
    with pytest.raises(ValueError, match="functorch"):
        DPSGD(raw, groups=groups, clip_norms=ones, noise_multipliers=ones, **kw)
    DPSGD(raw, groups=groups, clip_norms=ones, noise_multipliers=ones, backend="functorch", **kw)

    inplace = nn.Sequential(nn.Linear(4, 3), nn.ReLU(inplace=True), nn.Linear(3, 2))
    groups = {"shared": [n for n, _ in inplace.named_parameters()]}
    dp = DPSGD(
        inplace, groups=groups, clip_norms={"shared": 1.0}, noise_multipliers={"shared": 1.0}, **kw
    )
    with pytest.raises(RuntimeError, match="in place"):
        dp.step(lambda m, x: m(x).sum(dim=1), torch.randn(3, 4))
    dp.close()


def test_clipped_sum_mixed_terms_against_materialised_reference():
    """The pure clipping kernel: ghost (outer-product) terms, small terms concatenated, a large
    term on its own and an absent one give the same sums as clipping materialised gradients."""
    from umbra.privacy.bookkeeping import CONCAT_MAX, OuterProduct, clipped_sum

    g = torch.Generator().manual_seed(7)
    b = 5
    params = [torch.empty(3, 4), torch.empty(3), torch.empty(2, 2), torch.empty(CONCAT_MAX + 1)]
    params.append(torch.empty(6))
    a, go = torch.randn(b, 4, generator=g), torch.randn(b, 3, generator=g)
    terms = [
        OuterProduct(a, go),
        go,
        torch.randn(b, 2, 2, generator=g),
        torch.randn(b, CONCAT_MAX + 1, generator=g) * 0.01,
        None,
    ]
    dense = [go.unsqueeze(2) * a.unsqueeze(1), go, terms[2], terms[3], torch.zeros(b, 6)]
    per_record = torch.cat([t.reshape(b, -1) for t in dense], dim=1).double()
    norms = per_record.norm(dim=1)
    clip = float(norms.median())
    f = torch.clamp(clip / norms, max=1.0)
    flat, views, got_norms = clipped_sum(terms, params, clip)
    torch.testing.assert_close(got_norms, norms, rtol=1e-6, atol=0)
    for t, v in zip(dense, views, strict=True):
        torch.testing.assert_close(
            v.double(), torch.tensordot(f, t.double(), dims=1), rtol=1e-5, atol=1e-6
        )
    assert flat.numel() == sum(p.numel() for p in params)
    assert 0 < float((norms > clip).double().mean()) < 1


class _LoopBackend(PerSampleBackend):
    """Per-record gradients from a plain loop over batches of one (a registry test double)."""

    name = "loop"

    def per_sample(self, loss_fn, batch, batch_size):  # type: ignore[no-untyped-def]
        flat = [p for ps in self.params.values() for p in ps]
        rows = [
            torch.autograd.grad(loss_fn(self.model, _record(batch, i)).sum(), flat)
            for i in range(batch_size)
        ]
        per_param = {id(p): torch.stack([r[j] for r in rows]) for j, p in enumerate(flat)}
        return {g: [per_param[id(p)] for p in ps] for g, ps in self.params.items()}


def test_a_registered_backend_is_used_and_names_are_unique(monkeypatch) -> None:
    """DPSGD looks its backend up by name: a backend registered under a new name computes
    the step (clipped sums equal to the single-record reference); a taken name raises."""
    monkeypatch.setattr(dpsgd_backends.registry, "BACKENDS", BACKENDS.copy())
    assert register_backend(_LoopBackend) is _LoopBackend
    with pytest.raises(ValueError, match="already registered"):
        register_backend(_LoopBackend)
    with pytest.raises(ValueError, match="already registered"):
        register_backend(type("Other", (_LoopBackend,), {"name": "opacus"}))
    torch.manual_seed(0)
    model = TinyMultimodal()
    twin = copy.deepcopy(model)
    groups = _groups(model)
    clip = {"image": 0.3, "text": 0.05, "shared": 0.2}
    dp = _clipping_only(model, groups, clip, sample_rate=0.5, num_samples=20,
                        rng=SecureRandom.for_testing(1), backend="loop")  # fmt: skip
    batch = _batch(7)
    dp.step(_loss, batch)
    ref = _reference(twin, groups, clip, batch, denom=0.5 * 20)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-7)
    monkeypatch.setattr(dpsgd_backends.registry, "BACKENDS", Registry("backend"))
    with pytest.raises(ValueError, match="backend must be registered, got 'loop'"):
        DPSGD(model, groups=groups, clip_norms=clip, noise_multipliers=dict.fromkeys(clip, 1.0),
              sample_rate=0.5, num_samples=20, backend="loop")  # fmt: skip
