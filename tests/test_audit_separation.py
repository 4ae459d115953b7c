"""Separating a batch's records from a GroupNorm-fed linear layer's gradient, and the
one-to-one pairing every reconstruction view is scored with."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from umbra.audit.reconstruction_analytic import distinct_candidates, linear_inputs
from umbra.audit.reconstruction_audit import _pair, steady_groups
from umbra.audit.reconstruction_separation import separate_records, update_rank

B, C, H, GROUPS = 4, 81, 7, 27


def _layer(
    seed: int, scale: torch.Tensor | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, nn.GroupNorm]:
    """Gradient of GroupNorm -> Linear -> ReLU -> Linear on B records, and the records'
    first-layer inputs ``(B, C·H·H)``."""
    torch.manual_seed(seed)
    norm, lin, head = nn.GroupNorm(GROUPS, C), nn.Linear(C * H * H, 32), nn.Linear(32, 10)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
    x = torch.randn(B, C, H, H) * torch.rand(1, C, 1, 1) + torch.rand(1, C, 1, 1)
    if scale is not None:
        x = x * scale
    y = torch.randint(0, 10, (B,))
    loss = nn.functional.cross_entropy(head(torch.relu(lin(norm(x).flatten(1)))), y)
    gw, gb = torch.autograd.grad(loss, [lin.weight, lin.bias])
    truth = norm(x).flatten(1).detach().double().numpy()
    return gw.double().numpy(), gb.double().numpy(), truth, norm


def _separate(
    w: np.ndarray, b: np.ndarray, norm: nn.GroupNorm, groups: np.ndarray, **kw: float
) -> np.ndarray | None:
    """``separate_records`` with the GroupNorm's per-channel values expanded to inputs."""
    per = H * H
    return separate_records(
        w,
        b,
        gamma=np.repeat(norm.weight.detach().double().numpy(), per),
        beta=np.repeat(norm.bias.detach().double().numpy(), per),
        groups=np.repeat(groups, per),
        starts=distinct_candidates(linear_inputs(w, b)),
        **kw,
    )


def _best_cosines(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    f = found / np.linalg.norm(found, axis=1, keepdims=True)
    t = truth / np.linalg.norm(truth, axis=1, keepdims=True)
    return (t @ f.T).max(axis=1)


def test_normalisation_separates_records_the_rows_mix() -> None:
    w, b, truth, norm = _layer(0)
    assert update_rank(w, b) == B
    cands = distinct_candidates(linear_inputs(w, b))
    # the closed form alone leaves some record only as a mixture of rows
    assert _best_cosines(cands, truth).min() < 0.999
    found = _separate(w, b, norm, np.arange(C) // 3, mean_square=1 / (1 + norm.eps))
    assert found is not None and len(found) == B
    assert _best_cosines(found, truth).min() > 1 - 1e-8
    # and each record by a different solution
    f = found / np.linalg.norm(found, axis=1, keepdims=True)
    t = truth / np.linalg.norm(truth, axis=1, keepdims=True)
    assert sorted((t @ f.T).argmax(axis=1).tolist()) == list(range(B))


def test_faint_groups_are_left_out_by_the_public_statistics() -> None:
    # channels 60-80 (groups 20-26) are faint: variance near the GroupNorm's eps
    scale = torch.ones(1, C, 1, 1)
    scale[:, 60:] = 3e-3
    w, b, truth, norm = _layer(0, scale)
    public = (torch.randn(50, C, H, H) * scale).numpy()
    steady = steady_groups(public, norm)
    assert (steady[:60] == np.arange(60) // 3).all() and (steady[60:] == -1).all()
    found = _separate(w, b, norm, steady, fit_tol=0.02)
    assert found is not None and _best_cosines(found, truth).min() > 1 - 1e-4
    # with the faint groups' mean square taken for 1, no point of the hull fits
    everything = _separate(w, b, norm, np.arange(C) // 3, fit_tol=0.02)
    assert everything is None


def test_more_records_than_groups_is_not_separated() -> None:
    w, b, _, norm = _layer(0)
    only_two = np.where(np.arange(C) // 3 < 2, np.arange(C) // 3, -1)  # 2 groups < rank 4
    assert _separate(w, b, norm, only_two) is None


def test_pairing_is_one_to_one_and_maximises_the_summed_cosine() -> None:
    pool = np.eye(3)
    # reconstruction 0 is closest to every record; a best match per record would use it
    # three times, the pairing uses it once and gives record 2 nothing
    recon = np.array([[1.0, 0.9, 0.9], [0.0, 1.0, 0.1]])
    paired = _pair(recon, pool)
    assert np.array_equal(paired[0], recon[0]) and np.array_equal(paired[1], recon[1])
    assert not paired[2].any()
    # by hand: cos(r0, e0) + cos(r1, e1) = 0.618 + 0.995 beats the runner-up
    # cos(r0, e2) + cos(r1, e1) = 0.556 + 0.995
