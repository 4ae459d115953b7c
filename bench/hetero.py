"""Heterogeneous organisations and text as the mediator, on the ``baseline`` preset's data.

Every scenario runs the in-process federation of ``umbra hetero``
(:func:`umbra.federation.hetero.run_hetero`) on the same data: ``baseline``'s 48,000
``fmnist-avt`` records (scattering images) over 8 organisations, with the same
``hetero.transfer_records`` (2,000) held out of them in every scenario, so that all
scenarios train on identical organisation data. ``--rounds`` rounds of ``baseline``'s half
epoch (fewer than its 40, to fit a loaded machine; stated in the table).

Heterogeneous architectures:

* ``homogeneous``: every organisation on ``baseline``'s model (scattering image head);
* ``hetero-avg``: organisations 4-7 on the conv encoder ``image`` over the scattering
  coefficients, averaging only what matches, no distillation;
* ``hetero-feddf``: the same plus FedDF distillation (``--distill-steps`` per round)
  towards the ensemble of the round's local models;
* ``hetero-feddf-avg``: distillation towards the ensemble of the two architectures'
  averaged models instead (``hetero.teachers = "averaged"``).

Text as the mediator (every organisation on ``baseline``'s model, no distillation):

* ``mediator-upper``: organisations 0-3 hold image+text, 4-6 audio+text, 7 all three
  (image+audio pairs exist);
* ``mediator``: 0-3 image+text, 4-7 audio+text (nobody holds image with audio);
* ``mediator-noalign``: ``mediator`` with ``model.align_weight = 0``.

The first two weigh the InfoNCE term ``--align-weight`` (default: ``SYNTH_ALIGN_WEIGHT``,
1.0, on the synthetic set; ``baseline``'s 0.1 on ``fmnist-avt``, where 1.0 makes SGD at
``baseline``'s step of 0.1 diverge in the first round). They run on
``fmnist-avt`` and (``--data synthetic``) on :func:`paired_synthetic` records, where a
record's modalities share a latent beyond their class, so that instance-level retrieval
can tell alignment from class learning (``fmnist-avt``'s image and recording share
nothing beyond the class).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/hetero.py [--rounds 15]
        [--distill-steps 50] [--scenarios homogeneous hetero-feddf ...]
        [--data fmnist-avt synthetic] [--align-weight 0.1] [--set KEY=VALUE ...]

``--set`` overrides the config of every scenario (a scenario's own settings win); the
overrides are part of a result's key.

Each finished scenario is merged into bench/results/hetero.json at once (keyed by
scenario and rounds, with the command); bench/results/hetero.md is the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from umbra.config import Config, load_config
from umbra.data.dataset import MultimodalData
from umbra.data.partition import absent_modalities, apply_missing, partition
from umbra.data.sources.synthetic import make_synthetic
from umbra.federation.hetero import run_hetero
from umbra.run.prepare import PreparedData, model_spec_for, prepare_data

RESULTS = Path(__file__).parent / "results"
CLIENTS = 8
#: The synthetic mediator data (:func:`paired_synthetic`): records, noise, the per-record
#: latent's dimensions and scale (relative to the unit-RMS class prototypes).
SYNTH_TRAIN, SYNTH_TEST, SYNTH_NOISE = 8000, 1000, 1.0
SYNTH_LATENT, SYNTH_LATENT_SCALE = 16, 1.0
#: Its encoders: the MLP (registered as ``tabular``) on the flat 64-value "image" and
#: "audio" vectors. The latent is a random linear map, with no spatial structure for a
#: conv encoder to use (its pooling loses it: recall@10 stays at the class level).
SYNTH_ENCODERS = {"image": "tabular", "audio": "tabular"}
#: ... and its batch size: four times ``baseline``'s 32, so that the InfoNCE term has
#: enough records holding a pair, as negatives, in every batch (the records within a class
#: are what the alignment must tell apart; 32 gave recall@10 0.30 instead of 0.40).
SYNTH_BATCH = 128
#: ... and the aligned mediator scenarios' InfoNCE weight there (``baseline``'s 0.1 aligns
#: the classes but not the records within a class: recall@10 0.10 against 0.39).
SYNTH_ALIGN_WEIGHT = 1.0
SECOND_IMAGE_ENCODER = "image"  # the conv encoder, here on the scattering coefficients
HALF = {str(i): {"encoders": {"image": SECOND_IMAGE_ENCODER}} for i in range(4, 8)}
IMAGE_TEXT = {str(i): ["audio"] for i in range(4)}
SCENARIOS: dict[str, dict[str, Any]] = {
    "homogeneous": {},
    "hetero-avg": {"hetero": {"organisations": HALF}},
    "hetero-feddf": {"hetero": {"organisations": HALF}, "distil": True},
    "hetero-feddf-avg": {
        "hetero": {"organisations": HALF, "teachers": "averaged"},
        "distil": True,
    },
    "mediator-upper": {
        "absent": {**IMAGE_TEXT, **{str(i): ["image"] for i in range(4, 7)}},
        "aligned": True,
    },
    "mediator": {
        "absent": {**IMAGE_TEXT, **{str(i): ["image"] for i in range(4, 8)}},
        "aligned": True,
    },
    "mediator-noalign": {
        "absent": {**IMAGE_TEXT, **{str(i): ["image"] for i in range(4, 8)}},
        "align_weight": 0.0,
    },
}


def _config(
    name: str,
    rounds: int,
    distill_steps: int,
    seed: int,
    distill_lr: float = 1e-3,
    overrides: tuple[str, ...] = (),
    align_weight: float | None = None,
) -> Config:
    s = SCENARIOS[name]
    cfg = load_config(
        "baseline",
        overrides=[f"federation.rounds={rounds}", f"run.seed={seed}", "run.eval_every=5",
                   *overrides],
    )  # fmt: skip
    raw = cfg.model_dump(mode="json")
    raw["hetero"].update(s.get("hetero", {}))
    raw["hetero"]["distill_steps"] = distill_steps if s.get("distil") else 0
    raw["hetero"]["distill_lr"] = distill_lr
    raw["data"]["absent"] = s.get("absent", {})
    if s.get("aligned") and align_weight is not None:
        raw["model"]["align_weight"] = align_weight
    if "align_weight" in s:
        raw["model"]["align_weight"] = s["align_weight"]
    return Config.model_validate(raw)


def paired_synthetic(n: int, seed: int) -> MultimodalData:
    """Records whose image, audio and text each carry the class (a prototype plus noise,
    :func:`make_synthetic`) and one latent of their own (``SYNTH_LATENT`` dimensions,
    mapped into each modality by a fixed random matrix): what links a real pair beyond its
    class. The latent does not help classification; only alignment can match it across
    modalities, so instance-level retrieval measures alignment and not class learning."""
    base = make_synthetic(n=n, num_classes=10, seed=seed, modalities=("image", "audio", "text"),
                          noise=SYNTH_NOISE)  # fmt: skip
    z = np.random.default_rng([seed, 0x5A17]).standard_normal((n, SYNTH_LATENT))
    features = {}
    for k, m in enumerate(base.modalities):
        x = base.features[m]
        mix = np.random.default_rng([0x5A17, k]).standard_normal((SYNTH_LATENT, x[0].size))
        flat = x.reshape(n, -1)  # (n, F): 8x8 "images" and "spectrograms" as 64 values
        own = (z @ mix / np.sqrt(SYNTH_LATENT)) * SYNTH_LATENT_SCALE  # (n, F)
        features[m] = (flat + own).astype(np.float32)
    return MultimodalData(features, base.mask, base.labels, base.modalities, base.class_names)


def _synthetic_prep(cfg: Config) -> PreparedData:
    """:func:`paired_synthetic` records, split and masked as ``prepare_data`` splits a
    source (the same Dirichlet partition, absent modalities and missingness)."""
    both = paired_synthetic(SYNTH_TRAIN + SYNTH_TEST, cfg.run.seed)
    idx = np.arange(len(both))
    train, test = both.subset(idx[:SYNTH_TRAIN]), both.subset(idx[SYNTH_TRAIN:])
    parts = partition(train.labels, CLIENTS, scheme=cfg.data.partition, alpha=cfg.data.alpha,
                      seed=cfg.run.seed, min_size=cfg.data.min_client_size)  # fmt: skip
    absent = {int(c): [train.modality_index(m) for m in ms] for c, ms in cfg.data.absent.items()}
    masked = absent_modalities(train.mask, parts, absent) if absent else train.mask.copy()
    rates = np.array([cfg.data.missing.get(m, 0.0) for m in train.modalities])
    masked = apply_missing(masked, rates=rates, seed=cfg.run.seed + 1)
    return PreparedData(train, test, parts, [masked[p] for p in parts])


def _run(
    name: str,
    rounds: int,
    distill_steps: int,
    seed: int,
    data: str,
    distill_lr: float = 1e-3,
    overrides: tuple[str, ...] = (),
    align_weight: float | None = None,
) -> dict[str, Any]:
    if align_weight is None and data == "synthetic":
        align_weight = SYNTH_ALIGN_WEIGHT
    cfg = _config(name, rounds, distill_steps, seed, distill_lr, overrides, align_weight)
    if data == "synthetic":
        raw = cfg.model_dump(mode="json")
        raw["model"]["encoders"] = dict(SYNTH_ENCODERS)
        raw["data"]["image_features"] = "pixels"
        raw["federation"]["local_epochs"] = 1.0
        raw["federation"]["batch_size"] = SYNTH_BATCH
        cfg = Config.model_validate(raw)
        prep = _synthetic_prep(cfg)
    else:
        prep = prepare_data(cfg)
    t0, c0 = time.perf_counter(), time.process_time()
    result = run_hetero(cfg, prep, model_spec_for(cfg, prep.train))
    g = result.global_model
    ret = result.retrieval.get("0", {})
    return {
        "scenario": name,
        "data": data,
        "rounds": rounds,
        "seed": seed,
        "overrides": list(overrides),
        "align_weight": cfg.model.align_weight,
        "distill_steps": cfg.hetero.distill_steps,
        "distill_lr": cfg.hetero.distill_lr,
        "global_accuracy": g["accuracy"],
        "image+audio": g["subsets"]["image+audio"],
        "subsets": g["subsets"],
        "architectures": result.architectures,
        "organisations": result.organisations,
        "retrieval": result.retrieval,
        "recall@1": ret.get("recall@1"),
        "recall@10": ret.get("recall@10"),
        "history": result.history,
        "transfer_records": result.transfer_records,
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(time.process_time() - c0, 1),
    }


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["data"], r["scenario"], r["rounds"], r["seed"], r["distill_steps"],
            r.get("distill_lr", 1e-3), tuple(r.get("overrides", ())),
            r.get("align_weight") if r["scenario"].startswith("mediator") else None)  # fmt: skip


def _label(r: dict[str, Any]) -> str:
    extra = [*r.get("overrides", ())]
    if r["distill_steps"]:
        extra.insert(0, f"{r['distill_steps']} steps, lr {r.get('distill_lr', 1e-3):g}")
    if r["scenario"].startswith("mediator") and "align_weight" in r:
        extra.insert(0, f"align {r['align_weight']:g}")
    return f"{r['scenario']} ({'; '.join(extra)})" if extra else str(r["scenario"])


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| data | scenario | rounds | seed | global fused | image+audio | per-architecture "
        "fused | img↔aud R@1 | R@10 |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    order = list(SCENARIOS)
    for r in sorted(
        rows, key=lambda r: (r["data"], r["rounds"], r["seed"], order.index(r["scenario"]))
    ):
        per_arch = ", ".join(
            f"{a['encoders']['image']}: {a['accuracy']:.3f}" for a in r["architectures"]
        )
        r1 = "" if r["recall@1"] is None else f"{r['recall@1']:.3f}"
        r10 = "" if r["recall@10"] is None else f"{r['recall@10']:.3f}"
        lines.append(
            f"| {r['data']} | {_label(r)} | {r['rounds']} | {r['seed']} | {r['global_accuracy']:.3f} | "
            f"{r['image+audio']:.3f} | {per_arch} | {r1} | {r10} |"
        )
    return "\n".join(lines)


def _save(row: dict[str, Any], meta: dict[str, Any]) -> None:
    path = RESULTS / "hetero.json"
    old = json.loads(path.read_text()) if path.exists() else {"runs": []}
    runs = [r for r in old["runs"] if _key(r) != _key(row)] + [{**row, **meta}]
    path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    write_table()


def write_table() -> None:
    """Rewrite bench/results/hetero.md from hetero.json."""
    runs = json.loads((RESULTS / "hetero.json").read_text())["runs"]
    (RESULTS / "hetero.md").write_text(
        _table(runs) + "\n\nCommands: see `runs[].command` in hetero.json.\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--distill-steps", type=int, default=50)
    p.add_argument("--distill-lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--align-weight",
        type=float,
        default=None,
        help="InfoNCE weight of the aligned mediator scenarios (mediator-upper, mediator); "
        f"default {SYNTH_ALIGN_WEIGHT} on the synthetic set, baseline's on fmnist-avt",
    )
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for every scenario (a scenario's own settings win)",
    )
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    p.add_argument(
        "--data",
        nargs="+",
        default=["fmnist-avt", "synthetic"],
        choices=["fmnist-avt", "synthetic"],
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    meta = {
        "command": "bench/hetero.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    runs = [(d, n) for d in args.data for n in args.scenarios
            if d == "fmnist-avt" or n.startswith("mediator")]  # fmt: skip
    for data, name in runs:
        row = _run(name, args.rounds, args.distill_steps, args.seed, data, args.distill_lr,
                   tuple(args.set), args.align_weight)  # fmt: skip
        _save(row, meta)
        print(
            f"{data} {name}: global {row['global_accuracy']:.4f}, image+audio {row['image+audio']:.4f}, "
            f"R@10 {row['recall@10']}, cpu {row['cpu_s']} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
