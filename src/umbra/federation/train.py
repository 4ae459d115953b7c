"""Local training and evaluation of a :class:`~umbra.models.MultimodalNet` (no Flower here).

Used identically by the Flower ClientApp, the server's central evaluation and the
centralized baseline, so that federated and centralized runs differ only in federation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import Tensor, nn

from umbra.data.dataset import MultimodalData, modality_subsets
from umbra.models import MultimodalNet, channels_last, modality_dropout, multimodal_loss
from umbra.models.travel import load_travelling_state, travelling_state

__all__ = [
    "Batchable",
    "TrainSettings",
    "batch_loss",
    "evaluate",
    "get_arrays",
    "scaffold_control_update",
    "set_arrays",
    "train_local",
]


@dataclass(frozen=True)
class TrainSettings:
    """Client-side optimisation settings for one round (see FederationConfig)."""

    epochs: float = 1.0
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    modality_dropout: float = 0.2
    align_weight: float = 0.1
    temperature: float = 0.1

    def steps(self, n: int) -> int:
        """Optimizer steps for ``n`` records: ceil(epochs * n / batch_size), at least 1."""
        return max(1, math.ceil(self.epochs * n / self.batch_size))


@dataclass(frozen=True)
class Batchable:
    """A :class:`MultimodalData` as torch tensors; :meth:`take` gathers float32 batches.

    float16 features (scattering coefficients) stay float16 here, half the memory of a
    client's cached records; batches are widened to float32 (exactly) when taken.
    """

    inputs: dict[str, Tensor]
    mask: Tensor  # (N, M) bool
    labels: Tensor  # (N,) int64

    @classmethod
    def from_data(cls, data: MultimodalData) -> Batchable:
        inputs = {m: torch.from_numpy(_tensor_ready(data.features[m])) for m in data.modalities}
        return cls(
            inputs,
            torch.from_numpy(np.ascontiguousarray(data.mask, dtype=bool)),
            torch.from_numpy(np.ascontiguousarray(data.labels, dtype=np.int64)),
        )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, idx: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        return (
            {m: x[idx].float() for m, x in self.inputs.items()},
            self.mask[idx],
            self.labels[idx],
        )


def _tensor_ready(features: np.ndarray) -> np.ndarray:
    """float16 kept, anything else float32; contiguous and writable (torch shares it)."""
    dtype = np.float16 if features.dtype == np.float16 else np.float32
    out = np.ascontiguousarray(features, dtype=dtype)
    return out if out.flags.writeable else out.copy()


def get_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's travelling state as name -> float32 numpy arrays (copies): everything
    but frozen parameters (:func:`~umbra.models.travel.travelling_state`)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in travelling_state(model).items()}


def set_arrays(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Load name -> array into ``model`` (strict on the travelling state: names and shapes
    must match; frozen parameters keep their values)."""
    state = {k: torch.from_numpy(np.asarray(v).copy()) for k, v in arrays.items()}
    load_travelling_state(model, state)


@dataclass
class _LocalRun:
    """What one round of local training keeps beside the model, private or not: the SGD
    optimiser, FedProx's anchor and SCAFFOLD's gradient correction, and the generator of
    the non-private choices (batch order, modality dropout)."""

    opt: torch.optim.SGD
    params: dict[str, nn.Parameter]
    #: FedProx: the round's starting weights (empty when μ = 0)
    start: dict[str, Tensor]
    #: SCAFFOLD: c - c_i per parameter (empty without SCAFFOLD)
    correction: dict[str, Tensor]
    gen: torch.Generator

    @classmethod
    def start_for(
        cls,
        model: nn.Module,
        settings: TrainSettings,
        *,
        seed: int,
        scaffold: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]] | None,
    ) -> _LocalRun:
        """Seed the non-private generators from ``seed``, put ``model`` in train mode."""
        torch.manual_seed(seed)  # dropout layers draw from the global generator
        gen = torch.Generator().manual_seed(seed)
        model.train()
        opt = torch.optim.SGD(
            model.parameters(),
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
        )
        params = dict(model.named_parameters())
        start = (
            {k: p.detach().clone() for k, p in params.items()} if settings.proximal_mu > 0 else {}
        )
        correction: dict[str, Tensor] = {}
        if scaffold is not None:
            c, c_i = scaffold
            correction = {k: torch.from_numpy(np.asarray(c[k] - c_i[k])) for k in params}
        return cls(opt, params, start, correction, gen)

    def proximal_term(self) -> Tensor:
        """``||w - w_start||²`` (FedProx's penalty is ``μ/2`` of it)."""
        zero = torch.zeros(())  # the sum's start: 0 + a == a, as with the builtin's int 0
        return sum((((p - self.start[k]) ** 2).sum() for k, p in self.params.items()), zero)

    def add_proximal_grad(self, mu: float) -> None:
        """Add the penalty's gradient ``μ (w - w_start)`` to every gradient (no-op: μ = 0)."""
        if self.start:
            for k, p in self.params.items():
                if p.grad is not None:
                    p.grad.add_(mu * (p.detach() - self.start[k]))

    def add_correction(self) -> None:
        """Add SCAFFOLD's ``c - c_i`` to every gradient (no-op without SCAFFOLD)."""
        if self.correction:
            for k, p in self.params.items():
                if p.grad is not None:
                    p.grad.add_(self.correction[k])


def batch_loss(
    model: MultimodalNet,
    inputs: dict[str, Tensor],
    mask: Tensor,
    labels: Tensor,
    settings: TrainSettings,
    *,
    held: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The training objective of one batch (classification + alignment, as ``settings``
    weighs them) and its parts.

    ``held``: the batch's ``(B, M)`` mask before modality dropout (``mask`` is the one
    after it), or None when there was none. The fused logits see only ``mask``'s
    modalities; the alignment pairs every modality a record holds. Modality dropout
    teaches the head to classify from any subset; hiding pairs from the alignment as well
    would only take away its positives and negatives (at p = 0.2, a third of each
    modality pair's records: 1 - 0.8²).
    """
    held = mask if held is None else held
    emb = model.embed(inputs, held)
    logits = model.fuse(emb, mask)
    return multimodal_loss(
        logits,
        labels,
        emb,
        held,
        align_weight=settings.align_weight,
        temperature=settings.temperature,
    )


def train_local(
    model: MultimodalNet,
    data: Batchable,
    settings: TrainSettings,
    *,
    seed: int,
    scaffold: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]] | None = None,
) -> dict[str, float]:
    """Train ``model`` in place on ``data`` with SGD; returns mean loss parts and step count.

    ``proximal_mu > 0`` adds FedProx's ``μ/2 ||w - w_start||²``. ``scaffold = (c, c_i)``
    corrects every gradient by ``c - c_i`` (SCAFFOLD). Deterministic for a given seed.
    """
    n = len(data)
    if n == 0:
        raise ValueError("cannot train on an empty data set")
    with channels_last(model):
        return _train_local(model, data, settings, seed=seed, scaffold=scaffold)


def _train_local(
    model: MultimodalNet,
    data: Batchable,
    settings: TrainSettings,
    *,
    seed: int,
    scaffold: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]] | None,
) -> dict[str, float]:
    n = len(data)
    run = _LocalRun.start_for(model, settings, seed=seed, scaffold=scaffold)
    steps = settings.steps(n)
    sums = {"ce": 0.0, "align": 0.0, "total": 0.0}
    perm = torch.randperm(n, generator=run.gen)
    pos = 0
    for _ in range(steps):
        if pos >= n:
            perm, pos = torch.randperm(n, generator=run.gen), 0
        idx = perm[pos : pos + settings.batch_size]
        pos += settings.batch_size
        inputs, held, labels = data.take(idx)
        mask = modality_dropout(held, settings.modality_dropout, run.gen)
        loss, parts = batch_loss(model, inputs, mask, labels, settings, held=held)
        if run.start:
            loss = loss + 0.5 * settings.proximal_mu * run.proximal_term()
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.add_correction()
        run.opt.step()
        for k in sums:
            sums[k] += parts[k]
    return {**{f"train-{k}": v / steps for k, v in sums.items()}, "steps": float(steps)}


def scaffold_control_update(
    c: Mapping[str, np.ndarray],
    c_i: Mapping[str, np.ndarray],
    x: Mapping[str, np.ndarray],
    y: Mapping[str, np.ndarray],
    *,
    steps: int,
    lr: float,
    momentum: float,
) -> dict[str, np.ndarray]:
    """SCAFFOLD option II: ``c_i⁺ = c_i - c + (x - y) / (K η)``.

    With heavy-ball momentum β the effective step is η / (1 - β), used in place of η.
    """
    eff = steps * lr / (1.0 - momentum)
    return {k: (c_i[k] - c[k] + (x[k] - y[k]) / eff).astype(np.float32) for k in c}


@torch.no_grad()
def evaluate(
    model: MultimodalNet,
    data: Batchable,
    *,
    subsets: Sequence[tuple[str, ...]] | None = None,
    batch_size: int = 1000,
) -> dict[str, object]:
    """Accuracy, macro-F1 and loss of the fused model, plus accuracy per modality subset.

    Embeddings are computed once with every available modality; each subset then fuses
    only its modalities (equivalent to masking the others, since fusion is masked).
    Returns ``{"accuracy", "macro_f1", "loss", "subsets": {"image+text": acc, ...}}``.
    """
    with channels_last(model):
        return _evaluate(model, data, subsets=subsets, batch_size=batch_size)


def _evaluate(
    model: MultimodalNet,
    data: Batchable,
    *,
    subsets: Sequence[tuple[str, ...]] | None,
    batch_size: int,
) -> dict[str, object]:
    model.eval()
    mods = model.modalities
    subsets = list(subsets) if subsets is not None else modality_subsets(mods)
    n = len(data)
    preds: dict[tuple[str, ...], list[Tensor]] = {s: [] for s in subsets}
    full_preds: list[Tensor] = []
    loss_sum = 0.0
    for lo in range(0, n, batch_size):
        idx = torch.arange(lo, min(n, lo + batch_size))
        inputs, mask, labels = data.take(idx)
        logits, emb = model.forward_with_embeddings(inputs, mask)
        loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        full_preds.append(logits.argmax(1))
        stacked = torch.stack([emb[m] for m in mods], dim=1)  # (B, M, D)
        for s in subsets:
            sub = torch.tensor([m in s for m in mods]).unsqueeze(0) & mask  # (B, M)
            has_any = sub.any(1)
            lg = model.head(model.fusion(stacked, sub))
            p = lg.argmax(1)
            p[~has_any] = -1  # a record holding none of the subset counts as wrong
            preds[s].append(p)
    y = data.labels.numpy()
    yhat = torch.cat(full_preds).numpy()
    return {
        "accuracy": float((yhat == y).mean()),
        "macro_f1": float(f1_score(y, yhat, average="macro")),
        "loss": loss_sum / max(1, n),
        "subsets": {"+".join(s): float((torch.cat(preds[s]).numpy() == y).mean()) for s in subsets},
    }


def _per_record_ce(model: nn.Module, batch: tuple[dict[str, Tensor], Tensor, Tensor]) -> Tensor:
    """Cross-entropy per record, (B,). No batch-coupling terms: safe for DP-SGD."""
    inputs, mask, labels = batch
    return nn.functional.cross_entropy(model(inputs, mask), labels, reduction="none")


def train_local_dp(
    model: MultimodalNet,
    data: Batchable,
    settings: TrainSettings,
    *,
    sample_rate: float,
    steps: int,
    noise_multipliers: Mapping[str, float],
    clip_norms: Mapping[str, float],
    seed: int,
    scaffold: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]] | None = None,
    deferred_noise: bool = False,
    release: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Example-level DP-SGD (Abadi et al. 2016, https://arxiv.org/abs/1607.00133).

    Poisson-sampled batches (rate ``sample_rate``) for ``steps`` steps; per-record
    gradients clipped per parameter group (modality encoders, shared part) to
    ``clip_norms[g]`` and noised with ``N(0, (σ_g C_g)²)`` by :class:`umbra.privacy.DPSGD`.
    The InfoNCE alignment term couples the records of a batch, so it is left out here;
    modality dropout is per record and stays.

    Randomness: the Poisson sample and the noise come from a fresh
    :class:`~umbra.privacy.randomness.SecureRandom` (``os.urandom``), never from ``seed``:
    an observer who knows ``run.seed`` must not learn which records a step used. ``seed``
    drives only non-private choices (modality dropout, dropout layers).

    ``deferred_noise``: no noise here (``noise_multipliers`` must be 0, ``steps`` 1); the
    clipped step is released only through SecAgg+, which adds discrete Gaussian shares after
    quantisation (:mod:`umbra.privacy.ddg`). ``release`` (if given) receives that step's
    update ``-lr (g + wd·x)`` per parameter in float64, computed from the gradient rather
    than as ``y - x`` of float32 weights (whose rounding would depend on the data).
    FedProx's proximal gradient and SCAFFOLD's correction are data-independent and are added
    after the private gradient (post-processing).
    """
    from umbra.models import parameter_groups
    from umbra.privacy.dpsgd import DPSGD, poisson_batches
    from umbra.privacy.randomness import SecureRandom

    n = len(data)
    if deferred_noise and steps != 1:
        raise ValueError(f"deferred noise releases one step, got steps={steps}")
    # seed: dropout layers and modality dropout only (not the DP sample or noise)
    run = _LocalRun.start_for(model, settings, seed=seed, scaffold=scaffold)
    private = SecureRandom()  # the Poisson sample and the noise: secret, never from seed
    dp = DPSGD(
        model,
        groups=parameter_groups(model),
        clip_norms=dict(clip_norms),
        noise_multipliers=dict(noise_multipliers),
        sample_rate=sample_rate,
        num_samples=n,
        rng=private,
        deferred_noise=deferred_noise,
    )
    # Channels-last convs as in train_local: DPSGD's default (book-keeping) backend is exact
    # for any memory layout (tests/test_privacy_dpsgd.py).
    with channels_last(model):
        for idx in poisson_batches(n, sample_rate=sample_rate, steps=steps, rng=private):
            inputs, mask, labels = data.take(idx)
            mask = modality_dropout(mask, settings.modality_dropout, run.gen)
            dp.step(_per_record_ce, (inputs, mask, labels))
            run.add_proximal_grad(settings.proximal_mu)
            run.add_correction()
            if release is not None:
                # SGD's first step (momentum buffer = gradient): -lr (g + wd·x)
                for k, p in run.params.items():
                    if p.grad is not None:
                        g64 = p.grad.detach().double() + settings.weight_decay * p.detach().double()
                        release[k] = (-settings.lr * g64).numpy()
            run.opt.step()
    dp.close()
    # No realised batch sizes in the metrics: they are a function of the secret Poisson
    # sample (a record's presence shifts their distribution) and metrics leave the client.
    return {"steps": float(steps)}
