"""Every aggregator against poisoning organisations on the ``baseline`` preset, plus a
backdoor against no defence, norm clipping and DP, and screening's
precision and recall for every attack.

The ``baseline`` preset's data and model (48,000 training records, scattering images,
spectral-stats audio, no privacy) over ``--clients`` organisations (15: 20 % is 3
attackers, and Bulyan's n ≥ 4f + 3 holds with f = 3 exactly), ``--rounds`` rounds of
``--epochs`` local epochs, at Dirichlet α = 0.5 (the preset's) and α = 0.1 (strong label
skew). The grid: each defence of :data:`DEFENCES` (every robust rule, centered clipping
and bucketing, the mean with update norms clipped at the round's median, and the
per-client reputation that leaves persistent outliers out, alone, with clipping and with
its response rule) × {clean, 20 % sign-flip, 20 % scaling ×10}. ``--set KEY=VALUE`` adds
config overrides to every federation of a run (tuning; recorded in the rows).
The extras (at the first α): 20 % label-flip, and a 20 % backdoor (image trigger → class
0) against the mean, the mean with median clipping, client-level DP at ε = 3 and
example-level DP-SGD at ε = 3 (the ``default`` preset's tuned settings).
Screening (``federation.detect``) runs wherever the configuration allows it (not with
client-level DP), so each row also says how well it found the attackers. The attackers
are drawn from ``run.seed``, the same ones in every row.

Each federation runs through the real ClientApp and round loop on an in-process Grid
(no Ray workers: the rounds are what is measured), one after the other:

    .venv/bin/python bench/robustness.py [--rounds 8] [--epochs 0.25] [--alphas 0.5 0.1]

Parts of the grid can run in parallel processes (``--alphas 0.1 --extras --out DIR``)
and be combined with ``--merge A.json B.json``. Writes bench/results/robustness.json and
bench/results/robustness.md (the tables).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.supercore.task_identity import TaskIdentity

from umbra.config import Config, load_config
from umbra.federation.attacks import AttackSpec, backdoor_success_rate
from umbra.federation.client_app import ClientSpec, make_client_app
from umbra.federation.client_data import write_federation_data
from umbra.federation.common import SecureSettings
from umbra.federation.detection import detection_quality
from umbra.federation.in_process_grid import InProcessGrid
from umbra.federation.server_app import ServerSpec, load_model, run_rounds
from umbra.models import MultimodalNet
from umbra.run.prepare import PreparedData, model_spec_for, prepare_data
from umbra.run.results import final_metrics
from umbra.run.simulation import train_settings

RESULTS = Path(__file__).resolve().parent / "results"
#: defence name -> config overrides (robust rules assume f = --byzantine)
DEFENCES: dict[str, list[str]] = {
    "mean": [],
    "mean + clip": ['federation.clip_updates="median"'],
    "median": ['federation.aggregator="median"'],
    "trimmed-mean": ['federation.aggregator="trimmed-mean"'],
    "krum": ['federation.aggregator="krum"'],
    "multi-krum": ['federation.aggregator="multi-krum"'],
    "bulyan": ['federation.aggregator="bulyan"'],
    "reputation": ["federation.reputation=true"],  # + the f lowest mean cosines left out
    "reputation, outliers only": ["federation.reputation=true", "federation.byzantine=0"],
    "reputation + clip": ["federation.reputation=true", 'federation.clip_updates="median"'],
    # the outlier rules plus the response rule: a mean response to the others' step >= 0
    "reputation, response": ["federation.reputation=true", "federation.byzantine=0",
                             "federation.reputation_max_response=0.0"],
    # the same without the cosine outlier rule: judged by response and norm only
    "response + norm": ["federation.reputation=true", "federation.byzantine=0",
                        "federation.reputation_max_response=0.0",
                        "federation.reputation_cosine_outliers=false"],
    # the response rule's exclusions with centered clipping as the rule (bounds everyone
    # during the warm-up rounds)
    "centered-clip + response": ['federation.aggregator="centered-clip"',
                                 "federation.reputation=true", "federation.byzantine=0",
                                 "federation.reputation_max_response=0.0",
                                 "federation.reputation_cosine_outliers=false"],
    # centered clipping around the previous aggregate (β = 0: the updates, τ = the median
    # distance, one iteration: the defaults, tuned at seed 0), and with the paper's β
    "centered-clip": ['federation.aggregator="centered-clip"'],
    "centered-clip, β = 0.9": ['federation.aggregator="centered-clip"',
                               "federation.centered_clip_beta=0.9"],
    "centered-clip, β = 0.5": ['federation.aggregator="centered-clip"',
                               "federation.centered_clip_beta=0.5"],
    "centered-clip, 3 iterations": ['federation.aggregator="centered-clip"',
                                    "federation.centered_clip_iterations=3"],
    "centered-clip + buckets of 2": ['federation.aggregator="centered-clip"',
                                     "federation.bucket_size=2"],
    "centered-clip + buckets of 2, β = 0.9": ['federation.aggregator="centered-clip"',
                                              "federation.bucket_size=2",
                                              "federation.centered_clip_beta=0.9"],
    # 15 updates make 8 buckets; f = 3 spoiled buckets of 8 to cut at each end: 3/8
    "trimmed-mean + buckets of 2": ['federation.aggregator="trimmed-mean"',
                                    "federation.bucket_size=2", "federation.trim_fraction=0.375"],
}  # fmt: skip
#: the backdoor's defences: none, norm clipping, client-level DP (no screening there) and
#: the `default` preset's tuned example-level DP-SGD (each organisation's own noise)
BACKDOOR_DEFENCES: dict[str, list[str]] = {
    "none": [],
    "clipping": ['federation.clip_updates="median"'],
    "client-level DP": ['privacy.mode="client"', "privacy.epsilon=3.0", "federation.detect=false"],
    "DP-SGD": [
        'privacy.mode="example"', "privacy.epsilon=3.0", "privacy.batch_size=512",
        "privacy.lr=1.0", "privacy.momentum=0.0",
        "privacy.weights={ image = 1.5, audio = 1.0, text = 0.75, shared = 1.0 }",
        "privacy.clip_norms={ image = 0.5, audio = 0.6, text = 0.35, shared = 1.0 }",
    ],
}  # fmt: skip
ATTACKS: dict[str, list[str]] = {
    "clean": [],
    "sign-flip": ['attack.kind="sign-flip"', "attack.fraction=0.2"],
    "scale": ['attack.kind="scale"', "attack.fraction=0.2", "attack.scale=10"],
    "label-flip": ['attack.kind="label-flip"', "attack.fraction=0.2"],
    "backdoor": ['attack.kind="backdoor"', "attack.fraction=0.2"],
}
GRID_ATTACKS = ("clean", "sign-flip", "scale")


def _config(args: argparse.Namespace, alpha: float, overrides: list[str]) -> Config:
    return load_config("baseline", overrides=[
        f"data.n_train={args.n_train}", f"data.n_test={args.n_test}", f"data.alpha={alpha}",
        f"federation.num_clients={args.clients}", f"federation.rounds={args.rounds}",
        f"federation.local_epochs={args.epochs}", f"federation.byzantine={args.byzantine}",
        "federation.trim_fraction=0.2", "federation.detect=true", "run.progress=false",
        f"run.seed={args.seed}", *overrides,
    ])  # fmt: skip


def _federate(cfg: Config, prep: PreparedData, root: Path) -> dict[str, Any]:
    write_federation_data(root / "train", prep.train, prep.parts, prep.masks)
    model_spec = model_spec_for(cfg, prep.train)
    attack = AttackSpec.from_config(cfg)
    app = make_client_app(ClientSpec(
        data_dir=str(root / "train"), state_dir=str(root / "state"), model_spec=model_spec,
        settings=train_settings(cfg), seed=cfg.run.seed, attack=attack,
        privacy_unit=cfg.privacy.mode,
    ))  # fmt: skip
    spec = ServerSpec.from_config(cfg, run_dir=str(root / "run"), test_dir=str(root / "test"),
                                  model_spec=model_spec, secure=SecureSettings(),
                                  transport=None)  # fmt: skip
    t0 = time.perf_counter()
    result = run_rounds(
        spec, InProcessGrid(app, [1000 + i for i in range(cfg.federation.num_clients)]).as_grid()
    )
    train_s = time.perf_counter() - t0
    model = load_model(model_spec, result.arrays)
    final = final_metrics(model, prep.test)
    screened = [(r["screened"], r["flagged"]) for r in result.history if "screened" in r]
    detection = detection_quality(screened, attack.attackers) if screened else {}
    left_out = [(r["screened"], r["excluded"]) for r in result.history if "excluded" in r]
    history = detection_quality(left_out, attack.attackers) if left_out else {}
    row: dict[str, Any] = {
        "accuracy": final["accuracy"],
        "macro_f1": final["macro_f1"],
        "per_round": [r.get("accuracy") for r in result.history],
        "attackers": list(attack.attackers),
        "precision": detection.get("precision"),
        "recall": detection.get("recall"),
        "false_positives": detection.get("false_positives"),
        "train_s": round(train_s, 1),
    }
    if history:  # federation.reputation: exclusions over client-rounds
        row["excluded_precision"] = history.get("precision")
        row["excluded_recall"] = history.get("recall")
        row["excluded_false_positives"] = history.get("false_positives")
        row["excluded_final"] = left_out[-1][1]
        row["reputation_final"] = result.history[-1].get("reputation")
    if attack.kind in ("backdoor", "none") and isinstance(model, MultimodalNet):
        # on an unpoisoned model: how often the trigger alone lands on the target (control)
        probe = attack if attack.kind == "backdoor" else replace(attack, kind="backdoor")
        row["backdoor_success"], row["backdoor_records"] = backdoor_success_rate(
            model, prep.test, probe
        )
    if result.privacy is not None:
        eps = result.privacy.get("epsilon")
        row["epsilon"] = eps.get("total") if isinstance(eps, dict) else eps
    return row


def _length(row: dict[str, Any]) -> str:
    """A row's training length: records, rounds and local epochs."""
    return f"{row['n_train']:,} records, {row['rounds']} rounds of {row['epochs']} epochs"


def _short(row: dict[str, Any]) -> str:
    """``40 × 0.5`` (rounds × local epochs), with the seed where it is not 0."""
    seed = row.get("seed", 0)
    return f"{row['rounds']} × {row['epochs']}" + (f", seed {seed}" if seed else "")


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _setting(row: dict[str, Any]) -> tuple[Any, ...]:
    """What a row's accuracy is comparable within: α, training length and seed."""
    return (row["alpha"], row["n_train"], row["rounds"], row["epochs"], row.get("seed", 0))


def _settings(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The settings of the grid's rows, in the order they first appear."""
    return list(dict.fromkeys(_setting(r) for r in doc["rows"] if r["attack"] in GRID_ATTACKS))


def _find(doc: dict[str, Any], **want: Any) -> dict[str, Any] | None:
    return next((r for r in doc["rows"] if all(r.get(k) == v for k, v in want.items())), None)


def table(doc: dict[str, Any]) -> str:
    """The markdown tables of a robustness.json document."""
    lines = [
        f"`baseline` data and model over {doc['clients']} organisations, robust rules sized "
        f"for f = {doc['byzantine']}; 20 % = {doc['byzantine']} attackers. Fused test "
        "accuracy; in brackets the change against the clean mean of the same α.",
        "",
    ]
    for setting in _settings(doc):
        where = dict(zip(("alpha", "n_train", "rounds", "epochs", "seed"), setting, strict=True))
        clean = _find(doc, **where, defence="mean", attack="clean")
        ref = clean["accuracy"] if clean else None
        first = next(r for r in doc["rows"] if _setting(r) == setting)
        seed = f", seed {where['seed']}" if where["seed"] else ""
        lines += [f"**Dirichlet α = {where['alpha']}** ({_length(first)}{seed})", "",
                  "| defence | clean | 20 % sign-flip | 20 % scale ×10 |", "|---|---:|---:|---:|"]  # fmt: skip
        for name in doc["defences"]:
            cells = []
            for attack in GRID_ATTACKS:
                r = _find(doc, **where, defence=name, attack=attack)
                if r is None:
                    cells.append("")
                elif ref is None:
                    cells.append(f"{r['accuracy']:.3f}")
                else:
                    cells.append(f"{r['accuracy']:.3f} ({100 * (r['accuracy'] - ref):+.1f})")
            if any(cells):
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    det = [r for r in doc["rows"] if r["attack"] != "clean" and r.get("recall") is not None
           and r["defence"] in ("mean", "none")]  # fmt: skip
    if det:
        lines += ["**Screening** (median + 3 robust deviations of log-norm and cosine, every "
                  "round; over client-rounds, with the mean as aggregator)", "",
                  "| α | rounds × epochs | attack | precision | recall | honest client-rounds "
                  "flagged |", "|---:|---|---|---:|---:|---:|"]  # fmt: skip
        for r in det:
            lines.append(f"| {r['alpha']} | {_short(r)} | {r['attack']} | "
                         f"{_fmt(r['precision'])} | {_fmt(r['recall'])} | "
                         f"{r['false_positives']} |")  # fmt: skip
        for setting in _settings(doc):
            where = dict(
                zip(("alpha", "n_train", "rounds", "epochs", "seed"), setting, strict=True)
            )
            c = _find(doc, **where, defence="mean", attack="clean")
            if c is not None:
                lines.append(f"| {c['alpha']} | {_short(c)} | none | | | "
                             f"{c['false_positives']} |")  # fmt: skip
        lines.append("")
    rep = [r for r in doc["rows"] if "excluded_false_positives" in r]
    if rep:
        lines += ["**Reputation** (clients left out of the aggregate by their history, over "
                  "client-rounds, warm-up rounds included; the per-round screening's flags in "
                  "the same run beside them)", "",
                  "| α | rounds × epochs | defence | attack | excluded: precision | recall | "
                  "honest client-rounds excluded | excluded at the end | screening: "
                  "precision | recall |", "|---:|---|---|---|---:|---:|---:|---|---:|---:|"]  # fmt: skip
        for r in rep:
            final = ", ".join(str(p) for p in r.get("excluded_final") or []) or "none"
            planted = set(r.get("attackers") or [])
            final += " (planted: " + (", ".join(map(str, sorted(planted))) or "none") + ")"
            lines.append(f"| {r['alpha']} | {_short(r)} | {r['defence']} | "
                         f"{r['attack']} | "
                         f"{_fmt(r.get('excluded_precision'))} | {_fmt(r.get('excluded_recall'))} | "
                         f"{r['excluded_false_positives']} | {final} | {_fmt(r['precision'])} | "
                         f"{_fmt(r['recall'])} |")  # fmt: skip
        lines.append("")
    bd = [r for r in doc["rows"] if r["attack"] == "backdoor"]
    if bd:
        lines += ["**Backdoor** (20 % of organisations set a 4×4 trigger in the image features "
                  "of half their records holding an image and relabel them class 0; success = "
                  "triggered test records of other classes classified 0; α = "
                  f"{bd[0]['alpha']}, {_length(bd[0])})", "",
                  "| defence | accuracy | backdoor success |", "|---|---:|---:|"]  # fmt: skip
        control = _find(doc, alpha=bd[0]["alpha"], defence="mean", attack="clean")
        if control is not None and control.get("backdoor_success") is not None:
            lines.append(f"| no attacker (control) | {control['accuracy']:.3f} | "
                         f"{_fmt(control['backdoor_success'])} |")  # fmt: skip
        for r in bd:
            eps = f", ε = {r['epsilon']:.2f}" if r.get("epsilon") is not None else ""
            lines.append(f"| {r['defence']}{eps} | {r['accuracy']:.3f} | "
                         f"{_fmt(r.get('backdoor_success'))} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def _run(
    args: argparse.Namespace,
    doc: dict[str, Any],
    alpha: float,
    jobs: list[tuple[str, str, list[str]]],
) -> None:
    prep = prepare_data(_config(args, alpha, []))
    with tempfile.TemporaryDirectory() as tmp:
        write_federation_data(Path(tmp) / "test", prep.test, [np.arange(len(prep.test))],
                              [prep.test.mask])  # fmt: skip
        for i, (defence, attack, overrides) in enumerate(jobs):
            cfg = _config(args, alpha, [*overrides, *ATTACKS[attack], *args.extra])
            run_root = Path(tmp) / f"run{i}"
            run_root.mkdir()
            (run_root / "test").symlink_to(Path(tmp) / "test")
            row = {"alpha": alpha, "defence": defence, "attack": attack, "seed": args.seed,
                   "n_train": args.n_train, "rounds": args.rounds, "epochs": args.epochs,
                   **({"set": args.extra} if args.extra else {}),
                   **_federate(cfg, prep, run_root)}  # fmt: skip
            doc["rows"].append(row)
            _write(args.out, doc)  # a partial grid survives an interrupted run
            print(f"α={alpha} {attack:10s} {defence:12s} acc {row['accuracy']:.3f} "
                  f"P/R {_fmt(row['precision'])}/{_fmt(row['recall'])} "
                  f"bd {_fmt(row.get('backdoor_success'))} ({row['train_s']} s)", flush=True)  # fmt: skip


def merge(paths: list[Path]) -> dict[str, Any]:
    """One document from partial ones (same settings, rows concatenated)."""
    docs = [json.loads(p.read_text()) for p in paths]
    out = dict(docs[0])
    out["alphas"] = sorted({a for d in docs for a in d["alphas"]}, reverse=True)
    out["defences"] = [n for n in DEFENCES if any(n in d["defences"] for d in docs)]
    length = ("n_train", "rounds", "epochs", "seed")
    out["rows"] = [{**{k: d.get(k, 0) for k in length}, **r} for d in docs for r in d["rows"]]
    out["total_s"] = round(sum(d.get("total_s", 0.0) for d in docs), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--epochs", type=float, default=0.25)
    ap.add_argument("--n-train", type=int, default=48000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=15)
    ap.add_argument("--byzantine", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="run.seed: partition and attackers")
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.1])
    ap.add_argument("--defences", nargs="+", default=list(DEFENCES))
    ap.add_argument("--attacks", nargs="*", default=list(GRID_ATTACKS))
    extras = ["label-flip", *BACKDOOR_DEFENCES]
    ap.add_argument("--extras", nargs="*", default=extras, choices=extras,
                    help="at the first α: label-flip against the mean, the backdoor against "
                         "these defences (none: --extras alone)")  # fmt: skip
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        dest="extra",
        help="config overrides added to every federation (recorded in the rows)",
    )
    ap.add_argument("--merge", type=Path, nargs="+", help="combine these partial documents")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.merge:
        doc = merge(args.merge)
        _write(args.out, doc)
        print(table(doc))
        return
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    logging.getLogger("flwr").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    doc: dict[str, Any] = {
        "preset": "baseline", "n_train": args.n_train, "n_test": args.n_test,
        "clients": args.clients, "byzantine": args.byzantine, "rounds": args.rounds,
        "epochs": args.epochs, "alphas": args.alphas, "defences": args.defences,
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.machine(),
        "rows": [],
    }  # fmt: skip
    t_all = time.perf_counter()
    for j, alpha in enumerate(args.alphas):
        jobs = [(d, a, DEFENCES[d]) for a in args.attacks for d in args.defences]
        if j == 0:
            jobs += [("mean", "label-flip", []) for e in args.extras if e == "label-flip"]
            jobs += [(d, "backdoor", o) for d, o in BACKDOOR_DEFENCES.items() if d in args.extras]
        _run(args, doc, alpha, jobs)
    doc["total_s"] = round(time.perf_counter() - t_all, 1)
    _write(args.out, doc)
    print(table(doc))


def _write(out: Path, doc: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "robustness.md").write_text(table(doc) + "\n")


if __name__ == "__main__":
    main()
