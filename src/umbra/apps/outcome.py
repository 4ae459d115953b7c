"""What the deployed ServerApp leaves in the run folder for the process that launched the
run: per-round progress rows as they happen, and the final `RunResult`.

The simulation engine runs the ServerApp inside ``umbra run``'s own process, which gets
both through callbacks; on the Deployment Engine the ServerApp is a process the SuperLink
starts, so it writes them into the run folder instead: ``progress.jsonl`` (one JSON row
per round, appended and flushed) and ``outcome.json`` + ``outcome.npz`` (history, stop
reason, privacy summary; the final model's arrays).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from umbra.federation.checkpoint import atomic_write_text
from umbra.federation.server_app import RoundReport, RunResult

__all__ = [
    "OUTCOME_ARRAYS",
    "OUTCOME_FILE",
    "PROGRESS_FILE",
    "ProgressReader",
    "append_progress",
    "read_outcome",
    "write_outcome",
]

PROGRESS_FILE = "progress.jsonl"
OUTCOME_FILE = "outcome.json"
OUTCOME_ARRAYS = "outcome.npz"


def append_progress(run_dir: Path, row: RoundReport) -> None:
    """Append one round's row to ``progress.jsonl``."""
    with (run_dir / PROGRESS_FILE).open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


class ProgressReader:
    """Reads the rows appended to ``progress.jsonl`` since it was created (rows already
    there, from a run this one resumes, are skipped)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / PROGRESS_FILE
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def new_rows(self) -> list[RoundReport]:
        """Complete rows written since the last call."""
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # a row still being written waits for the next call
        self.offset += end
        return [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]


def write_outcome(run_dir: Path, result: RunResult) -> None:
    """Store ``result`` in the run folder (arrays first: the JSON file marks completion)."""
    tmp = run_dir / f".{OUTCOME_ARRAYS}"
    with tmp.open("wb") as f:
        np.savez(f, **result.arrays)  # type: ignore[arg-type]
    tmp.replace(run_dir / OUTCOME_ARRAYS)
    meta = {"history": result.history, "stopped": result.stopped, "privacy": result.privacy}
    atomic_write_text(run_dir / OUTCOME_FILE, json.dumps(meta))


def read_outcome(run_dir: Path) -> RunResult | None:
    """The `RunResult` the ServerApp stored, removing its files; None if there is none."""
    meta_path, arrays_path = run_dir / OUTCOME_FILE, run_dir / OUTCOME_ARRAYS
    if not meta_path.exists():
        return None
    meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
    with np.load(arrays_path) as z:
        arrays = {k: z[k] for k in z.files}
    meta_path.unlink()
    arrays_path.unlink()
    return RunResult(arrays=arrays, history=meta["history"], stopped=meta["stopped"],
                     privacy=meta["privacy"])  # fmt: skip
