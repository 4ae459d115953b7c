"""Example-level DP-SGD with one clip norm and one noise multiplier per parameter group.

Implements DP-SGD (Abadi et al. 2016, https://arxiv.org/abs/1607.00133) with per-group
("per-layer" in the paper's §3.1 wording) clipping for a multimodal model: the parameters
are partitioned into groups (each modality's encoder + projection, and ``"shared"`` for
fusion and head), and for every step

1. the batch is a Poisson sample: each of the N local records is in it independently with
   probability q (:func:`poisson_batches`, Opacus' ``UniformWithReplacementSampler``), so
   batches have variable size and may be empty;
2. per record i and group g, the gradient restricted to g is clipped exactly:
   ``ĝ_{i,g} = g_{i,g} · min(1, C_g / ‖g_{i,g}‖₂)``;
3. per group, ``Σ_i ĝ_{i,g} + N(0, (σ_g C_g)² I)`` is divided by the *expected* batch size
   ``q·N`` (not the realised one, whose size would leak) and left in ``p.grad``.

The groups share one Poisson sample, so a step is the composition of the groups' Gaussian
mechanisms on that sample; see :mod:`umbra.privacy.accounting` for how it is accounted.

Per-record gradients (three exact backends, registered by name in
:mod:`umbra.privacy.dpsgd_backends`; all agree with a batch-size-1 loop, see tests):

* ``"bookkeeping"`` (default, :mod:`umbra.privacy.bookkeeping`): one forward and one
  backward pass with forward hooks (book-keeping clipping, Bu et al. 2023,
  https://arxiv.org/abs/2210.00038). The backward pass asks only for the layers' output
  gradients, so the summed parameter gradients are never computed; per-record norms come
  from ghost norms ``‖a_i‖²‖g_i‖²`` for ``Linear`` layers and from materialised per-record
  gradients for ``Conv2d`` (its own weight-gradient kernel, records as groups) and the
  norm layers (Opacus' grad samplers); the clipped sum is ``(g ∘ f)ᵀ a`` per ``Linear`` and
  ``f · ∇`` otherwise.
* ``"functorch"``: ``torch.func`` ``functional_call`` + ``vmap(grad)``; the loss is
  evaluated on batches of one record, so any model that runs under ``vmap`` works.
* ``"opacus"``: Opacus' ``GradSampleModule`` hooks.

Chosen by measurement (``bench/dpsgd_overhead.py --batch 64 256``, default ``MultimodalNet``
on fmnist-avt shapes, 2-core x86 CPU, torch 2.13, 2 threads), epoch time over non-private
training at batch 64 / 256: book-keeping 1.37x / 1.23x (1.31x / 1.25x with 1 thread),
``vmap`` 2.31x / 2.47x, Opacus hooks 2.86x / 3.52x, Opacus' ``make_private`` 2.92x / 3.61x.
Most of the gain: no summed parameter gradients, no per-record ``Linear`` weight gradients
(95 % of the parameters), and conv weight gradients from oneDNN's own kernel.

Exactness needs a per-record-separable loss: record i's loss must depend on record i only.
``"functorch"`` enforces it by construction; the hook backends rely on it, like Opacus.
Layers that mix records (BatchNorm) are refused; the InfoNCE alignment term couples the
records of a batch and is left out of DP-SGD training (:func:`umbra.federation.train.train_local_dp`
trains with cross-entropy alone), whatever the backend.

Randomness. The Poisson sample and the noise come from :class:`~umbra.privacy.randomness.
SecureRandom` (ChaCha20 keyed from ``os.urandom``; Opacus' ``secure_mode``), never from a
seeded generator: amplification by subsampling holds only against an observer who cannot
predict the sample, and predictable noise is no noise. Nothing here accepts a seed.

Distributed noise. With ``deferred_noise=True`` no noise is added here: the clipped sums
are released only through secure aggregation, which adds the noise in the integer domain
after quantisation (distributed discrete Gaussian, :mod:`umbra.secure.secagg.quantize`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from umbra.privacy.bookkeeping import PerSample, clipped_sum
from umbra.privacy.dpsgd_backends import PerSampleLossFn, backend_class
from umbra.privacy.randomness import SecureRandom

__all__ = ["DPSGD", "StepStats", "poisson_batches"]


def poisson_batches(
    num_samples: int,
    *,
    sample_rate: float,
    steps: int | None = None,
    rng: SecureRandom | None = None,
) -> Iterator[Tensor]:
    """Poisson-sampled batch indices: each record is in each batch independently w.p. q.

    The sample is secret (the subsampling amplification assumes the observer cannot
    predict it): the Bernoulli masks come from ``rng``, a fresh :class:`SecureRandom`
    (``os.urandom``) when None. Same distribution as Opacus' ``UniformWithReplacementSampler``.

    Args:
        num_samples: N >= 1 records.
        sample_rate: q in (0, 1].
        steps: number of batches (default ``int(1 / q)``, one expected epoch).
        rng: the privacy stream (tests pass :meth:`SecureRandom.for_testing`).

    Yields:
        int64 index tensors of variable length (possibly 0), in increasing order.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if steps is not None and steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    r = rng if rng is not None else SecureRandom()
    for _ in range(int(1 / sample_rate) if steps is None else steps):
        mask = r.bernoulli(sample_rate, num_samples)
        yield torch.from_numpy(np.flatnonzero(mask).astype(np.int64))


@dataclass(frozen=True)
class StepStats:
    """Local diagnostics of one step. NOT differentially private: never send them out.

    Attributes:
        batch_size: realised Poisson batch size.
        clipped_fraction: group -> fraction of records whose gradient was scaled down.
        mean_norm: group -> mean per-record gradient norm before clipping.
    """

    batch_size: int
    clipped_fraction: dict[str, float]
    mean_norm: dict[str, float]


def _leaves(batch: Any) -> list[Tensor]:
    if isinstance(batch, Tensor):
        return [batch]
    if isinstance(batch, Mapping):
        return [t for v in batch.values() for t in _leaves(v)]
    if isinstance(batch, list | tuple):
        return [t for v in batch for t in _leaves(v)]
    return []


class DPSGD:
    """Per-group clipped, noised gradients for a model, left in ``p.grad``.

    Usage::

        dp = DPSGD(model, groups=parameter_groups(model), clip_norms={...},
                   noise_multipliers={...}, sample_rate=q, num_samples=N)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for idx in poisson_batches(N, sample_rate=q, steps=T):
            dp.step(per_sample_loss, make_batch(idx))   # fills p.grad
            opt.step()

    Args:
        model: the model. Only layers Opacus supports (no BatchNorm: it mixes records).
            With ``backend="bookkeeping"`` forward hooks are attached to every layer that
            owns a trainable parameter (they record only inside :meth:`step`), with
            ``backend="opacus"`` Opacus' hooks (it must then be in ``train()`` mode);
            :meth:`close` detaches either.
        groups: group -> parameter names (``model.named_parameters()`` names); must cover
            every trainable parameter exactly once.
        clip_norms: group -> C_g > 0.
        noise_multipliers: group -> σ_g >= 0 (noise std = σ_g C_g; 0 warns: not private).
        sample_rate: Poisson rate q in (0, 1] of the batches fed to :meth:`step`.
        num_samples: N >= 1 local records; gradients are divided by q·N.
        rng: the privacy stream for the noise; None (production) draws a fresh
            :class:`SecureRandom` from ``os.urandom``. Tests pass
            :meth:`SecureRandom.for_testing`.
        deferred_noise: add no noise here because secure aggregation adds it later to the
            quantised clipped sums (distributed discrete Gaussian); ``noise_multipliers``
            must then be 0 (no warning is given).
        backend: how per-record gradients are computed: ``"bookkeeping"`` (the default,
            fastest in ``bench/dpsgd_overhead.py``; every parametrised layer must be a
            ``Linear``, a ``Conv2d`` or have an Opacus grad sampler, and layer outputs must
            not be modified in place), ``"functorch"`` (``vmap(grad)``; any layer that runs
            under ``vmap``) or ``"opacus"`` (``GradSampleModule`` hooks). All give the same
            gradients for a per-record-separable loss.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        groups: Mapping[str, Sequence[str]],
        clip_norms: Mapping[str, float],
        noise_multipliers: Mapping[str, float],
        sample_rate: float,
        num_samples: int,
        rng: SecureRandom | None = None,
        backend: str = "bookkeeping",
        deferred_noise: bool = False,
    ) -> None:
        backend_cls = backend_class(backend)
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        names = set(groups)
        for what, m in (("clip_norms", clip_norms), ("noise_multipliers", noise_multipliers)):
            if set(m) != names:
                raise ValueError(
                    f"{what} must have exactly the groups {sorted(names)}, got {sorted(m)}"
                )
        for g, c in clip_norms.items():
            if not (math.isfinite(c) and c > 0):
                raise ValueError(f"clip_norms[{g!r}] must be a finite number > 0, got {c}")
        for g, s in noise_multipliers.items():
            if not (math.isfinite(s) and s >= 0):
                raise ValueError(f"noise_multipliers[{g!r}] must be a finite number >= 0, got {s}")
            if deferred_noise and s != 0:
                raise ValueError(
                    f"noise_multipliers[{g!r}] must be 0 with deferred_noise (the noise is added"
                    f" after quantisation), got {s}"
                )
            if s == 0 and not deferred_noise:
                warnings.warn(
                    f"noise_multipliers[{g!r}] = 0: group {g!r} is trained without noise,"
                    " its updates are not differentially private",
                    stacklevel=2,
                )
        params = dict(model.named_parameters())
        trainable = {n for n, p in params.items() if p.requires_grad}
        seen: dict[str, str] = {}
        for g, plist in groups.items():
            for n in plist:
                if n not in params:
                    raise ValueError(f"groups[{g!r}] names unknown parameter {n!r}")
                if n in seen:
                    raise ValueError(f"parameter {n!r} is in groups {seen[n]!r} and {g!r}")
                seen[n] = g
        missing = sorted(trainable - set(seen))
        if missing:
            raise ValueError(f"trainable parameters in no group: {missing}")

        self.model = model
        self.sample_rate = float(sample_rate)
        self.num_samples = int(num_samples)
        self.clip_norms = {g: float(c) for g, c in clip_norms.items()}
        self.noise_multipliers = {g: float(s) for g, s in noise_multipliers.items()}
        self.rng = rng if rng is not None else SecureRandom()
        self.deferred_noise = bool(deferred_noise)
        # group -> trainable parameters, in model order.
        self._params: dict[str, list[nn.Parameter]] = {
            g: [params[n] for n in plist if params[n].requires_grad] for g, plist in groups.items()
        }
        self.backend = backend
        self._backend = backend_cls(model, self._params, {id(p): n for n, p in params.items()})

    @property
    def expected_batch_size(self) -> float:
        """q·N, the denominator of the averaged gradient."""
        return self.sample_rate * self.num_samples

    def close(self) -> None:
        """Detach the backend's hooks from the model (a no-op for ``"functorch"``)."""
        self._backend.close()

    def step(self, per_sample_loss_fn: PerSampleLossFn, batch: Any) -> StepStats:
        """One DP-SGD step: fill ``p.grad`` of every trainable parameter.

        Args:
            per_sample_loss_fn: ``(model, batch) -> losses`` of shape ``(B,)``, one loss per
                record, no reduction. It must call ``model`` (the one given to the
                constructor) in train mode.
            batch: the Poisson batch: a tensor or a (nested) dict/list/tuple of tensors, all
                with the records along dim 0. ``B = 0`` is allowed: the gradient is then
                pure noise, as the privacy analysis assumes.

        Returns:
            local, non-private diagnostics (:class:`StepStats`).
        """
        leaves = _leaves(batch)
        if not leaves:
            raise ValueError("batch must contain at least one tensor")
        batch_size = int(leaves[0].shape[0])
        if any(int(t.shape[0]) != batch_size for t in leaves):
            raise ValueError("every tensor in batch must have the same size along dim 0")
        self._backend.before_step()
        clipped: dict[str, float] = dict.fromkeys(self._params, 0.0)
        mean_norm: dict[str, float] = dict.fromkeys(self._params, 0.0)
        per_sample: dict[str, list[PerSample | None]] = {
            g: [None] * len(plist) for g, plist in self._params.items()
        }
        if batch_size > 0:
            per_sample = self._backend.per_sample(per_sample_loss_fn, batch, batch_size)
        scale = 1.0 / self.expected_batch_size
        with torch.no_grad():
            for g, plist in self._params.items():
                if not plist:
                    continue
                c = self.clip_norms[g]
                flat, views, norms = clipped_sum(per_sample[g], plist, c)
                if norms.numel():
                    clipped[g] = float((norms > c).double().mean())
                    mean_norm[g] = float(norms.mean())
                std = self.noise_multipliers[g] * self.clip_norms[g]
                if std > 0:
                    # One draw per group: N(0, (σ_g C_g)²) i.i.d. per coordinate.
                    flat.add_(
                        self.rng.torch_normal(
                            flat.shape, std=std, dtype=flat.dtype, device=flat.device
                        )
                    )
                flat.mul_(scale)
                for p, v in zip(plist, views, strict=True):
                    p.grad = v.to(device=p.device, dtype=p.dtype)  # no copy when they match
        self._backend.after_step(batch_size)
        return StepStats(batch_size=batch_size, clipped_fraction=clipped, mean_norm=mean_norm)
