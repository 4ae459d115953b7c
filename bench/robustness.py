"""Every aggregator against poisoning organisations: clean, 20 % sign-flip, 20 % scaling.

The ``baseline`` preset's model and data pipeline (scattering images, spectral-stats
audio, no privacy) on a smaller federation so that the whole grid finishes in minutes on
two shared cores: ``--n-train`` records (``--n-test`` held out) over 15 organisations,
``--rounds`` rounds of ``--epochs`` local epochs, at Dirichlet α = 0.5 (the preset's) and
α = 0.1 (strong label skew). 20 % of 15 = 3 attackers (drawn from ``run.seed``), and the
robust rules assume f = 3 (Bulyan's bound 4f + 3 = 15 is met exactly). The scaling
attackers send 10 · Δ. Screening (``federation.detect``) runs in every run, so each row
also says how well it found the attackers.

Each federation runs through the real ClientApp and round loop on an in-process Grid
(no Ray workers: the rounds are what is measured), one after the other:

    .venv/bin/python bench/robustness.py [--rounds 4] [--n-train 3000] [--alphas 0.5 0.1]

Writes bench/results/robustness.json and bench/results/robustness.md (the table).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from umbra.config import Config, load_config
from umbra.federation.attacks import AttackSpec
from umbra.federation.client_app import ClientSpec, make_client_app
from umbra.federation.client_data import write_federation_data
from umbra.federation.common import SecureSettings
from umbra.federation.detection import detection_quality
from umbra.federation.server_app import ServerSpec, load_model, run_rounds
from umbra.federation.strategies import AGGREGATORS
from umbra.run.prepare import PreparedData, model_spec_for, prepare_data
from umbra.run.results import final_metrics
from umbra.run.simulation import train_settings

RESULTS = Path(__file__).resolve().parent / "results"
CLIENTS = 15
BYZANTINE = 3
ATTACKS: dict[str, list[str]] = {
    "clean": [],
    "sign-flip": ["attack.kind=sign-flip", "attack.fraction=0.2"],
    "scale": ["attack.kind=scale", "attack.fraction=0.2", "attack.scale=10"],
}


class InProcessGrid:
    """The real ClientApp answering in this process, one node per partition."""

    def __init__(self, app: Any, num_nodes: int) -> None:
        self.app = app
        self.node_ids = [1000 + i for i in range(num_nodes)]
        self.contexts = {
            node: Context(run_id=1, node_id=node, node_config={"partition-id": i},
                          state=RecordDict(), run_config={})
            for i, node in enumerate(self.node_ids)
        }  # fmt: skip

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def send_and_receive(
        self, messages: Iterable[Message], timeout: float | None = None
    ) -> list[Message]:
        return [self.app(m, self.contexts[m.metadata.dst_node_id]) for m in messages]


def _config(args: argparse.Namespace, alpha: float, aggregator: str, attack: str) -> Config:
    return load_config("baseline", overrides=[
        f"data.n_train={args.n_train}", f"data.n_test={args.n_test}", f"data.alpha={alpha}",
        f"federation.num_clients={CLIENTS}", f"federation.rounds={args.rounds}",
        f"federation.local_epochs={args.epochs}", f"federation.aggregator={aggregator}",
        f"federation.byzantine={BYZANTINE}", "federation.trim_fraction=0.2",
        "federation.detect=true", "run.progress=false", *ATTACKS[attack],
    ])  # fmt: skip


def _federate(cfg: Config, prep: PreparedData, root: Path) -> dict[str, Any]:
    write_federation_data(root / "train", prep.train, prep.parts, prep.masks)
    model_spec = model_spec_for(cfg, prep.train)
    app = make_client_app(ClientSpec(
        data_dir=str(root / "train"), state_dir=str(root / "state"), model_spec=model_spec,
        settings=train_settings(cfg), seed=cfg.run.seed, attack=AttackSpec.from_config(cfg),
    ))  # fmt: skip
    spec = ServerSpec.from_config(cfg, run_dir=str(root / "run"), test_dir=str(root / "test"),
                                  model_spec=model_spec, secure=SecureSettings(),
                                  transport=None)  # fmt: skip
    t0 = time.perf_counter()
    result = run_rounds(spec, cast(Grid, InProcessGrid(app, cfg.federation.num_clients)))
    train_s = time.perf_counter() - t0
    model = load_model(model_spec, result.arrays)
    final = final_metrics(model, prep.test)
    attackers = AttackSpec.from_config(cfg).attackers
    screened = [(r["screened"], r["flagged"]) for r in result.history if "screened" in r]
    detection = detection_quality(screened, attackers)
    return {
        "accuracy": final["accuracy"],
        "macro_f1": final["macro_f1"],
        "per_round": [r.get("accuracy") for r in result.history],
        "attackers": list(attackers),
        "precision": detection.get("precision"),
        "recall": detection.get("recall"),
        "false_positives": detection.get("false_positives"),
        "train_s": round(train_s, 1),
    }


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def table(doc: dict[str, Any]) -> str:
    """The markdown table of a robustness.json document."""
    lines = [
        f"Fused test accuracy after {doc['rounds']} rounds ({doc['clients']} organisations, "
        f"{doc['n_train']} training records, f = {doc['byzantine']}). In brackets, screening "
        "over client-rounds: precision / recall against the attackers; on clean runs the "
        "honest client-rounds flagged (FP).",
        "",
    ]
    for alpha in doc["alphas"]:
        rows = [r for r in doc["rows"] if r["alpha"] == alpha]
        lines += [f"**Dirichlet α = {alpha}**", "",
                  "| aggregator | clean | 20 % sign-flip | 20 % scale ×10 |", "|---|---:|---:|---:|"]  # fmt: skip
        for agg in doc["aggregators"]:
            cells = []
            for attack in ATTACKS:
                r = next(
                    (r for r in rows if r["aggregator"] == agg and r["attack"] == attack), None
                )
                if r is None:
                    cells.append("")
                elif attack == "clean":  # screening can only be wrong here
                    cells.append(f"{r['accuracy']:.3f} ({r['false_positives']} FP)")
                else:
                    cells.append(
                        f"{r['accuracy']:.3f} ({_fmt(r['precision'])} / {_fmt(r['recall'])})"
                    )
            lines.append(f"| {agg} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.1])
    ap.add_argument("--aggregators", nargs="+", default=list(AGGREGATORS))
    ap.add_argument("--attacks", nargs="+", default=list(ATTACKS))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    logging.getLogger("flwr").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    doc: dict[str, Any] = {
        "preset": "baseline", "n_train": args.n_train, "n_test": args.n_test,
        "clients": CLIENTS, "byzantine": BYZANTINE, "rounds": args.rounds, "epochs": args.epochs,
        "alphas": args.alphas, "aggregators": args.aggregators,
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.machine(),
        "rows": [],
    }  # fmt: skip
    t_all = time.perf_counter()
    for alpha in args.alphas:
        prep = prepare_data(_config(args, alpha, "mean", "clean"))
        with tempfile.TemporaryDirectory() as tmp:
            write_federation_data(Path(tmp) / "test", prep.test, [np.arange(len(prep.test))],
                                  [prep.test.mask])  # fmt: skip
            for attack in args.attacks:
                for agg in args.aggregators:
                    cfg = _config(args, alpha, agg, attack)
                    run_root = Path(tmp) / f"{agg}-{attack}"
                    (run_root).mkdir()
                    (run_root / "test").symlink_to(Path(tmp) / "test")
                    row = {"alpha": alpha, "aggregator": agg, "attack": attack,
                           **_federate(cfg, prep, run_root)}  # fmt: skip
                    doc["rows"].append(row)
                    _write(args.out, doc)  # a partial grid survives an interrupted run
                    print(f"α={alpha} {attack:9s} {agg:12s} acc {row['accuracy']:.3f} "
                          f"P/R {_fmt(row['precision'])}/{_fmt(row['recall'])} "
                          f"({row['train_s']} s)", flush=True)  # fmt: skip
    doc["total_s"] = round(time.perf_counter() - t_all, 1)
    _write(args.out, doc)
    print(table(doc))


def _write(out: Path, doc: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "robustness.md").write_text(table(doc) + "\n")


if __name__ == "__main__":
    main()
