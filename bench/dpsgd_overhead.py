"""Time per local epoch: non-private SGD vs Umbra's per-group DP-SGD vs Opacus' make_private.

All variants train the same model (``umbra.models.MultimodalNet`` with the sizes and
encoders of ``--preset``'s [model] section, by default the ``default`` preset's) on
the same synthetic data of fmnist-avt shapes (image (1, 28, 28), or (81, 7, 7) when the
preset's ``data.image_features`` is ``"scattering"``; audio (1, 32, 32), text (384,); 10
classes, random missing modalities), batch 64 (expected batch size q·N for the
Poisson-sampled variants; ``--batch 64 256 512`` also times the batch the ``default``
preset's DP-SGD runs with, 512), in one
process with the same thread count. Epochs of all variants and batch sizes are interleaved
(round-robin) so that load changes on a shared machine hit them alike; per variant the
median epoch time is reported with its ratio to the non-private median at the same batch
size, and the "paired ratio" (median over rounds of variant epoch / non-private epoch of
the same round), which is steadier on a loaded machine. oneDNN's primitive cache is
raised (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``, unless set) so that the interleaved variants'
Poisson batch shapes do not evict each other's compiled conv kernels.

Variants:
  non-private      shuffled batches, mean cross-entropy, ``loss.backward()``, conv encoders
                   channels-last as in ``train_local`` (within 3 % of NCHW here).
  umbra            :class:`umbra.privacy.DPSGD` (default ``"bookkeeping"`` backend: one
                   forward + one backward pass, ghost norms for Linear), 4 groups
                   (image/audio/text/shared), exact per-sample clipping, Poisson batches,
                   channels-last as in ``train_local_dp``.
  opacus           ``PrivacyEngine().make_private(...)`` defaults (Poisson loader, flat clip).
  --ablation adds: DPSGD's other backends, ``"functorch"`` (``vmap(grad)``) and ``"opacus"``
                   (GradSampleModule hooks), same clipping, NCHW (Opacus needs it).

    .venv/bin/python bench/dpsgd_overhead.py [--n 1024] [--batch 64] [--epochs 3] [--threads 2]
        [--ablation]

Writes bench/results/dpsgd_overhead.json (and .md) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

# Interleaving 3-5 variants x several batch sizes in one process, each Poisson-sampled (a new
# batch size, hence new oneDNN conv kernels, almost every step), overflows oneDNN's default
# cache of 1024 compiled primitives: the DP variants then recompile kernels every step, which
# a process that trains one way would not. A larger cache (read when torch loads) removes
# that artefact; the non-private variant (fixed batch size) is unaffected.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import umbra  # noqa: F401  (silences protobuf gencode warnings)
from umbra.models import ModelSpec, MultimodalNet, channels_last, parameter_groups
from umbra.privacy.dpsgd import DPSGD, poisson_batches

SHAPES: dict[str, tuple[int, ...]] = {"image": (1, 28, 28), "audio": (1, 32, 32), "text": (384,)}
NUM_CLASSES = 10


def make_data(n: int, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    data = {m: torch.randn(n, *s, generator=g) for m, s in SHAPES.items()}
    mask = torch.rand(n, len(SHAPES), generator=g) > 0.3
    mask[~mask.any(dim=1), 0] = True  # every record keeps at least one modality
    data["mask"] = mask
    data["y"] = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return data


DEVICE = torch.device("cpu")


def take(data: dict[str, Tensor], idx: Tensor) -> dict[str, Any]:
    idx = idx.to(DEVICE)
    return {"x": {m: data[m][idx] for m in SHAPES}, "mask": data["mask"][idx], "y": data["y"][idx]}


def per_sample_loss(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    return F.cross_entropy(model(batch["x"], batch["mask"]), batch["y"], reduction="none")


#: ModelSpec sizes and encoder choices, from ``--preset``'s [model] section (set in main)
MODEL_KW: dict[str, Any] = {}


def from_preset(preset: str) -> tuple[dict[str, Any], tuple[int, ...]]:
    """A preset's ModelSpec sizes and encoders, and its per-record image features (pixels, or
    their scattering coefficients); ``"spec-defaults"``: ModelSpec's defaults on pixels."""
    if preset == "spec-defaults":
        return {}, (1, 28, 28)
    from umbra.config import load_config
    from umbra.data.scattering import scattering_shape

    cfg = load_config(preset)
    mdl = cfg.model
    kw = {"hidden": mdl.hidden, "embed_dim": mdl.embed_dim, "encoders": dict(mdl.encoders)}
    image = (1, 28, 28)
    return kw, scattering_shape(image) if cfg.data.image_features == "scattering" else image


def new_model(seed: int) -> MultimodalNet:
    torch.manual_seed(seed)
    spec = ModelSpec(input_shapes=SHAPES, num_classes=NUM_CLASSES, **MODEL_KW)
    return MultimodalNet(spec).to(DEVICE)


Epoch = Callable[[], None]


def nonprivate(data: dict[str, Tensor], n: int, batch: int, seed: int) -> Epoch:
    model = new_model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(seed)

    def epoch() -> None:
        with channels_last(model):  # as umbra.federation.train.train_local runs it
            for idx in torch.randperm(n, generator=gen).split(batch):
                b = take(data, idx)
                opt.zero_grad()
                F.cross_entropy(model(b["x"], b["mask"]), b["y"]).backward()
                opt.step()

    return epoch


def umbra_dpsgd(data: dict[str, Tensor], n: int, batch: int, seed: int, *, backend: str) -> Epoch:
    model = new_model(seed)
    groups = parameter_groups(model)
    q = batch / n
    dp = DPSGD(
        model,
        groups=groups,
        clip_norms=dict.fromkeys(groups, 1.0),
        noise_multipliers=dict.fromkeys(groups, 1.0),
        sample_rate=q,
        num_samples=n,
        backend=backend,
    )  # type: ignore[arg-type]  # sample and noise from the ChaCha20 privacy stream
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def epoch() -> None:
        # Channels-last as in train_local_dp, for the backend that is exact in any layout.
        with channels_last(model) if backend == "bookkeeping" else nullcontext():
            for idx in poisson_batches(n, sample_rate=q, steps=n // batch):
                dp.step(per_sample_loss, take(data, idx))
                opt.step()

    return epoch


def opacus(data: dict[str, Tensor], n: int, batch: int, seed: int) -> Epoch:
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    class Positional(nn.Module):
        """make_private's data loader yields tuples: adapt them to MultimodalNet's dict."""

        def __init__(self, net: MultimodalNet) -> None:
            super().__init__()
            self.net = net

        def forward(self, image: Tensor, audio: Tensor, text: Tensor, mask: Tensor) -> Tensor:
            return self.net({"image": image, "audio": audio, "text": text}, mask)

    model = Positional(new_model(seed))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ds = TensorDataset(data["image"], data["audio"], data["text"], data["mask"], data["y"])
    loader = DataLoader(ds, batch_size=batch, generator=torch.Generator().manual_seed(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm, popt, ploader = PrivacyEngine().make_private(
            module=model,
            optimizer=opt,
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
        )

    def epoch() -> None:
        for image, audio, text, mask, y in ploader:
            popt.zero_grad()
            F.cross_entropy(pm(image, audio, text, mask), y).backward()
            popt.step()

    return epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1024, help="records per epoch")
    ap.add_argument(
        "--batch", type=int, nargs="+", default=[64], help="(expected) batch size(s), e.g. 64 256"
    )
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per variant")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--ablation", action="store_true", help="also DPSGD's other backends")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--preset",
        default="default",
        help="take the model's sizes and encoders from this preset ('spec-defaults': hidden "
        "128, conv audio encoder)",
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    model_kw, SHAPES["image"] = from_preset(args.preset)
    MODEL_KW.update(model_kw)
    torch.set_num_threads(args.threads)
    data = {k: v.to(DEVICE) for k, v in make_data(args.n, args.seed).items()}

    def sync() -> None:
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    # (batch, variant) -> epoch; all of them interleaved, so load changes hit them alike.
    variants: dict[tuple[int, str], Epoch] = {}
    for b in args.batch:
        variants[b, "non-private"] = nonprivate(data, args.n, b, args.seed)
        variants[b, "umbra"] = umbra_dpsgd(data, args.n, b, args.seed, backend="bookkeeping")
        variants[b, "opacus"] = opacus(data, args.n, b, args.seed)
        if args.ablation:
            for backend, label in (("functorch", "torch.func vmap"), ("opacus", "opacus hooks")):
                variants[b, f"umbra[{label}]"] = umbra_dpsgd(
                    data, args.n, b, args.seed, backend=backend
                )
    times: dict[tuple[int, str], list[float]] = {k: [] for k in variants}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in variants.values():  # warm-up: allocator, Opacus hooks, vmap tracing
            fn()
        for _ in range(args.epochs):
            for key, fn in variants.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[key].append(time.perf_counter() - t0)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for (b, name), ts in times.items():
        base = times[b, "non-private"]
        results.setdefault(f"batch {b}", {})[name] = {
            "epoch_s": ts,
            "median_s": statistics.median(ts),
            "ratio": statistics.median(ts) / statistics.median(base),
            # median over rounds of this epoch / the non-private epoch of the same round
            "paired_ratio": statistics.median(t / t0 for t, t0 in zip(ts, base, strict=True)),
        }
    out = {
        "bench": "dpsgd_overhead",
        "config": {
            "n": args.n,
            "batches": args.batch,
            "epochs": args.epochs,
            "threads": args.threads,
            "onednn_primitive_cache_capacity": os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"],
            "device": str(DEVICE),
            "shapes": SHAPES,
            "model": {"class": "MultimodalNet", "preset": args.preset, **MODEL_KW},
            "parameters": sum(p.numel() for p in new_model(0).parameters()),
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "gpu": torch.cuda.get_device_name() if DEVICE.type == "cuda" else None,
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "results": results,
    }
    rows = [
        "| batch | variant | median s / epoch | ratio to non-private | paired ratio |",
        "|---:|---|---:|---:|---:|",
    ]
    rows += [
        f"| {b.split()[1]} | {k} | {v['median_s']:.3f} | {v['ratio']:.2f}x |"
        f" {v['paired_ratio']:.2f}x |"
        for b, res in results.items()
        for k, v in res.items()
    ]
    table = "\n".join(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dpsgd_overhead.json").write_text(json.dumps(out, indent=2) + "\n")
    cmd = (
        "python bench/dpsgd_overhead.py "
        + " ".join(
            f"--{k} {v}"
            for k, v in (
                ("n", args.n),
                ("batch", " ".join(map(str, args.batch))),
                ("epochs", args.epochs),
                ("threads", args.threads),
                ("device", args.device),
                ("preset", args.preset),
            )
        )
        + (" --ablation" if args.ablation else "")
    )
    (args.out / "dpsgd_overhead.md").write_text(f"`{cmd}`\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
