"""Tests of umbra.models: masked fusion, modality dropout, groups, InfoNCE, per-sample grads."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from umbra.data.dataset import MultimodalData, modality_subsets
from umbra.models import (
    ModelSpec,
    MultimodalNet,
    build_encoder,
    info_nce,
    modality_dropout,
    multimodal_loss,
    num_parameters,
    parameter_groups,
    parameter_modality,
    register_encoder,
)
from umbra.models.encoders import conv_encoder

SHAPES = {"image": (1, 8, 8), "audio": (1, 8, 8), "text": (12,), "tabular": (5,)}


def tiny_spec(**kw: object) -> ModelSpec:
    args: dict[str, object] = {"hidden": 8, "embed_dim": 6, "dropout": 0.0, **kw}
    return ModelSpec(dict(SHAPES), num_classes=3, **args)  # type: ignore[arg-type]


def random_batch(
    spec: ModelSpec, n: int, gen: torch.Generator, mask: Tensor | None = None
) -> tuple[dict[str, Tensor], Tensor]:
    """Random features; cells absent from ``mask`` (default: random non-empty rows) are zeroed."""
    mods = spec.modalities
    if mask is None:
        subsets = modality_subsets(mods)
        pick = torch.randint(len(subsets), (n,), generator=gen)
        mask = torch.tensor([[m in subsets[int(k)] for m in mods] for k in pick])
    inputs = {}
    for j, m in enumerate(mods):
        x = torch.randn((n, *spec.input_shapes[m]), generator=gen)
        keep = mask[:, j].reshape((n,) + (1,) * len(spec.input_shapes[m]))
        inputs[m] = torch.where(keep, x, torch.zeros(()))
    return inputs, mask


# ---------------------------------------------------------------- spec and encoders


def test_spec_from_data_and_roundtrip() -> None:
    n = 4
    data = MultimodalData(
        features={"image": np.zeros((n, 1, 28, 28), np.float32), "text": np.zeros((n, 384))},
        mask=np.ones((n, 2), bool),
        labels=np.arange(n) % 2,
        modalities=("image", "text"),
        class_names=("a", "b"),
    )
    spec = ModelSpec.from_data(data, hidden=32)
    assert spec.input_shapes == {"image": (1, 28, 28), "text": (384,)}
    assert spec.modalities == ("image", "text")
    assert (spec.num_classes, spec.hidden, spec.embed_dim) == (2, 32, 64)
    assert ModelSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"hidden": 0}, "hidden"),
        ({"embed_dim": 0}, "embed_dim"),
        ({"dropout": 1.0}, "dropout"),
        ({"input_shapes": {}}, "input_shapes"),
        ({"input_shapes": {"video": (3, 8, 8)}}, "video"),
        ({"encoders": {"text": "spectrogram"}}, "text -> spectrogram"),
        ({"encoders": {"audio": "spectral-stats"}}, "lacks"),
    ],
)
def test_spec_rejects_bad_values(kwargs: dict[str, object], word: str) -> None:
    args: dict[str, object] = {"input_shapes": {"text": (4,)}, "num_classes": 3, **kwargs}
    with pytest.raises(ValueError, match=word):
        ModelSpec(**args)  # type: ignore[arg-type]


def test_registry_rejects_duplicates_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("image", conv_encoder)
    with pytest.raises(ValueError, match="unknown encoder 'video'"):
        build_encoder("video", (3, 8, 8), hidden=4)
    with pytest.raises(ValueError, match="input_shape"):
        build_encoder("text", (3, 8), hidden=4)


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (1, 32, 32), (3, 5, 7), (16, 16)])
def test_conv_encoder_any_size(shape: tuple[int, ...]) -> None:
    enc = build_encoder("image", shape, hidden=10)
    assert enc(torch.randn(2, *shape)).shape == (2, 10)


def test_spectral_stats_encoder_matches_numpy_and_ignores_time_shift() -> None:
    """Band means and (population) standard deviations over time, as numpy computes them;
    rolling the frames in time leaves the output unchanged; unbatched input = batched row;
    a spec choosing it round-trips and builds it for that modality only."""
    from umbra.models.encoders import SpectralStats

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, 7, generator=gen)  # (B, C, F, T)
    stats = SpectralStats(3)(x)
    a = x.numpy().reshape(3, 10, 7)
    ref = np.concatenate([a.mean(-1), np.sqrt(a.var(-1) + 1e-5)], axis=1)
    np.testing.assert_allclose(stats.numpy(), ref, rtol=1e-5, atol=1e-6)
    enc = build_encoder("spectral-stats", (2, 5, 7), hidden=4).eval()
    out = enc(x)
    assert out.shape == (3, 4)
    torch.testing.assert_close(enc(torch.roll(x, shifts=3, dims=-1)), out)
    torch.testing.assert_close(enc(x[1]), out[1])  # unbatched (one record under vmap)
    assert build_encoder("spectral-stats", (5, 7), hidden=4)(x[:, 0]).shape == (3, 4)
    with pytest.raises(ValueError, match="spectral-stats"):
        build_encoder("spectral-stats", (7,), hidden=4)
    spec = tiny_spec(encoders={"audio": "spectral-stats"})
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    model = MultimodalNet(spec)
    assert isinstance(model.encoders["audio"][0], SpectralStats)
    assert not any(isinstance(m, SpectralStats) for m in model.encoders["image"].modules())
    old = {k: v for k, v in spec.to_dict().items() if k != "encoders"}  # pre-encoders checkpoint
    assert ModelSpec.from_dict(old).encoders == {}


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def expected_parameters(spec: ModelSpec) -> int:
    """Trainable scalars of ``MultimodalNet(spec)``, from the documented layer shapes alone."""
    h, e = spec.hidden, spec.embed_dim
    total = 0
    for m, shape in spec.input_shapes.items():
        kind = spec.encoders.get(m, m)
        if kind in ("image", "audio"):  # conv3x3 1->16, GroupNorm, conv3x3 16->32, GroupNorm,
            c = shape[0] if len(shape) == 3 else 1  # pooled to 4x4, Linear(32*16, h)
            total += (9 * c * 16 + 16) + 2 * 16 + (9 * 16 * 32 + 32) + 2 * 32 + _linear(512, h)
        elif kind == "scattering":  # GroupNorm over C channels, Linear(C*H*W, h)
            total += 2 * shape[0] + _linear(int(np.prod(shape)), h)
        elif kind == "spectral-stats":  # mean and std per band: LayerNorm(2F), Linear(2F, h)
            bands = 2 * int(np.prod(shape[:-1]))
            total += 2 * bands + _linear(bands, h)
        elif kind == "text":  # LayerNorm(D), Linear(D, h), Linear(h, h)
            total += 2 * shape[0] + _linear(shape[0], h) + _linear(h, h)
        elif kind == "tabular":  # Linear(D, h), Linear(h, h)
            total += _linear(shape[0], h) + _linear(h, h)
        else:
            raise AssertionError(f"no reference count for encoder {kind!r}")
        total += _linear(h, e)  # projection into the shared space
    return total + _linear(e, e) + _linear(e, spec.num_classes)  # head


# The sizes README.md states: 237k (hidden 128, conv encoders), 148k (scattering image head,
# spectral-stats audio); exact values from the formula above, checked by hand.
PRESET_PARAMETERS = {"smoke": 237_258, "default": 148_108, "baseline": 148_108}


@pytest.mark.parametrize("preset", sorted(PRESET_PARAMETERS))
def test_preset_model_size(preset: str) -> None:
    from umbra.config import load_config
    from umbra.run.prepare import model_spec_for, prepare_data

    cfg = load_config(preset)
    spec = ModelSpec.from_dict(model_spec_for(cfg, prepare_data(cfg).train))  # as `umbra run` does
    model = MultimodalNet(spec)
    assert num_parameters(model) == expected_parameters(spec) == PRESET_PARAMETERS[preset]
    assert num_parameters(model) == sum(p.numel() for p in model.parameters())  # all trainable
    assert not any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in model.modules())


def test_expected_parameters_covers_every_encoder() -> None:
    for kw in ({}, {"encoders": {"image": "scattering", "audio": "spectral-stats"}}):
        spec = ModelSpec({**SHAPES, "image": (3, 9, 6)}, num_classes=4, hidden=5, embed_dim=3,
                         **kw)  # type: ignore[arg-type]  # fmt: skip
        assert num_parameters(MultimodalNet(spec)) == expected_parameters(spec)


# ---------------------------------------------------------------- masked fusion


def test_every_modality_subset_ignores_missing_features() -> None:
    spec = tiny_spec()
    torch.manual_seed(0)
    model = MultimodalNet(spec).eval()
    gen = torch.Generator().manual_seed(1)
    mods = spec.modalities
    n = 5
    for subset in modality_subsets(mods):
        mask = torch.tensor([[m in subset for m in mods]] * n)
        inputs, _ = random_batch(spec, n, gen, mask)
        with torch.no_grad():
            logits = model(inputs, mask)
            noisy = {
                m: x if m in subset else 100 * torch.randn(x.shape, generator=gen)
                for m, x in inputs.items()
            }
            logits_noisy = model(noisy, mask)
        assert logits.shape == (n, spec.num_classes)
        assert torch.isfinite(logits).all()
        if len(subset) < len(mods):
            assert torch.equal(logits, logits_noisy), subset
        # Reference: the fused embedding is the plain mean of the present modalities' projections.
        with torch.no_grad():
            parts = [model.projections[m](model.encoders[m](inputs[m])) for m in subset]
            ref = model.head(torch.stack(parts).mean(dim=0))
        torch.testing.assert_close(logits, ref)


def test_mixed_mask_batch_ignores_missing_features_even_nonfinite() -> None:
    spec = tiny_spec()
    torch.manual_seed(0)
    model = MultimodalNet(spec).eval()
    gen = torch.Generator().manual_seed(2)
    inputs, mask = random_batch(spec, 40, gen)
    with torch.no_grad():
        logits = model(inputs, mask)
        for fill in ("noise", "nan"):
            corrupted = {}
            for j, m in enumerate(spec.modalities):
                junk = (
                    torch.randn(inputs[m].shape, generator=gen)
                    if fill == "noise"
                    else torch.full_like(inputs[m], float("nan"))
                )
                keep = mask[:, j].reshape((-1,) + (1,) * (inputs[m].dim() - 1))
                corrupted[m] = torch.where(keep, inputs[m], junk)
            assert torch.equal(model(corrupted, mask), logits), fill
        # Each record alone gives the same logits as inside the batch (no cross-record coupling).
        for i in range(0, 40, 7):
            one = model({m: x[i : i + 1] for m, x in inputs.items()}, mask[i : i + 1])
            torch.testing.assert_close(one[0], logits[i])


def test_embed_zeroes_missing_rows() -> None:
    spec = tiny_spec()
    model = MultimodalNet(spec).eval()
    inputs, mask = random_batch(spec, 16, torch.Generator().manual_seed(3))
    logits, emb = model.forward_with_embeddings(inputs, mask)
    assert list(emb) == list(spec.modalities)
    for j, m in enumerate(spec.modalities):
        assert emb[m].shape == (16, spec.embed_dim)
        assert torch.all(emb[m][~mask[:, j]] == 0)
    torch.testing.assert_close(logits, model(inputs, mask))


def test_forward_rejects_bad_inputs() -> None:
    spec = tiny_spec()
    model = MultimodalNet(spec)
    inputs, mask = random_batch(spec, 4, torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="modalities"):
        model({k: v for k, v in inputs.items() if k != "text"}, mask)
    with pytest.raises(ValueError, match="bool"):
        model(inputs, mask.float())
    with pytest.raises(ValueError, match="image"):
        model({**inputs, "image": torch.zeros(4, 1, 9, 9)}, mask)


# ---------------------------------------------------------------- modality dropout


def expected_drop_rate(k: int, p: float) -> float:
    """Brute force over all 2**k drop patterns: fraction of k present cells that end up dropped."""
    total = 0.0
    for pattern in itertools.product([False, True], repeat=k):
        prob = float(np.prod([p if d else 1 - p for d in pattern]))
        drops = sum(pattern) - (1 if all(pattern) else 0)  # an emptied record gets one back
        total += prob * drops
    return total / k


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_modality_dropout_rate_and_invariants(p: float) -> None:
    gen = torch.Generator().manual_seed(5)
    n, m_count = 30_000, 4
    mask = torch.rand((n, m_count), generator=gen) < 0.6
    mask[: n // 10] = False  # some records hold nothing at all
    out = modality_dropout(mask, p, gen)
    assert out.dtype == torch.bool and out.shape == mask.shape
    assert not torch.any(out & ~mask)  # never adds a modality
    had = mask.any(dim=1)
    assert torch.all(out.any(dim=1) == had)  # never empties a non-empty record
    k = mask.sum(dim=1)
    for kk in range(1, m_count + 1):
        rows = k == kk
        cells = int(rows.sum()) * kk
        dropped = int((mask[rows] & ~out[rows]).sum())
        rate = expected_drop_rate(kk, p)
        std = np.sqrt(rate * (1 - rate) / cells) + 1e-12
        assert abs(dropped / cells - rate) < 5 * std + 1e-9, (kk, dropped / cells, rate)


def test_modality_dropout_restores_uniformly_and_validates() -> None:
    gen = torch.Generator().manual_seed(6)
    mask = torch.ones((20_000, 3), dtype=torch.bool)
    out = modality_dropout(mask, 1.0, gen)  # p=1: exactly one uniformly chosen survivor
    assert torch.all(out.sum(dim=1) == 1)
    freq = out.float().mean(dim=0).numpy()
    np.testing.assert_allclose(freq, [1 / 3] * 3, atol=5 * np.sqrt(2 / 9 / 20_000))
    assert torch.equal(modality_dropout(mask, 0.0), mask)
    a = modality_dropout(mask, 0.5, torch.Generator().manual_seed(7))
    b = modality_dropout(mask, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="p must be in"):
        modality_dropout(mask, 1.5)
    with pytest.raises(ValueError, match="bool"):
        modality_dropout(mask.float(), 0.5)


# ---------------------------------------------------------------- parameter groups


def test_parameter_modality_examples() -> None:
    assert parameter_modality("encoders.audio.0.weight") == "audio"
    assert parameter_modality("projections.text.weight") == "text"
    assert parameter_modality("head.0.weight") is None
    assert parameter_modality("_module.encoders.image.4.bias") == "image"


def test_parameter_groups_partition_all_parameters() -> None:
    spec = tiny_spec()
    model = MultimodalNet(spec)
    names = {n for n, _ in model.named_parameters()}
    groups = parameter_groups(model)
    assert list(groups) == [*spec.modalities, "shared"]
    flat = [n for g in groups.values() for n in g]
    assert len(flat) == len(set(flat)) and set(flat) == names  # disjoint, covering
    for mod, group in groups.items():
        expected = None if mod == "shared" else mod
        assert all(parameter_modality(n) == expected for n in group)
        assert group  # every group has parameters
    for m in spec.modalities:  # every encoder/projection parameter lands in its modality
        own = {f"encoders.{m}.{n}" for n, _ in model.encoders[m].named_parameters()}
        own |= {f"projections.{m}.{n}" for n, _ in model.projections[m].named_parameters()}
        assert set(groups[m]) == own
    assert set(groups["shared"]) == {f"head.{n}" for n, _ in model.head.named_parameters()}


# ---------------------------------------------------------------- losses


def numpy_info_nce(emb: dict[str, np.ndarray], mask: np.ndarray, t: float) -> float:
    """Independent reference written from the CLIP paper's pseudo-code, with explicit loops."""
    mods = list(emb)
    pair_losses = []
    for a in range(len(mods)):
        for b in range(a + 1, len(mods)):
            rows = [i for i in range(len(mask)) if mask[i, a] and mask[i, b]]
            if len(rows) < 2:
                continue
            za = emb[mods[a]][rows]
            zb = emb[mods[b]][rows]
            za = za / np.linalg.norm(za, axis=1, keepdims=True)
            zb = zb / np.linalg.norm(zb, axis=1, keepdims=True)
            s = za @ zb.T / t
            terms = []
            for i in range(len(rows)):
                row = -s[i, i] + np.log(np.sum(np.exp(s[i, :])))
                col = -s[i, i] + np.log(np.sum(np.exp(s[:, i])))
                terms.append((row + col) / 2)
            pair_losses.append(np.mean(terms))
    return float(np.mean(pair_losses)) if pair_losses else 0.0


def test_info_nce_matches_numpy_reference() -> None:
    rng = np.random.default_rng(8)
    emb_np = {m: rng.normal(size=(6, 4)) for m in ("image", "audio", "text")}
    mask_np = np.array(
        [
            [1, 1, 1],
            [1, 1, 0],
            [1, 0, 1],
            [1, 1, 1],
            [0, 1, 0],
            [1, 1, 0],
        ],
        dtype=bool,
    )  # image-audio: 4 rows, image-text: 3 rows, audio-text: 2 rows
    emb = {m: torch.tensor(v) for m, v in emb_np.items()}
    mask = torch.tensor(mask_np)
    for t in (0.1, 0.5):
        got = info_nce(emb, mask, t)
        assert got.item() == pytest.approx(numpy_info_nce(emb_np, mask_np, t), rel=1e-10)
        per = info_nce(emb, mask, t, reduction="none")
        assert per.shape == (6,)
        assert per.mean().item() == pytest.approx(got.item(), rel=1e-10)
        assert per[4].item() == 0.0  # record 4 holds a single modality
    # Only one record holds both of a pair -> that pair is skipped; none usable -> 0.
    single = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 0]], dtype=torch.bool)
    small = {m: v[:3] for m, v in emb.items()}
    assert info_nce(small, single).item() == 0.0
    assert torch.equal(
        info_nce(small, single, reduction="none"), torch.zeros(3, dtype=torch.float64)
    )


def test_info_nce_prefers_aligned_embeddings() -> None:
    gen = torch.Generator().manual_seed(9)
    z = torch.randn(8, 5, generator=gen)
    mask = torch.ones(8, 2, dtype=torch.bool)
    aligned = info_nce({"image": z, "text": z + 0.01 * torch.randn(8, 5, generator=gen)}, mask)
    shuffled = info_nce({"image": z, "text": z[torch.randperm(8, generator=gen)]}, mask)
    assert aligned < shuffled
    with pytest.raises(ValueError, match="temperature"):
        info_nce({"image": z, "text": z}, mask, 0.0)


def test_multimodal_loss_parts_and_dp_safe() -> None:
    gen = torch.Generator().manual_seed(10)
    logits = torch.randn(6, 3, generator=gen)
    labels = torch.randint(3, (6,), generator=gen)
    emb = {"image": torch.randn(6, 4, generator=gen), "text": torch.randn(6, 4, generator=gen)}
    mask = torch.ones(6, 2, dtype=torch.bool)
    total, parts = multimodal_loss(logits, labels, emb, mask, align_weight=0.5)
    ce = F.cross_entropy(logits, labels).item()
    align = info_nce(emb, mask).item()
    assert total.item() == pytest.approx(ce + 0.5 * align)
    assert parts == pytest.approx({"ce": ce, "align": align, "total": ce + 0.5 * align})
    per, _ = multimodal_loss(logits, labels, emb, mask, align_weight=0.5, reduction="none")
    assert per.shape == (6,) and per.mean().item() == pytest.approx(total.item())
    safe, safe_parts = multimodal_loss(
        logits, labels, emb, mask, align_weight=0.5, reduction="none", dp_safe=True
    )
    torch.testing.assert_close(safe, F.cross_entropy(logits, labels, reduction="none"))
    assert safe_parts["align"] == 0.0
    with pytest.raises(ValueError, match="align_weight"):
        multimodal_loss(logits, labels, emb, mask, align_weight=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        multimodal_loss(logits, labels, emb, mask, align_weight=0.0, reduction="sum")  # type: ignore[arg-type]


def test_training_steps_reduce_loss_on_separable_batch() -> None:
    torch.manual_seed(11)
    spec = tiny_spec(hidden=16, embed_dim=8)
    model = MultimodalNet(spec)
    gen = torch.Generator().manual_seed(12)
    n = 48
    labels = torch.arange(n) % spec.num_classes
    inputs, mask = random_batch(spec, n, gen)
    # Make each modality carry the label: add a class-specific offset to the present features.
    for j, m in enumerate(spec.modalities):
        shift = (labels.float() - 1.0).reshape((n,) + (1,) * len(spec.input_shapes[m])) * 2.0
        keep = mask[:, j].reshape((n,) + (1,) * len(spec.input_shapes[m]))
        inputs[m] = torch.where(keep, 0.3 * inputs[m] + shift, torch.zeros(()))
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        logits, emb = model.forward_with_embeddings(inputs, modality_dropout(mask, 0.2, gen))
        loss, _ = multimodal_loss(logits, labels, emb, mask, align_weight=0.1)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    with torch.no_grad():
        acc = (model(inputs, mask).argmax(1) == labels).float().mean().item()
    assert acc > 0.9


# ---------------------------------------------------------------- per-sample gradients


def reference_grads(
    model: nn.Module, inputs: dict[str, Tensor], mask: Tensor, labels: Tensor
) -> dict[str, Tensor]:
    """Per-sample gradients by a loop over batches of size 1: ``name -> (B, *shape)``."""
    out: dict[str, list[Tensor]] = {n: [] for n, _ in model.named_parameters()}
    for i in range(len(labels)):
        model.zero_grad()
        logits = model({m: x[i : i + 1] for m, x in inputs.items()}, mask[i : i + 1])
        F.cross_entropy(logits, labels[i : i + 1]).backward()
        for n, p in model.named_parameters():
            assert p.grad is not None
            out[n].append(p.grad.detach().clone())
    model.zero_grad()
    return {n: torch.stack(g) for n, g in out.items()}


@pytest.fixture(scope="module")
def per_sample_setup() -> tuple[MultimodalNet, dict[str, Tensor], Tensor, Tensor, dict]:
    torch.manual_seed(13)
    spec = tiny_spec()
    model = MultimodalNet(spec).double()
    gen = torch.Generator().manual_seed(14)
    inputs, mask = random_batch(spec, 7, gen)
    inputs = {m: x.double() for m, x in inputs.items()}
    labels = torch.randint(spec.num_classes, (7,), generator=gen)
    return model, inputs, mask, labels, reference_grads(model, inputs, mask, labels)


def test_vmap_per_sample_grads_match_loop(per_sample_setup: tuple) -> None:
    model, inputs, mask, labels, ref = per_sample_setup
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def loss_one(params: dict[str, Tensor], x: dict[str, Tensor], m: Tensor, y: Tensor) -> Tensor:
        batch = {k: v.unsqueeze(0) for k, v in x.items()}
        logits = functional_call(model, (params, buffers), (batch, m.unsqueeze(0)))
        return F.cross_entropy(logits, y.unsqueeze(0))

    grads = vmap(grad(loss_one), in_dims=(None, 0, 0, 0))(params, inputs, mask, labels)
    assert set(grads) == set(ref)
    for n in ref:
        torch.testing.assert_close(grads[n], ref[n], rtol=1e-8, atol=1e-10, msg=n)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
def test_opacus_grad_sample_module_matches_loop(per_sample_setup: tuple) -> None:
    model, inputs, mask, labels, ref = per_sample_setup
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    try:
        logits = gsm(inputs, mask)
        F.cross_entropy(logits, labels, reduction="sum").backward()
        for n, p in model.named_parameters():
            assert p.grad_sample is not None, n
            torch.testing.assert_close(p.grad_sample, ref[n], rtol=1e-8, atol=1e-10, msg=n)
        # Group names seen through the wrapper map to the same modalities.
        wrapped = parameter_groups(gsm)
        assert {k: len(v) for k, v in wrapped.items()} == {
            k: len(v) for k, v in parameter_groups(model).items()
        }
    finally:
        gsm._close()
        model.zero_grad(set_to_none=True)
