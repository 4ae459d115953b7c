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
        [--sets spoken-digits spoken-commands fmnist-avt] [--image-encoders scattering image]

Each finished run is merged into bench/results/brought_data.json at once (keyed by data,
encoders, seed and rounds, with the command that made it), so that runs of a few sets at a
time add up; bench/results/brought_data.md is the table of the whole file.
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
RESULT = RESULTS / "brought_data.json"
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


def _save(rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Merge ``rows`` into the result file (a later run of the same key replaces it)."""
    old = json.loads(RESULT.read_text()) if RESULT.exists() else {"runs": []}
    key = ("set", "image_encoder", "audio_encoder", "seed", "rounds")
    fresh = {tuple(r[k] for k in key) for r in rows}
    kept = [r for r in old["runs"] if tuple(r.get(k) for k in key) not in fresh]
    RESULTS.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps({**meta, "runs": kept + rows}, indent=2) + "\n")
    (RESULTS / "brought_data.md").write_text(
        _table(kept + rows) + f"\n\nCommands: see `runs[].command` in brought_data.json "
        f"({meta['cpus']} CPUs, {meta['machine']}).\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--data", type=Path, help="folder for the manifests (default: a temp one)")
    ap.add_argument("--sets", nargs="+", default=[*SETS, "fmnist-avt"],
                    choices=[*SETS, "fmnist-avt"])  # fmt: skip
    ap.add_argument("--image-encoders", nargs="+", default=["scattering", "image"],
                    choices=["scattering", "image"], help="on spoken-digits")  # fmt: skip
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = "bench/brought_data.py " + " ".join(sys.argv[1:])
    meta = {
        "preset": "baseline",
        "federation": FEDERATION,
        "fmnist_avt": FMNIST,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="umbra-brought-") as tmp:
        data = args.data or Path(tmp) / "data"
        plan: list[tuple[str, str, str, list[str]]] = []  # (set, image enc, audio enc, sets)
        for name, words in SETS.items():
            if name not in args.sets:
                continue
            path = data / name / "manifest.csv"
            t0 = time.perf_counter()
            if not path.exists():
                write_spoken_words(data / name, words=words)
                print(f"{name}: built in {time.perf_counter() - t0:.1f} s", flush=True)
            images = args.image_encoders if name == "spoken-digits" else ["scattering"]
            for image in images:
                for audio in ("spectral-stats", "audio"):
                    sets = [f"data.manifest={path}", f"model.encoders.audio={audio}"]
                    if image == "image":
                        sets += ["data.image_features=pixels", "model.encoders.image=image"]
                    plan.append((name, image, audio, sets))
        if "fmnist-avt" in args.sets:
            for audio in ("spectral-stats", "audio"):
                plan.append(("fmnist-avt", "scattering", audio,
                             [*FMNIST, f"model.encoders.audio={audio}"]))  # fmt: skip
        for name, image, audio, sets in plan:
            for seed in args.seeds:
                full = [*sets, *FEDERATION, f"federation.rounds={args.rounds}", f"run.seed={seed}"]
                out = Path(tmp) / "runs" / f"{name}-{image}-{audio}-{seed}"
                load = os.getloadavg()[0]
                row = {"set": name, "image_encoder": image, "audio_encoder": audio,
                       "seed": seed, "rounds": args.rounds, **_run(out, full),
                       "load_average_1min_before": round(load, 2),
                       "date": datetime.now(UTC).isoformat(timespec="seconds"),
                       "command": command}  # fmt: skip
                print(json.dumps(row), flush=True)
                rows.append(row)
                _save(rows, meta)
    print((RESULTS / "brought_data.md").read_text())


def _table(rows: list[dict[str, Any]]) -> str:
    """Mean over the seeds of each (set, image encoder, audio encoder, rounds)."""
    lines = [
        "| data | image encoder | audio encoder | rounds | seeds | audio only | image only "
        "| fused |",
        "|---|---|---|---:|---|---:|---:|---:|",
    ]
    keys = dict.fromkeys(
        (r["set"], r["image_encoder"], r["audio_encoder"], r["rounds"]) for r in rows
    )
    for key in keys:
        sel = [
            r
            for r in rows
            if (r["set"], r["image_encoder"], r["audio_encoder"], r["rounds"]) == key
        ]
        mean = {m: sum(r[m] for r in sel) / len(sel) for m in ("audio", "image", "fused")}
        seeds = ", ".join(str(r["seed"]) for r in sel)
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {seeds} | {mean['audio']:.3f} "
            f"| {mean['image']:.3f} | {mean['fused']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
