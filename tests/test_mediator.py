"""Cross-modal retrieval, the measure of text as the mediator: recall@k against a
brute-force ranking, and on a model whose image and audio halves are one network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from umbra.data.dataset import MultimodalData
from umbra.federation.hetero.retrieval import (
    class_level_recall,
    cross_modal_recall,
    recall_at_k,
)
from umbra.federation.train import Batchable
from umbra.models import ModelSpec, MultimodalNet


def _brute_recall(q: np.ndarray, g: np.ndarray, k: int) -> float:
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    hits = 0
    for i in range(len(q)):
        scores = gn @ qn[i]
        # rank of the match: rows strictly more similar, plus ties other than itself
        better = sum(1 for j in range(len(g)) if j != i and scores[j] >= scores[i])
        hits += better < k
    return hits / len(q)


def test_recall_matches_a_brute_force_ranking() -> None:
    rng = np.random.default_rng(0)
    q = rng.standard_normal((60, 5))
    g = q + rng.standard_normal((60, 5)) * 1.2  # noisy matches: recall strictly between 0 and 1
    got = recall_at_k(torch.from_numpy(q), torch.from_numpy(g), (1, 5, 10))
    for k in (1, 5, 10):
        assert got[k] == pytest.approx(_brute_recall(q, g, k))
    assert 0.0 < got[1] < got[10] < 1.0


def test_identical_embeddings_retrieve_their_match_and_random_ones_chance() -> None:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((200, 16)))
    assert recall_at_k(x, x, (1,))[1] == 1.0
    # independent embeddings: recall@k is k / n in expectation (binomial spread, 2000 queries)
    a = torch.from_numpy(rng.standard_normal((2000, 16)))
    b = torch.from_numpy(rng.standard_normal((2000, 16)))
    r = recall_at_k(a, b, (20,))[20]
    assert abs(r - 0.01) < 4 * np.sqrt(0.01 * 0.99 / 2000)


def test_class_level_recall_is_what_a_class_only_embedding_scores() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    # per query min(k, n_c) / n_c: k=1 -> 1/2, 1/2, 1/3, 1/3, 1/3, 1; k=2 -> 1, 1, 2/3 x3, 1
    got = class_level_recall(labels, (1, 2))
    assert got[1] == pytest.approx(3 / 6)
    assert got[2] == pytest.approx(5 / 6)
    # an embedding that is the class plus tiny noise scores it, up to sampling spread
    rng = np.random.default_rng(3)
    y = rng.integers(0, 10, 2000)
    onehot = np.eye(10)[y]
    q = torch.from_numpy(onehot + 1e-3 * rng.standard_normal(onehot.shape))
    g = torch.from_numpy(onehot + 1e-3 * rng.standard_normal(onehot.shape))
    expected = class_level_recall(torch.from_numpy(y), (20,))[20]
    assert expected == pytest.approx(20 / 200, rel=0.15)  # about 200 records per class
    assert recall_at_k(q, g, (20,))[20] == pytest.approx(
        expected, abs=4 * np.sqrt(0.1 * 0.9 / 2000)
    )


def test_a_diverged_model_retrieves_nothing() -> None:
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(4))
    x[3] = float("nan")
    got = recall_at_k(x, x, (1, 10))
    # the NaN gallery row ranks above every match (rank 1: a miss at k = 1, a hit at 10);
    # the NaN query ranks its match last
    assert got == {1: 0.0, 10: pytest.approx(19 / 20)}
    nan = torch.full((20, 4), float("nan"))
    assert recall_at_k(nan, nan, (1, 10)) == {1: 0.0, 10: 0.0}


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        recall_at_k(torch.zeros(3, 2), torch.zeros(4, 2), (1,))
    with pytest.raises(ValueError, match="k must be >= 1"):
        recall_at_k(torch.zeros(3, 2), torch.zeros(3, 2), (0,))


def test_a_model_with_one_network_for_both_modalities_is_perfectly_aligned() -> None:
    torch.manual_seed(0)
    shapes = {"image": (1, 8, 8), "audio": (1, 8, 8), "text": (4,)}
    model = MultimodalNet(ModelSpec(input_shapes=shapes, num_classes=3, hidden=16, embed_dim=8,
                                    dropout=0.0))  # fmt: skip
    model.encoders["audio"].load_state_dict(model.encoders["image"].state_dict())
    model.projections["audio"].load_state_dict(model.projections["image"].state_dict())
    rng = np.random.default_rng(2)
    img = rng.standard_normal((50, 1, 8, 8)).astype(np.float32)
    mask = np.ones((50, 3), dtype=bool)
    mask[:5, 1] = False  # records without audio are left out of the queries
    data = MultimodalData({"image": img, "audio": img.copy(),
                           "text": np.zeros((50, 4), np.float32)},
                          mask, np.zeros(50, np.int64), ("image", "audio", "text"),
                          ("a", "b", "c"))  # fmt: skip
    got = cross_modal_recall(model, Batchable.from_data(data.with_mask(mask)), "image", "audio")
    assert got["queries"] == 45
    assert got["recall@1"] == 1.0 and got["image->audio@10"] == 1.0
