"""Split training equals centralized training step for step; missing parties train with masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from umbra.data.sources.synthetic import make_synthetic
from umbra.federation.train import get_arrays
from umbra.models import ModelSpec, MultimodalNet
from umbra.vertical.bottom_model import BottomModel
from umbra.vertical.split_step import bottom_backward, make_optimizer, scatter_rows, top_step
from umbra.vertical.top_model import TopModel

PARTIES = (("image",), ("audio", "tabular"), ("text",))
OPT = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}


def _setup() -> tuple[MultimodalNet, list[BottomModel], TopModel, dict[str, torch.Tensor],
                      torch.Tensor, torch.Tensor]:  # fmt: skip
    data = make_synthetic(n=96, seed=1)
    spec = ModelSpec.from_data(data, hidden=16, embed_dim=8, dropout=0.0)
    torch.manual_seed(0)
    joint = MultimodalNet(spec).double()
    arrays = get_arrays(joint)
    bottoms = []
    for mods in PARTIES:
        b = BottomModel(spec, mods)
        b.load_from_joint(arrays)
        bottoms.append(b.double())
    top = TopModel(spec)
    top.load_from_joint(arrays)
    top.double()
    # who holds what: every entity at the label holder (text); some lack image or audio+tabular
    rng = np.random.default_rng(0)
    held = np.ones((len(data), 3), dtype=bool)
    held[rng.random(len(data)) < 0.3, 0] = False
    held[rng.random(len(data)) < 0.3, 1] = False
    mods = data.modalities
    mask = np.stack([held[:, next(p for p, ms in enumerate(PARTIES) if m in ms)]
                     for m in mods], axis=1)  # fmt: skip
    x = {m: torch.as_tensor(data.features[m], dtype=torch.float64) for m in mods}
    return joint, bottoms, top, x, torch.as_tensor(mask), torch.as_tensor(data.labels)


def test_split_step_equals_centralized_step() -> None:
    joint, bottoms, top, x, mask, y = _setup()
    mods = joint.modalities
    assert not mask.all() and mask.any(dim=1).all()  # some entities miss parties
    j_opt = torch.optim.SGD(joint.parameters(), **OPT)
    b_opts = [make_optimizer(b, **OPT) for b in bottoms]
    t_opt = make_optimizer(top, **OPT)
    order = np.random.default_rng(2).permutation(len(y))
    for step, batch in enumerate(np.array_split(order, 4)):
        # centralized: one network, the masked batch
        j_opt.zero_grad()
        inputs = {m: x[m][batch] for m in mods}
        loss_c = nn.functional.cross_entropy(joint(inputs, mask[batch]), y[batch])
        loss_c.backward()
        j_grads = {k: p.grad.clone() for k, p in joint.named_parameters()}
        j_opt.step()
        # split: each party embeds its rows of the batch; the label holder sums and steps
        parts, embs, rows_of = [], [], []
        for b, mods_p in zip(bottoms, PARTIES, strict=True):
            col = mods.index(mods_p[0])
            slots = np.flatnonzero(mask[batch][:, col].numpy())
            rows = batch[slots]
            e = b({m: x[m][rows] for m in mods_p})
            parts.append((slots, e.detach().numpy()))
            embs.append(e)
            rows_of.append(slots)
        count = mask[batch].sum(dim=1).numpy()  # modalities per entity
        total = scatter_rows(parts, len(batch), 8)
        loss_s, grad = top_step(top, t_opt, total, count, y[batch])
        for opt, e, slots in zip(b_opts, embs, rows_of, strict=True):
            bottom_backward(opt, e, grad[slots])
        assert loss_s == pytest.approx(float(loss_c), abs=1e-6)
        split_grads = {k: v.grad for b in bottoms for k, v in b.named_parameters()}
        split_grads |= {k: v.grad for k, v in top.named_parameters()}
        assert set(split_grads) == set(j_grads)
        for k, g in j_grads.items():
            assert torch.allclose(split_grads[k], g, atol=1e-6, rtol=0), (step, k)
    # and after four steps the parameters are the same
    split_state = {k: v for b in bottoms for k, v in b.state_dict().items()} | top.state_dict()
    for k, v in joint.state_dict().items():
        assert torch.allclose(split_state[k], v, atol=1e-6), k


def test_missing_party_rows_get_no_gradient_but_still_train() -> None:
    joint, bottoms, top, x, mask, y = _setup()
    mods = joint.modalities
    # a batch whose entities the image party does not hold: its bottom model gets nothing
    lacking = np.flatnonzero(~mask[:, mods.index("image")].numpy())[:8]
    parts = []
    for b, mods_p in zip(bottoms[1:], PARTIES[1:], strict=True):
        col = mods.index(mods_p[0])
        slots = np.flatnonzero(mask[lacking][:, col].numpy())
        e = b({m: x[m][lacking[slots]] for m in mods_p})
        parts.append((slots, e.detach().numpy()))
    count = mask[lacking].sum(dim=1).numpy()
    total = scatter_rows(parts, len(lacking), 8)
    loss, grad = top_step(top, None, total, count, y[lacking])
    assert np.isfinite(loss)
    # the label holder's head and the other parties learn from these entities
    assert np.abs(grad).sum() > 0
    logits = top(torch.as_tensor(total), torch.as_tensor(count))
    ref = joint({m: x[m][lacking] for m in mods}, mask[lacking])
    assert torch.allclose(logits, ref, atol=1e-6)  # the masked mean without the image party
