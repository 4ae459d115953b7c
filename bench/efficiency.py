"""Communication efficiency of federated training.

``lora``: the text modality through the real pretrained all-MiniLM-L6-v2 with LoRA
adapters (``model.encoders.text = "minilm-lora"``) against the same transformer fully
fine-tuned (``"minilm"``) and against the frozen, cached sentence embeddings (the default
``"text"`` encoder), on the same records, seed and rounds, through Umbra's Flower
simulation. Two setups: ``text`` (a text-only manifest of fmnist-avt's descriptions and
labels: the model is the text encoder, projection and head) and ``fused`` (fmnist-avt:
image + audio + text). ``bytes/round/client`` is the mean serialized reply a client sent
(results.json's ``bytes_per_client``: real Flower messages); accuracy is on the held-out
records; ``s/round`` is the mean round wall time on this machine. CPU transformer training
is slow, so the configuration is small (few clients and records, short token sequences,
few rounds) and stated in the output:

    .venv/bin/python bench/efficiency.py lora [--n-train 600 --n-test 200 --clients 2
        --rounds 2 --tokens 16 --batch 8]

Writes bench/results/efficiency_lora.json and bench/results/efficiency_lora.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import umbra  # noqa: F401
from umbra.config import load_config
from umbra.experiment import run_experiment

#: Text encoders compared: frozen cached embeddings, LoRA on MiniLM, MiniLM fully tuned.
LORA_ENCODERS = ("text", "minilm-lora", "minilm")
LORA_SETUPS = ("text", "fused")


def lora_text_manifest(folder: Path, *, n_train: int, n_test: int, seed: int) -> Path:
    """A text-only manifest (``text``, ``label``) of the fmnist-avt records of this size:
    the same descriptions and labels the fused setup trains and tests on."""
    from umbra.data.cache import resolve_cache_dir
    from umbra.data.sources.avt import (
        DEFAULT_AUDIO_SNR_DB,
        DEFAULT_TEXT_UNINFORMATIVE,
        avt_cache_path,
        load_fmnist_avt,
    )
    from umbra.data.sources.fmnist import CLASS_NAMES
    from umbra.data.text_tokens import fmnist_avt_texts

    train, test = load_fmnist_avt(n_train=n_train, n_test=n_test, seed=seed)
    path = avt_cache_path(resolve_cache_dir(None), n_train=n_train, n_test=n_test, seed=seed,
                          text_uninformative=DEFAULT_TEXT_UNINFORMATIVE,
                          audio_snr_db=DEFAULT_AUDIO_SNR_DB)  # fmt: skip
    texts = [t for split in fmnist_avt_texts(path) for t in split]
    labels = np.concatenate([train.labels, test.labels])
    out = folder / "texts.csv"
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        for t, y in zip(texts, labels, strict=True):
            w.writerow([CLASS_NAMES[int(y)], t])
    return out


def lora_run(encoder: str, setup: str, args: argparse.Namespace, manifest: Path) -> dict[str, Any]:
    """One run; its bytes per round per client, accuracies and round time."""
    overrides = [
        f"model.encoders={{text=\"{encoder}\"}}", f"model.text_tokens={args.tokens}",
        f"federation.num_clients={args.clients}", f"federation.rounds={args.rounds}",
        "federation.local_epochs=1", f"federation.batch_size={args.batch}",
        f"federation.lr={args.lr}",
        "data.partition=iid", "data.missing={}",
        f"run.eval_every={args.rounds}", "run.progress=false", f"run.seed={args.seed}",
    ]  # fmt: skip
    if setup == "text":
        test_fraction = args.n_test / (args.n_train + args.n_test)
        overrides += [f"data.manifest={manifest}", f"data.test_fraction={test_fraction}"]
    else:
        overrides += [f"data.n_train={args.n_train}", f"data.n_test={args.n_test}"]
    cfg = load_config("smoke", overrides=overrides)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = run_experiment(cfg, Path(tmp) / "run")
    ups = [int(c["up"]) for r in res["rounds"] for c in r["bytes_per_client"].values()]
    final = res["final"]
    return {
        "setup": setup,
        "encoder": encoder,
        "lr": args.lr,
        "bytes_per_round_per_client": float(np.mean(ups)),
        "accuracy": float(final["accuracy"]),
        "text_accuracy": float(final["per_modality_accuracy"].get("text", final["accuracy"])),
        "s_per_round": float(np.mean([float(r["wall_s"]) for r in res["rounds"]])),
        "total_s": time.perf_counter() - t0,
        "load_average_1m": os.getloadavg()[0],
    }


def lora_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: each run's bytes against the fully fine-tuned MiniLM of its setup."""
    full = {r["setup"]: r for r in rows if r["encoder"] == "minilm"}
    out = ["| setup | text encoder | lr | bytes/round/client | vs full fine-tuning "
           "| text-only acc. | fused acc. | s/round |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        ref, mb = full.get(r["setup"]), r["bytes_per_round_per_client"] / 1e6
        smaller = "–"
        if ref is not None and r["encoder"] != "minilm":
            smaller = f"{100 * (1 - mb * 1e6 / ref['bytes_per_round_per_client']):.2f} % smaller"
        fused = f"{r['accuracy']:.3f}" if r["setup"] == "fused" else "–"
        out.append(f"| {r['setup']} | {r['encoder']} | {r.get('lr', 0.05)} | {mb:.3f} MB | {smaller}"
                   f" | {r['text_accuracy']:.3f} | {fused} | {r['s_per_round']:.0f} |")  # fmt: skip
    return "\n".join(out)


def lora_main(args: argparse.Namespace) -> None:
    """Every (setup, encoder) run at ``--lr``, written after each one (a long run keeps what
    it has); rows of other learning rates already in the JSON file for the same
    configuration are kept."""
    keys = ("n_train", "n_test", "clients", "rounds", "tokens", "batch", "seed")
    conf = {k: getattr(args, k) for k in keys}
    path = args.out / "efficiency_lora.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    rows: list[dict[str, Any]] = [
        r
        for r in old.get("rows", [])
        if old.get("config") == conf
        and not (
            r["setup"] in args.setups
            and r["encoder"] in args.encoders
            and r.get("lr", 0.05) == args.lr
        )
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = lora_text_manifest(Path(tmp), n_train=args.n_train, n_test=args.n_test,
                                      seed=args.seed)  # fmt: skip
        for setup in args.setups:
            for encoder in args.encoders:
                rows.append(lora_run(encoder, setup, args, manifest))
                print(rows[-1], flush=True)
                path.write_text(json.dumps({"config": conf, "rows": rows}, indent=2))
                (args.out / "efficiency_lora.md").write_text(
                    f"config: {json.dumps(conf)}, local_epochs 1, SGD momentum 0.9, iid\n\n"
                    + lora_table(rows) + "\n"
                )  # fmt: skip
    print(lora_table(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="part", required=True)
    lora = sub.add_parser("lora", help="LoRA on MiniLM vs full fine-tuning vs frozen embeddings")
    lora.add_argument("--n-train", type=int, default=600)
    lora.add_argument("--n-test", type=int, default=200)
    lora.add_argument("--clients", type=int, default=2)
    lora.add_argument("--rounds", type=int, default=2)
    lora.add_argument("--tokens", type=int, default=16, help="model.text_tokens")
    lora.add_argument("--batch", type=int, default=8, help="federation.batch_size")
    lora.add_argument("--lr", type=float, default=0.05, help="federation.lr (client SGD)")
    lora.add_argument("--seed", type=int, default=0)
    lora.add_argument("--setups", nargs="*", default=list(LORA_SETUPS), choices=LORA_SETUPS)
    lora.add_argument("--encoders", nargs="*", default=list(LORA_ENCODERS), choices=LORA_ENCODERS)
    lora.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    if args.part == "lora":
        lora_main(args)


if __name__ == "__main__":
    main()
