"""Which encoders suit brought data: audio (and image) encoders on generated speech manifests.

Writes two manifests with :func:`umbra.data.spoken_words.write_spoken_words` (1,700 records
each: a spoken word, several espeak-ng voices, speeds and pitches with noise, paired with a
handwritten digit scan from scikit-learn's UCI digits; 20 % lack the image, 20 % the audio):

* ``spoken-digits``: the words "zero" … "nine";
* ``spoken-commands``: Speech Commands' ten command words ("yes", "no", "up", …),

then trains on each, through ``umbra run --set data.manifest=...`` exactly as a user would,
the ``baseline`` preset's model (hidden 32, scattering images, no privacy) with a short
federation (4 organisations, ``--rounds`` rounds of 2 local epochs), once per audio encoder
(``spectral-stats`` and the conv encoder ``audio``), per image encoder on ``spoken-digits``
(``scattering`` coefficients or the conv encoder ``image`` on pixels), and per ``--seeds``.
For contrast the same federation on 4,000 ``fmnist-avt`` records (its 1,000 test records)
with both audio encoders. Records the held-out accuracy of the audio alone, the image alone
and fused.

    .venv/bin/python bench/brought_data.py [--rounds 30] [--seeds 0 1] [--data DIR]

Writes bench/results/brought_data.json and bench/results/brought_data.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from umbra.data.spoken_words import COMMAND_WORDS, SPOKEN_WORDS, write_spoken_words

RESULTS = Path(__file__).resolve().parent / "results"
SETS = {"spoken-digits": SPOKEN_WORDS, "spoken-commands": COMMAND_WORDS}
#: The federation every run shares (on top of the ``baseline`` preset).
FEDERATION = [
    "federation.num_clients=4",
    "federation.local_epochs=2",
    "run.progress=false",
]
FMNIST = ["data.n_train=4000", "data.n_test=1000", "data.alpha=1.0"]  # the smoke preset's size


def _run(out: Path, sets: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "umbra.cli", "run", "--preset", "baseline", "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    res = json.loads((out / "results.json").read_text())
    acc = res["final"]["per_modality_accuracy"]
    return {
        "audio": round(acc["audio"], 3),
        "image": round(acc["image"], 3),
        "fused": round(acc["fused"], 3),
        "macro_f1": round(res["final"]["macro_f1"], 3),
        "n_train": res["data"]["n_train"],
        "n_test": res["data"]["n_test"],
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--data", type=Path, help="folder for the manifests (default: a temp one)")
    ap.add_argument("--no-fmnist", action="store_true", help="skip the fmnist-avt contrast")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="umbra-brought-") as tmp:
        data = args.data or Path(tmp) / "data"
        manifests, build_s = {}, {}
        for name, words in SETS.items():
            t0 = time.perf_counter()
            path = data / name / "manifest.csv"
            manifests[name] = (
                path if path.exists() else write_spoken_words(data / name, words=words)
            )
            build_s[name] = round(time.perf_counter() - t0, 1)
        plan: list[tuple[str, str, str, list[str]]] = []  # (set, image enc, audio enc, sets)
        for name, path in manifests.items():
            images = ("scattering", "image") if name == "spoken-digits" else ("scattering",)
            for image in images:
                for audio in ("spectral-stats", "audio"):
                    sets = [f"data.manifest={path}", f"model.encoders.audio={audio}"]
                    if image == "image":
                        sets += ["data.image_features=pixels", "model.encoders.image=image"]
                    plan.append((name, image, audio, sets))
        if not args.no_fmnist:
            for audio in ("spectral-stats", "audio"):
                plan.append(("fmnist-avt", "scattering", audio,
                             [*FMNIST, f"model.encoders.audio={audio}"]))  # fmt: skip
        rows = []
        for name, image, audio, sets in plan:
            for seed in args.seeds:
                full = [*sets, *FEDERATION, f"federation.rounds={args.rounds}", f"run.seed={seed}"]
                out = Path(tmp) / "runs" / f"{name}-{image}-{audio}-{seed}"
                row = {"set": name, "image_encoder": image, "audio_encoder": audio,
                       "seed": seed, **_run(out, full)}  # fmt: skip
                print(json.dumps(row), flush=True)
                rows.append(row)
    result = {
        "command": "bench/brought_data.py " + " ".join(sys.argv[1:]),
        "preset": "baseline",
        "federation": [*FEDERATION, f"federation.rounds={args.rounds}"],
        "fmnist_avt": FMNIST,
        "date": started,
        "build_s": build_s,
        "runs": rows,
        "cpus": os.cpu_count(),
        "load_average_1min_before": round(load_before, 2),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "brought_data.json").write_text(json.dumps(result, indent=2) + "\n")
    table = _table(rows, args.seeds)
    (RESULTS / "brought_data.md").write_text(
        table + f"\n\n`.venv/bin/python {result['command']}` ({started}, {os.cpu_count()} CPUs)\n"
    )
    print(table)


def _table(rows: list[dict[str, Any]], seeds: list[int]) -> str:
    """Mean over the seeds of each (set, image encoder, audio encoder)."""
    lines = [
        f"| data | image encoder | audio encoder | audio only | image only | fused "
        f"(mean of seeds {', '.join(map(str, seeds))}) |",
        "|---|---|---|---:|---:|---:|",
    ]
    keys = dict.fromkeys((r["set"], r["image_encoder"], r["audio_encoder"]) for r in rows)
    for key in keys:
        sel = [r for r in rows if (r["set"], r["image_encoder"], r["audio_encoder"]) == key]
        mean = {m: sum(r[m] for r in sel) / len(sel) for m in ("audio", "image", "fused")}
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {mean['audio']:.3f} | {mean['image']:.3f} "
            f"| {mean['fused']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
