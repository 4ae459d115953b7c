"""Cross-modal alignment in training: what the InfoNCE term sees under modality dropout,
and alignment through a pivot modality (text) placing two modalities that are never
trained together in one space."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from umbra.data.dataset import MultimodalData
from umbra.data.sources.synthetic import make_synthetic
from umbra.federation.hetero.retrieval import cross_modal_recall
from umbra.federation.train import Batchable, TrainSettings, batch_loss, train_local
from umbra.models import ModelSpec, MultimodalNet, modality_dropout

SHAPES = {"image": (1, 8, 8), "audio": (1, 8, 8), "text": (12,)}


def reference_info_nce(emb: dict[str, np.ndarray], mask: np.ndarray, t: float) -> float:
    """CLIP's symmetric loss with explicit loops, averaged over the modality pairs that
    at least two records hold."""
    mods, losses = list(emb), []
    for a in range(len(mods)):
        for b in range(a + 1, len(mods)):
            rows = [i for i in range(len(mask)) if mask[i, a] and mask[i, b]]
            if len(rows) < 2:
                continue
            za = emb[mods[a]][rows] / np.linalg.norm(emb[mods[a]][rows], axis=1, keepdims=True)
            zb = emb[mods[b]][rows] / np.linalg.norm(emb[mods[b]][rows], axis=1, keepdims=True)
            s = za @ zb.T / t
            rows_ce = np.log(np.exp(s).sum(axis=1)) - np.diag(s)
            cols_ce = np.log(np.exp(s).sum(axis=0)) - np.diag(s)
            losses.append(float(np.mean((rows_ce + cols_ce) / 2)))
    return float(np.mean(losses)) if losses else 0.0


def test_alignment_pairs_the_modalities_that_modality_dropout_hid() -> None:
    torch.manual_seed(0)
    model = MultimodalNet(ModelSpec(dict(SHAPES), num_classes=3, hidden=8, embed_dim=6,
                                    dropout=0.0))  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    n = 10
    inputs = {m: torch.randn((n, *s), generator=gen) for m, s in SHAPES.items()}
    labels = torch.randint(3, (n,), generator=gen)
    held = torch.ones(n, 3, dtype=torch.bool)
    held[0, 2] = held[1, 0] = False
    shown = modality_dropout(held, 1.0, gen)  # exactly one modality per record: no pair
    settings = TrainSettings(align_weight=0.5, temperature=0.2)
    loss, parts = batch_loss(model, inputs, shown, labels, settings, held=held)
    with torch.no_grad():
        # the logits fuse only the modalities left after dropout ...
        ce = F.cross_entropy(model(inputs, shown), labels).item()
        # ... while the alignment pairs every modality each record holds
        emb = {m: e.double().numpy() for m, e in model.embed(inputs, held).items()}
    align = reference_info_nce(emb, held.numpy(), 0.2)
    assert align > 0
    assert parts["ce"] == pytest.approx(ce, rel=1e-5)
    assert parts["align"] == pytest.approx(align, rel=1e-5)
    assert loss.item() == pytest.approx(ce + 0.5 * align, rel=1e-5)
    # without ``held``, one mask for both: no record keeps a pair, no alignment
    _, alone = batch_loss(model, inputs, shown, labels, settings)
    assert alone["align"] == 0.0 and alone["ce"] == pytest.approx(ce, rel=1e-5)


def _paired(n: int, seed: int) -> MultimodalData:
    """Class prototype plus noise plus one 8-dimensional latent per record, mapped into
    each modality by a fixed random matrix (flat 32/32/12 features): a record's modalities
    share the latent, which classification does not need."""
    shapes = {"image": 32, "audio": 32, "text": 12}
    base = make_synthetic(n=n, num_classes=4, modalities=tuple(shapes), seed=seed, noise=0.5)
    z = np.random.default_rng([seed, 1]).standard_normal((n, 8))
    feats = {}
    for k, (m, width) in enumerate(shapes.items()):
        proto = np.random.default_rng([2, k]).standard_normal((4, width))
        mix = np.random.default_rng([3, k]).standard_normal((8, width)) / np.sqrt(8)
        noise = np.random.default_rng([seed, 4, k]).standard_normal((n, width))
        feats[m] = (proto[base.labels] + z @ mix + 0.5 * noise).astype(np.float32)
    return MultimodalData(feats, base.mask, base.labels, base.modalities, base.class_names)


def _recall_after_training(align_weight: float) -> float:
    train, test = _paired(2000, 0), _paired(500, 1)
    mask = train.mask.copy()
    mask[:1000, 1] = False  # image+text
    mask[1000:, 0] = False  # audio+text: nobody trains on an image with its recording
    spec = ModelSpec.from_data(train, hidden=32, embed_dim=16, dropout=0.0,
                               encoders={"image": "tabular", "audio": "tabular"})  # fmt: skip
    torch.manual_seed(0)
    model = MultimodalNet(spec)
    settings = TrainSettings(epochs=8, batch_size=128, lr=0.1, momentum=0.5,
                             modality_dropout=0.2, align_weight=align_weight)  # fmt: skip
    train_local(model, Batchable.from_data(train.with_mask(mask)), settings, seed=0)
    return cross_modal_recall(model, Batchable.from_data(test), "image", "audio")["recall@10"]


def test_alignment_through_text_places_image_and_audio_in_one_space() -> None:
    aligned, unaligned = _recall_after_training(1.0), _recall_after_training(0.0)
    # Without alignment only the class links an image to its recording (4 classes of
    # 125 test records: recall@10 at most 10/125 = 0.08 from the class alone).
    assert unaligned < 0.1
    assert aligned > 3 * unaligned
