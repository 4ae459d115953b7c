"""Loading and validating a 10,000-row multimodal manifest: first load vs cached load.

Generates, in a temporary folder, a manifest of ``--rows`` records, each with its own
PNG image (48×48 RGB, resized to 1×28×28 on load), WAV clip (1 s at 16 kHz, resampled
to 8 kHz and turned into log-mel features) and text (a distinct sentence embedded by
the bundled all-MiniLM-L6-v2), plus two tabular columns and some empty cells, then times

* the first ``load_manifest`` with an empty cache (decode every file, embed every text,
  including loading the sentence encoder), and
* a second ``load_manifest`` of the same manifest, from the content-hash cache.

On 2 cores. torch is imported before
timing (``umbra run`` has it loaded anyway); loading the sentence encoder is timed.

Besides wall-clock seconds, each load's CPU seconds (all threads of this process) and the
1-minute load average before and after it are recorded: on a shared machine the wall time
grows with the other processes' load, the CPU time much less, so the two together say
what an idle 2-core machine would see (about CPU seconds / 2 for the parallel parts).

    .venv/bin/python bench/manifest_load.py [--rows 10000]

Writes bench/results/manifest_load.json and bench/results/manifest_load.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch  # a training process has it loaded already; not timed
from PIL import Image

import umbra  # noqa: F401  (silences protobuf gencode warnings)
from umbra.data.manifest import load_manifest
from umbra.data.sources import speech, text  # noqa: F401  (imported before timing)

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_FIRST_S = 60.0
TARGET_CACHED_S = 5.0
GARMENTS = ("shirt", "coat", "sandal", "bag", "boot", "dress", "sneaker", "trouser")
COLOURS = ("red", "blue", "black", "white", "green", "grey", "brown", "beige")


def generate(root: Path, rows: int, seed: int = 0) -> Path:
    """Write ``rows`` records (distinct files and texts) and their manifest under ``root``."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    (root / "wav").mkdir()
    t = np.arange(16_000) / 16_000
    out = []
    for i in range(rows):
        label = i % len(GARMENTS)
        img = rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
        Image.fromarray(img, "RGB").save(root / "img" / f"{i}.png", compress_level=1)
        hz = 200 + 40 * label + rng.uniform(-10, 10)
        wave = 0.3 * np.sin(2 * np.pi * hz * t) + 0.01 * rng.standard_normal(len(t))
        sf.write(root / "wav" / f"{i}.wav", wave.astype(np.float32), 16_000, subtype="PCM_16")
        sentence = (
            f"record {i}: a {COLOURS[i % len(COLOURS)]} {GARMENTS[label]} "
            f"seen in store {i % 97}, size {rng.integers(30, 50)}"
        )
        out.append(
            [
                f"r{i}",
                f"org{i % 8}",
                GARMENTS[label],
                f"img/{i}.png" if i % 10 != 1 else "",
                f"wav/{i}.wav" if i % 10 != 2 else "",
                sentence if i % 10 != 3 else "",
                f"{rng.normal(70, 10):.2f}",
                f"{rng.normal(36.8, 0.4):.2f}",
            ]
        )
    path = root / "manifest.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "client", "label", "image", "audio", "text", "tab:hr", "tab:temp"])
        w.writerows(out)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="umbra-manifest-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        path = generate(root / "data", args.rows)
        gen_s = time.perf_counter() - t0
        cache = root / "cache"
        load_before = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        first = load_manifest(path, cache_dir=cache)
        first_s, first_cpu = time.perf_counter() - t0, time.process_time() - c0
        load_between = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        second = load_manifest(path, cache_dir=cache)
        cached_s, cached_cpu = time.perf_counter() - t0, time.process_time() - c0
        for m in first.data.modalities:
            assert np.array_equal(first.data.features[m], second.data.features[m]), m
        counts = first.data.counts()
        cache_mb = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 1e6
    result = {
        "rows": args.rows,
        "present": counts,
        "generate_s": round(gen_s, 2),
        "first_load_s": round(first_s, 2),
        "cached_load_s": round(cached_s, 2),
        "first_load_cpu_s": round(first_cpu, 2),
        "cached_load_cpu_s": round(cached_cpu, 2),
        "first_phases_s": first.timings,
        "cached_phases_s": second.timings,
        "first_vs_target": round(first_s / TARGET_FIRST_S, 3),
        "cached_vs_target": round(cached_s / TARGET_CACHED_S, 3),
        "cache_mb": round(cache_mb, 1),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min_before_first": round(load_before, 2),
        "load_average_1min_after_first": round(load_between, 2),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "manifest_load.json").write_text(json.dumps(result, indent=2) + "\n")
    table = "\n".join(
        [
            f"| {args.rows:,}-row manifest (image+audio+text+tabular) "
            "| seconds | CPU seconds | target | ratio |",
            "|---|---:|---:|---:|---:|",
            f"| first load (empty cache) | {first_s:.1f} | {first_cpu:.1f} "
            f"| {TARGET_FIRST_S:.0f} | {first_s / TARGET_FIRST_S:.2f} |",
            f"| cached load | {cached_s:.2f} | {cached_cpu:.2f} | {TARGET_CACHED_S:.0f} | "
            f"{cached_s / TARGET_CACHED_S:.2f} |",
        ]
    )
    note = (
        f"{os.cpu_count()} CPUs, 1-min load average {load_before:.1f} before the first load, "
        f"{load_between:.1f} after it, {result['load_average_1min_at_end']:.1f} at the end."
    )
    (RESULTS / "manifest_load.md").write_text(
        table + f"\n\n{note}\n\n`.venv/bin/python bench/manifest_load.py`\n"
    )
    print(json.dumps(result, indent=2))
    print(table)
    print(note)


if __name__ == "__main__":
    main()
