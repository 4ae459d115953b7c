"""Per-record gradient norms and clipped sums from one forward and one backward pass.

Book-keeping clipping (Bu et al. 2023, "Differentially Private Optimization on Large Model
at Small Cost", https://arxiv.org/abs/2210.00038): forward hooks keep each parametrised
layer's input ``a`` and output; one ``torch.autograd.grad`` call w.r.t. those outputs gives
every layer's output gradient ``g`` (the summed parameter gradients are never computed);
per-record gradients are then functions of ``(a, g)`` alone, so

* per-record squared norms come per parameter; for a ``Linear`` fed ``(B, d_in)`` they are
  the "ghost norm" ``‖a_i‖² ‖g_i‖²`` (Goodfellow 2015, https://arxiv.org/abs/1510.01799),
  without materialising any ``(B, d_out, d_in)`` tensor;
* after the caller turns norms into per-record factors ``f_i`` (exact clipping), the clipped
  sum ``Σ_i f_i ∇_i`` is one weighted product: ``(g ∘ f)ᵀ a`` for such a ``Linear``,
  ``tensordot(f, ∇)`` for layers whose per-record gradients are materialised.

``Conv2d`` per-record weight gradients come from the convolution's own weight-gradient
kernel run with the records as groups (or im2col and a batched matmul for one input channel);
every other layer type goes through Opacus' registered grad samplers
(``GradSampleModule.GRAD_SAMPLERS``: GroupNorm, LayerNorm, Embedding, ...), which take the
same ``(a, g)``. A parameter reached by several calls (a layer called twice, tied weights)
gets the sum of its calls' materialised per-record gradients, so it stays exact.

The result is exact for any per-record-separable loss (``loss_i`` a function of record i
only): layers that mix records (BatchNorm) are rejected by the caller, and a loss term that
couples records (InfoNCE) must be left out, as it must be for DP-SGD with any backend.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight
from torch.utils.hooks import RemovableHandle

__all__ = [
    "BookKeeper",
    "OuterProduct",
    "PerSample",
    "clipped_sum",
    "conv2d_grad_sample",
    "linear_terms",
]


@dataclass(frozen=True)
class OuterProduct:
    """Per-record gradients ``g_i a_iᵀ`` of a ``Linear`` weight, kept as their two factors.

    Attributes:
        a: ``(B, d_in)`` layer inputs.
        g: ``(B, d_out)`` gradients of the summed loss w.r.t. the layer outputs.
    """

    a: Tensor
    g: Tensor

    def sq_norms(self) -> Tensor:
        """``(B,)`` ``‖g_i a_iᵀ‖²_F = ‖a_i‖² ‖g_i‖²`` (ghost norm)."""
        return self.a.square().sum(dim=1) * self.g.square().sum(dim=1)

    def weighted_sum(self, f: Tensor, out: Tensor | None = None) -> Tensor:
        """``Σ_i f_i g_i a_iᵀ = (g ∘ f)ᵀ a``, ``(d_out, d_in)`` (written into ``out`` if given)."""
        return torch.mm((self.g * f.unsqueeze(1)).T, self.a, out=out)

    def materialise(self) -> Tensor:
        """``(B, d_out, d_in)`` per-record gradients (only for parameters with several calls)."""
        return self.g.unsqueeze(2) * self.a.unsqueeze(1)


#: Largest per-record size of a materialised term that :func:`clipped_sum` concatenates with
#: the other small ones (a copy) rather than handling on its own.
CONCAT_MAX = 16384

#: One parameter's per-record gradients: materialised ``(B, *p.shape)`` or an outer product.
PerSample = Tensor | OuterProduct


def clipped_sum(
    terms: Sequence[PerSample | None], params: Sequence[Tensor], clip: float
) -> tuple[Tensor, list[Tensor], Tensor]:
    """Exact per-record clipping of one parameter group: ``Σ_i min(1, C/‖∇_i‖) ∇_i``.

    Args:
        terms: per parameter of the group, its per-record gradients (None: zero for every
            record); ``‖∇_i‖`` is the norm over the whole group.
        params: the group's parameters (shapes, dtype and device of the result).
        clip: C > 0.

    Returns:
        ``(flat, views, norms)``: the clipped sums in one flat buffer (dtype and device of
        ``params[0]``, so that noise and scaling are one operation per group), its views
        shaped like each parameter, and the ``(B,)`` float64 per-record norms (empty when
        every term is None).

    Small materialised terms (at most ``CONCAT_MAX`` values per record: biases, norm
    layers, small convs) are concatenated into one ``(B, P)`` matrix laid out first in
    ``flat``: one norm and one ``(B,) x (B, P)`` product for all of them (few, large kernels:
    on a 2-core CPU the per-call overhead of many small ones showed in the epoch time);
    larger ones get their own norm and product (no copy), each :class:`OuterProduct` its
    ghost norm and ``(g ∘ f)ᵀ a``.
    """
    small = [
        k
        for k, t in enumerate(terms)
        if isinstance(t, Tensor) and t.shape[1:].numel() <= CONCAT_MAX
    ]
    large = [k for k, t in enumerate(terms) if isinstance(t, Tensor) and k not in small]
    ghosts = [k for k, t in enumerate(terms) if isinstance(t, OuterProduct)]
    nones = [k for k, t in enumerate(terms) if t is None]
    order = small + large + ghosts + nones
    sizes = [params[k].numel() for k in order]
    flat = torch.empty(sum(sizes), dtype=params[0].dtype, device=params[0].device)
    views: list[Tensor] = [flat] * len(params)
    for k, chunk in zip(order, flat.split(sizes), strict=True):
        views[k] = chunk.view_as(params[k])
    for k in nones:
        views[k].zero_()
    if len(nones) == len(terms):
        return flat, views, torch.zeros(0, dtype=torch.float64, device=flat.device)
    # (B, P) blocks: all small terms concatenated, then each large one.
    blocks = [cast(Tensor, terms[k]).flatten(1) for k in large]
    if small:
        parts = [cast(Tensor, terms[k]).flatten(1) for k in small]
        blocks.insert(0, parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
    sq = [torch.linalg.vector_norm(m, dim=1).square() for m in blocks]  # (B,) each
    sq += [cast(OuterProduct, terms[k]).sq_norms() for k in ghosts]
    # Squared norms per parameter (or block) in the gradients' dtype, summed in float64.
    norms = torch.stack(sq).sum(dim=0, dtype=torch.float64).sqrt()  # (B,)
    # min(1, C / ‖∇_i‖); a zero gradient keeps factor 1.
    f = torch.where(norms > clip, clip / norms.clamp_min(1e-300), 1.0).to(flat.dtype)
    offset = 0
    for m in blocks:  # laid out in this order at the start of flat
        torch.mv(m.T, f, out=flat[offset : offset + m.shape[1]])  # (P,) = (B, P)ᵀ (B,)
        offset += m.shape[1]
    for k in ghosts:
        cast(OuterProduct, terms[k]).weighted_sum(f, out=views[k])
    return flat, views, norms


def _materialise(t: PerSample) -> Tensor:
    return t.materialise() if isinstance(t, OuterProduct) else t


def linear_terms(layer: nn.Linear, a: Tensor, g: Tensor) -> dict[Tensor, PerSample]:
    """Per-record gradients of a ``Linear``'s trainable parameters from inputs and output grads.

    ``a`` is ``(B, d_in)`` (weight kept as an :class:`OuterProduct`, bias is ``g`` itself) or
    ``(B, ..., d_in)`` (per-record gradients summed over the middle positions, materialised).
    """
    out: dict[Tensor, PerSample] = {}
    if a.dim() == 2:
        if layer.weight.requires_grad:
            out[layer.weight] = OuterProduct(a, g)
        if layer.bias is not None and layer.bias.requires_grad:
            out[layer.bias] = g
        return out
    b = a.shape[0]
    a3, g3 = a.reshape(b, -1, a.shape[-1]), g.reshape(b, -1, g.shape[-1])  # (B, T, d)
    if layer.weight.requires_grad:
        out[layer.weight] = torch.bmm(g3.transpose(1, 2), a3)  # (B, d_out, d_in)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = g3.sum(dim=1)
    return out


def _plain_conv2d(layer: nn.Module) -> bool:
    return (
        type(layer) is nn.Conv2d
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
    )


def _unfold2d(a: Tensor, layer: nn.Conv2d, out_hw: tuple[int, int]) -> Tensor:
    """im2col ``(B, C_in·kh·kw, Ho·Wo)`` of ``a`` for ``layer`` as one strided copy.

    A strided view over the padded input, built from its actual strides (so any memory
    layout, NCHW or channels-last, is read correctly), then one ``reshape`` copy: several
    times faster on CPU than ``F.unfold``.
    """
    ph, pw = cast(tuple[int, int], layer.padding)  # not a string: see _plain_conv2d
    ap = F.pad(a, (pw, pw, ph, ph)) if ph or pw else a
    (kh, kw), (dh, dw), (sh, sw) = layer.kernel_size, layer.dilation, layer.stride
    s0, s1, s2, s3 = ap.stride()
    view = ap.as_strided(
        (ap.shape[0], ap.shape[1], kh, kw, *out_hw),
        (s0, s1, s2 * dh, s3 * dw, s2 * sh, s3 * sw),
        ap.storage_offset(),
    )  # (B, C_in, kh, kw, Ho, Wo)
    return view.reshape(ap.shape[0], ap.shape[1] * kh * kw, out_hw[0] * out_hw[1])


def conv2d_grad_sample(layer: nn.Conv2d, a: Tensor, g: Tensor) -> dict[Tensor, PerSample]:
    """Per-record gradients ``(B, *p.shape)`` of a ``Conv2d`` with numeric zero padding.

    Weight, two exact routes, whichever is faster on CPU (measured, torch 2.13):

    * one input channel per group: im2col, ``unfold(a)`` is ``(B, kh·kw, T)`` over the T
      output positions and ``∇W_i = g_i · unfold(a_i)ᵀ``, one batched matmul;
    * otherwise: the records become groups of one convolution, ``(1, B·C_in, H, W)`` with
      ``B·groups`` groups, and the convolution's own weight-gradient kernel
      (``torch.nn.grad.conv2d_weight``) returns the ``B·C_out`` per-record filters at the
      cost of the ordinary summed weight gradient, with no im2col buffer.
    """
    b = a.shape[0]
    gg = g.reshape(b, layer.out_channels, -1)  # (B, C_out, T)
    out: dict[Tensor, PerSample] = {}
    if layer.weight.requires_grad:
        w = layer.weight
        if w.shape[1] == 1 and layer.groups == 1:
            cols = _unfold2d(a, layer, (g.shape[-2], g.shape[-1]))  # (B, kh·kw, T)
            # (B, K, T) @ (B, T, C_out): MKL's batched GEMM is fastest with cols untransposed.
            gs = torch.bmm(cols, gg.transpose(1, 2)).transpose(1, 2).contiguous()  # (B, C_out, K)
        else:
            gs = conv2d_weight(
                a.reshape(1, b * a.shape[1], *a.shape[2:]),  # (1, B·C_in, H, W)
                (b * w.shape[0], *w.shape[1:]),
                g.reshape(1, b * g.shape[1], *g.shape[2:]),  # (1, B·C_out, Ho, Wo)
                stride=layer.stride,
                padding=cast(tuple[int, int], layer.padding),
                dilation=layer.dilation,
                groups=b * layer.groups,
            )  # (B·C_out, C_in / groups, kh, kw)
        out[w] = gs.view(b, *w.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = gg.sum(dim=2)  # (B, C_out)
    return out


def _terms(layer: nn.Module, a: Tensor, g: Tensor) -> dict[Tensor, PerSample]:
    if type(layer) is nn.Linear:
        return linear_terms(layer, a, g)
    if _plain_conv2d(layer):
        return conv2d_grad_sample(layer, a, g)  # type: ignore[arg-type]
    sampler = GradSampleModule.GRAD_SAMPLERS[type(layer)]
    # Opacus' conv sampler unfolds assuming NCHW strides: hand it contiguous tensors (no-op
    # unless a layer ran channels-last).
    return dict(sampler(layer, [a.contiguous()], g.contiguous()))


def _supported(layer: nn.Module) -> bool:
    return type(layer) is nn.Linear or type(layer) in GradSampleModule.GRAD_SAMPLERS


@dataclass
class _Call:
    """One forward call of a hooked layer: its input, its output (in the graph) and their
    version counters (to detect later in-place changes)."""

    layer: nn.Module
    name: str
    a: Tensor
    out: Tensor
    versions: tuple[int, int]


class BookKeeper:
    """Records layer inputs/outputs during a forward pass and yields per-record gradient terms.

    Usage (one step)::

        bk = BookKeeper(model, params)
        with bk.record():
            losses = loss_fn(model, batch)            # (B,)
        terms = bk.backward(losses.sum())             # id(p) -> PerSample
        flat, views, norms = clipped_sum([terms.get(id(p)) for p in group], group, C)

    Args:
        model: the model; forward hooks are attached to every layer that directly owns one
            of ``params`` (:meth:`close` removes them). They record only inside
            :meth:`record`.
        params: the trainable parameters whose per-record gradients are wanted.

    Raises:
        ValueError: a parameter's layer is of a type with no per-record rule (neither
            ``Linear``/``Conv2d`` nor an Opacus grad sampler), or a parameter belongs to no
            layer of ``model``.
    """

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter]) -> None:
        wanted = {id(p) for p in params}
        found: set[int] = set()
        self._calls: list[_Call] = []
        self._active = False
        self._handles: list[RemovableHandle] = []
        unsupported: list[str] = []
        for name, layer in model.named_modules():
            own = [p for p in layer.parameters(recurse=False) if id(p) in wanted]
            if not own:
                continue
            if not _supported(layer):
                unsupported.append(f"{name or '<model>'} ({type(layer).__name__})")
                continue
            found.update(id(p) for p in own)
            self._handles.append(layer.register_forward_hook(self._hook(name)))
        if unsupported:
            self.close()
            raise ValueError(
                "no per-record gradient rule for the layers "
                f"{', '.join(unsupported)}; use backend='functorch'"
            )
        if wanted - found:
            self.close()
            raise ValueError("some parameters belong to no layer of the model")

    def _hook(self, name: str) -> Any:
        def hook(layer: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if not self._active or not torch.is_grad_enabled():
                return
            if not isinstance(output, Tensor) or not inputs or not isinstance(inputs[0], Tensor):
                raise ValueError(f"layer {name!r} must map one tensor to one tensor")
            if not output.requires_grad:
                return
            a = inputs[0].detach()  # shares the version counter of the input
            self._calls.append(_Call(layer, name, a, output, (a._version, output._version)))

        return hook

    @contextmanager
    def record(self) -> Iterator[None]:
        """Record the hooked layers' calls (previous records are dropped)."""
        self._calls = []
        self._active = True
        try:
            yield
        finally:
            self._active = False

    def backward(self, loss: Tensor) -> dict[int, PerSample]:
        """Output gradients of every recorded call in one pass, then per-record terms.

        Args:
            loss: the scalar sum of the per-record losses computed inside :meth:`record`.

        Returns:
            ``id(p) -> PerSample`` for every parameter reached; a parameter the loss does not
            depend on is absent (its per-record gradients are zero).
        """
        calls = self._calls
        self._calls = []
        for c in calls:
            if (c.a._version, c.out._version) != c.versions:
                raise RuntimeError(
                    f"the input or output of layer {c.name!r} was modified in place after the"
                    " layer ran (e.g. ReLU(inplace=True)); per-record gradients need them intact"
                )
        if not calls:
            return {}
        grads = torch.autograd.grad(loss, [c.out for c in calls], allow_unused=True)
        per_param: dict[int, list[PerSample]] = {}
        with torch.no_grad():
            for c, g in zip(calls, grads, strict=True):
                if g is None:
                    continue
                for p, t in _terms(c.layer, c.a, g.detach()).items():
                    per_param.setdefault(id(p), []).append(t)
            return {
                k: ts[0] if len(ts) == 1 else torch.stack([_materialise(t) for t in ts]).sum(0)
                for k, ts in per_param.items()
            }

    def close(self) -> None:
        """Remove the forward hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._calls = []
