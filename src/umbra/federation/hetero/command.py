"""``umbra hetero``: run a heterogeneous federation in process and write ``hetero.json``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from umbra.config import Config
from umbra.federation.checkpoint import atomic_write_text
from umbra.federation.hetero.federation import HeteroResult, check_hetero_config, run_hetero
from umbra.run.prepare import model_spec_for, prepare_data

__all__ = ["RESULT_FILE", "hetero_run"]

#: The results file of ``umbra hetero`` in its output folder.
RESULT_FILE = "hetero.json"


def hetero_run(
    cfg: Config, out: Path, *, say: Callable[[str], None] = lambda s: None
) -> HeteroResult:
    """Prepare ``cfg``'s data, run the heterogeneous federation, write ``out/hetero.json``
    (the resolved config beside the results) and return the results."""
    check_hetero_config(cfg)  # before any data is loaded
    torch.set_num_threads(cfg.run.threads)
    say(f"preparing data ({cfg.data.source})")
    prep = prepare_data(cfg)
    spec = model_spec_for(cfg, prep.train)

    def on_round(row: dict[str, Any]) -> None:
        say(f"round {row['round']}: global accuracy {row['accuracy']:.4f}")

    result = run_hetero(cfg, prep, spec, on_round=on_round)
    out.mkdir(parents=True, exist_ok=True)
    body = {"config": cfg.model_dump(mode="json"), **result.to_dict()}
    atomic_write_text(out / RESULT_FILE, json.dumps(body, indent=2))
    return result
