"""``results.json`` (+ ``ledger.jsonl``) -> a self-contained ``report.html``.

The page has no external asset: CSS is inline and plots are base64 PNGs drawn with
matplotlib's Agg renderer. Every string from the results is escaped (``html.escape``).
Each section appears only when its data is present; every number shown in a table carries
its exact value in a ``data-value`` attribute, so tests (and scripts) can check the page
against ``results.json``. A long run's per-round table is summarised (see
:func:`summary_rounds`) with every round in a collapsed ``<details>``; a column with no
value in any round (train loss under DP) is left out; bytes are shown as figures per round,
in total and per organisation, with a chart only when rounds differ in size.

Fields read from ``results.json`` (all optional; anything missing or of the wrong type is
skipped, never an error)::

    umbra_version, fingerprint                       header line
    config.federation.{mode, strategy, num_clients, rounds}
    config.data.{source, manifest}, config.secure.threshold
    data.{source, manifest, modalities[], class_names[], n_train, n_test,
          skipped_rows, tabular_standardization: "identity"|"public"|"per-client",
          clients: [{client, records, per_modality: {m: n}, labels: [n per class]}]}
    rounds[]: {round, clients (number or list), accuracy, macro_f1, loss, train_loss,
               bytes_up, bytes_down, bytes_per_client: {<organisation>: {up, down}},
               wall_s, epsilon: {total, <modality>: ...}}
    final.{accuracy, macro_f1, loss, per_modality_accuracy: {<m>..., fused},
           missing_modality_accuracy: {"image+text": acc, ...}}
    privacy.{mode ("none" = off), unit: "example"|"client", delta, accountant,
             epsilon: {total, <modality>} (null when off), budget.epsilon,
             epsilon_observer, adjacency, client_rate (client level),
             observers: {<observer>: {epsilon: {total, ...} | null, amplified, why}},
             noise: "central"|"distributed", noise_multiplier (client level),
             clip_norms: {group: number}}
    secure_aggregation: "none"|"secagg+"|"ckks"
    audit.membership (umbra.audit, docs/audit.md): {attacker, model, members.{count, origin},
          non_members.{count, origin}, shadows.{count, records_each, epochs, origin,
          training, lira_variance}, attacks.{loss, lira}: {auc, auc_standard_error,
          tpr_at_fpr: {<fpr>: tpr}, roc.{fpr, tpr}, subsets: {<name>: {auc, members,
          non_members}}, dp_ceiling_check}, dp: {epsilon, delta, ceiling_at_fpr} | null}
    audit: {<other attack>: {<metric>: number | {..} , roc: {fpr: [], tpr: []}, ...,
           grid: a PNG's path in the run folder, embedded (audit.reconstruction)}}
    bytes.{up_total, down_total}, timing.{data_s, train_s, total_s}

``ledger.jsonl`` (see :mod:`umbra.privacy.ledger`) is summarised when present, and ε is
recomputed from it (:mod:`umbra.report.ledger_summary`).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from umbra.audit.membership import dp_ceiling
from umbra.errors import DataError
from umbra.report import plots
from umbra.report.audit import (
    MEMBERSHIP_ATTACKS,
    attack_label,
    audit_metrics,
    ceiling_sentence,
    get_count,
    is_membership_audit,
    poisoning_rows,
    reconstruction_rows,
)
from umbra.report.facts import privacy_on, secure_mode
from umbra.report.format import fmt_bytes, fmt_delta, fmt_num, get_in, is_number
from umbra.report.ledger_summary import LedgerSummary, summarize_ledger
from umbra.report.statement import privacy_statement

__all__ = ["REPORT_FILE", "build_report", "render_report", "summary_rounds"]

REPORT_FILE = "report.html"
RESULTS_FILE = "results.json"
LEDGER_FILE = "ledger.jsonl"

_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;
background:#f5f6f8;margin:0}
main{max-width:980px;margin:0 auto;padding:24px}
h1{font-size:1.7em;margin:.2em 0}h2{border-bottom:2px solid #1f4e79;padding-bottom:4px;
margin-top:1.8em}h3{margin-bottom:.3em}
section{background:#fff;border-radius:8px;padding:4px 20px 16px;margin:16px 0;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
.meta{color:#5a6470;font-size:.9em}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{flex:1 1 150px;background:#eef3f8;border-radius:6px;padding:10px 14px}
.card .v{font-size:1.5em;font-weight:600}.card .k{color:#5a6470;font-size:.85em}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}
th,td{padding:3px 10px;border-bottom:1px solid #dde2e8;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#eef3f8}
img{max-width:100%;height:auto;display:block;margin:8px 0}
#statement p{margin:.3em 0 .8em}
.warn{color:#a33;font-weight:600}
pre{background:#f0f2f5;padding:10px;overflow:auto;font-size:.8em}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


class Shown(NamedTuple):
    """A table cell shown as ``text`` whose exact number is ``value`` (e.g. bytes as MB)."""

    text: str
    value: float


def _cell(v: Any) -> str:
    if isinstance(v, Shown):
        return f'<td class="n" data-value="{_e(json.dumps(v.value))}">{_e(v.text)}</td>'
    if is_number(v):
        return f'<td class="n" data-value="{_e(json.dumps(v))}">{_e(fmt_num(v))}</td>'
    return f"<td>{_e('' if v is None else v)}</td>"


def _table(name: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A table whose numeric cells carry their exact value in ``data-value``."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f'<table data-table="{_e(name)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{_e(sid)}"><h2>{_e(title)}</h2>{body}</section>'


def _rounds(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    rounds = results.get("rounds")
    return [r for r in rounds if isinstance(r, Mapping)] if isinstance(rounds, list) else []


def _col(rounds: Sequence[Mapping[str, Any]], key: str) -> list[float | None]:
    return [float(r[key]) if is_number(r.get(key)) else None for r in rounds]


def _xs(rounds: Sequence[Mapping[str, Any]]) -> list[float]:
    return [
        float(r["round"]) if is_number(r.get("round")) else float(i + 1)
        for i, r in enumerate(rounds)
    ]


# --------------------------------------------------------------------------- sections


def _summary(results: Mapping[str, Any]) -> str:
    cards: list[tuple[str, str]] = []
    acc = get_in(results, "final", "accuracy")
    if is_number(acc):
        cards.append(("fused test accuracy", f"{100 * acc:.1f}%"))
    f1 = get_in(results, "final", "macro_f1")
    if is_number(f1):
        cards.append(("macro-F1", f"{f1:.3f}"))
    if privacy_on(results):
        total = get_in(results, "privacy", "epsilon", "total")
        delta = get_in(results, "privacy", "delta")
        if is_number(total):
            d = f", δ={fmt_delta(delta)}" if is_number(delta) else ""
            who = get_in(results, "privacy", "epsilon_observer")
            seen = f" ({str(who).replace('_', ' ')})" if isinstance(who, str) else ""
            cards.append((f"ε{d}{seen}", f"{total:.2f}"))
    elif "privacy" in results:
        cards.append(("differential privacy", "off"))
    mode = secure_mode(results)
    if mode is not None:
        cards.append(("secure aggregation", mode))
    up = get_in(results, "bytes", "up_total")
    if is_number(up):
        cards.append(("uploaded", fmt_bytes(up)))
    body = "".join(
        f'<div class="card"><div class="v">{_e(v)}</div><div class="k">{_e(k)}</div></div>'
        for k, v in cards
    )
    return _section("summary", "Summary", f'<div class="cards">{body}</div>') if cards else ""


def _statement(results: Mapping[str, Any], ledger: LedgerSummary | None) -> str:
    parts = privacy_statement(results, ledger)
    if not parts:
        return ""
    body = "".join(
        f"<h3>{_e(p.title)}</h3><p>{' '.join(_e(s) for s in p.sentences)}</p>" for p in parts
    )
    return _section("statement", "Privacy statement", body)


_ROUND_COLUMNS = (
    ("round", "round"),
    ("clients", "clients"),
    ("accuracy", "accuracy"),
    ("macro_f1", "macro-F1"),
    ("loss", "test loss"),
    ("train_loss", "train loss"),
    ("bytes_up", "bytes up"),
    ("bytes_down", "bytes down"),
    ("wall_s", "wall (s)"),
)


#: rounds in the per-round table up to which it is shown whole, with no summary
FULL_TABLE_ROUNDS = 20
#: without per-round evaluations the summary shows every this many rounds (and the last)
SUMMARY_EVERY = 10


def summary_rounds(rounds: Sequence[Mapping[str, Any]]) -> tuple[list[int], str]:
    """Indices into ``rounds`` of the rows of the per-round summary table, and which they are.

    Every round when there are at most :data:`FULL_TABLE_ROUNDS`. Else, when only some
    rounds were evaluated (have an accuracy), the evaluated rounds, thinned to about one in
    :data:`SUMMARY_EVERY` rounds when evaluations are denser than that; when every round
    (or none) was evaluated, every :data:`SUMMARY_EVERY`-th round. The last round always.
    """
    n = len(rounds)
    if n <= FULL_TABLE_ROUNDS:
        return list(range(n)), "every round"
    evaluated = [i for i, r in enumerate(rounds) if is_number(r.get("accuracy"))]
    if 0 < len(evaluated) < n:
        step = math.ceil(len(evaluated) * SUMMARY_EVERY / n)
        keep = evaluated[step - 1 :: step]
        which = "the evaluated rounds" if step == 1 else f"every {_nth(step)} evaluated round"
    else:
        keep = [i for i, x in enumerate(_xs(rounds)) if x % SUMMARY_EVERY == 0]
        which = f"every {_nth(SUMMARY_EVERY)} round"
    return sorted(set(keep) | {n - 1}), which


def _nth(k: int) -> str:
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def _no_train_loss(results: Mapping[str, Any]) -> str:
    if privacy_on(results):
        return (
            "<p>No training loss: under differential privacy it is computed on the "
            "organisations' private records and is not sent to the server.</p>"
        )
    return "<p>No round reported a training loss.</p>"


def _training(results: Mapping[str, Any]) -> str:
    rounds = _rounds(results)
    if not rounds:
        return ""
    xs = _xs(rounds)
    names = dict(_ROUND_COLUMNS)
    acc = {names[k]: _col(rounds, k) for k in ("accuracy", "macro_f1") if any(_col(rounds, k))}
    loss = {names[k]: _col(rounds, k) for k in ("loss", "train_loss") if any(_col(rounds, k))}
    png = plots.line_chart(
        xs,
        acc,
        xlabel="round",
        ylabel="accuracy / macro-F1",
        title="Accuracy and loss per round",
        right=loss,
        right_label="loss",
    )
    # a column whose every value is null (train loss under DP) says nothing: leave it out
    cols = [(k, h) for k, h in _ROUND_COLUMNS if any(r.get(k) is not None for r in rounds)]
    has_eps = any(isinstance(r.get("epsilon"), Mapping) for r in rounds)
    rows = []
    for r in rounds:
        row = [
            len(r[k]) if k == "clients" and isinstance(r.get(k), list) else r.get(k)
            for k, _ in cols
        ]
        if has_eps:
            row.append(get_in(r, "epsilon", "total"))
        rows.append(row)
    header = [h for _, h in cols] + (["ε total"] if has_eps else [])
    body = _img(png, "accuracy and loss per round")
    if any("train_loss" in r for r in rounds) and not any(
        r.get("train_loss") is not None for r in rounds
    ):
        body += _no_train_loss(results)
    keep, which = summary_rounds(rounds)
    if len(keep) == len(rounds):
        body += _table("rounds", header, rows)
    else:
        body += (
            f"<p>{len(keep)} of {len(rounds)} rounds: {which} and the last. "
            "Every round is in the full table below and in results.json.</p>"
            + _table("rounds", header, [rows[i] for i in keep])
            + f"<details><summary>all {len(rounds)} rounds</summary>"
            + _table("rounds_all", header, rows)
            + "</details>"
        )
    return _section("training", "Training: accuracy and loss per round", body)


def _modalities(results: Mapping[str, Any]) -> str:
    per = get_in(results, "final", "per_modality_accuracy")
    if not isinstance(per, Mapping) or not per:
        return ""
    vals = {str(k): float(v) for k, v in per.items() if is_number(v)}
    png = plots.bar_chart(
        vals, ylabel="test accuracy", title="Each modality alone vs fused", highlight="fused"
    )
    rows = [[k, v] for k, v in vals.items()]
    body = (
        "<p>Test accuracy of the global model fed one modality at a time, and all of them "
        "(fused).</p>"
        + _img(png, "per-modality accuracy")
        + _table("per_modality_accuracy", ["input", "accuracy"], rows)
    )
    return _section("modalities", "Per-modality and fused accuracy", body)


def _missing(results: Mapping[str, Any]) -> str:
    miss = get_in(results, "final", "missing_modality_accuracy")
    if not isinstance(miss, Mapping) or not miss:
        return ""
    vals = {str(k): float(v) for k, v in miss.items() if is_number(v)}
    png = plots.bar_chart(vals, ylabel="test accuracy", title="Accuracy per available subset")
    body = (
        "<p>Test accuracy when only the listed modalities are present.</p>"
        + _img(png, "missing-modality accuracy")
        + _table(
            "missing_modality_accuracy",
            ["modalities present", "accuracy"],
            [[k, v] for k, v in vals.items()],
        )
    )
    return _section("missing", "Accuracy with missing modalities", body)


#: per-round byte counts whose spread (max − min) / max is below this are "the same":
#: the page gives a per-round figure instead of a chart of near-identical bars
BYTES_SPREAD = 0.05


def _spread(values: Sequence[float]) -> float:
    return (max(values) - min(values)) / max(values) if values and max(values) > 0 else 0.0


def _per_client_bytes(rounds: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """Rows (organisation, rounds, up/down per round, up/down total) from ``bytes_per_client``."""
    acc: dict[str, list[float]] = {}
    for r in rounds:
        per = r.get("bytes_per_client")
        if not isinstance(per, Mapping):
            continue
        for client, b in per.items():
            if not isinstance(b, Mapping):
                continue
            up, down = b.get("up"), b.get("down")
            tot = acc.setdefault(str(client), [0, 0.0, 0.0])
            tot[0] += 1
            tot[1] += up if is_number(up) else 0
            tot[2] += down if is_number(down) else 0
    return [
        [c, int(n), Shown(fmt_bytes(u / n), u / n), Shown(fmt_bytes(d / n), d / n),
         Shown(fmt_bytes(u), u), Shown(fmt_bytes(d), d)]
        for c, (n, u, d) in acc.items()
    ]  # fmt: skip


def _communication(results: Mapping[str, Any]) -> str:
    rounds = _rounds(results)
    up, down = _col(rounds, "bytes_up"), _col(rounds, "bytes_down")
    ups = [v for v in up if v is not None]
    downs = [v for v in down if v is not None]
    if not rounds or not (ups or downs):
        return ""
    body = ""
    if max(_spread(ups), _spread(downs)) >= BYTES_SPREAD:
        stacks = {
            "up (clients → server)": [(v or 0.0) / 1e6 for v in up],
            "down (server → clients)": [(v or 0.0) / 1e6 for v in down],
        }
        png = plots.stacked_bars(
            _xs(rounds),
            stacks,
            xlabel="round",
            ylabel="MB",
            title="Bytes per round (serialized messages, all clients)",
        )
        body += _img(png, "bytes per round")
    else:
        body += (
            "<p>Serialized messages, all organisations together; every round moved "
            "about the same amount, so the page gives the figures rather than a chart.</p>"
        )
    rows: list[list[Any]] = []
    for name, key, per in (("up", "up_total", ups), ("down", "down_total", downs)):
        total = get_in(results, "bytes", key)
        total = total if is_number(total) else sum(per) if per else None
        if total is None:
            continue
        mean = sum(per) / len(per) if per else None
        rows.append([
            f"{name} ({'organisations → server' if name == 'up' else 'server → organisations'})",
            Shown(fmt_bytes(mean), mean) if mean is not None else None,
            Shown(fmt_bytes(min(per)), min(per)) if per else None,
            Shown(fmt_bytes(max(per)), max(per)) if per else None,
            Shown(fmt_bytes(total), total),
        ])  # fmt: skip
    body += _table(
        "bytes", ["bytes", "per round (mean)", "least in a round", "most in a round", "total"], rows
    )
    per_client = _per_client_bytes(rounds)
    if per_client:
        body += "<h3>Per organisation</h3>" + _table(
            "bytes_per_client",
            ["organisation", "rounds", "up per round", "down per round", "up in total",
             "down in total"],
            per_client,
        )  # fmt: skip
    return _section("communication", "Communication", body)


def _privacy(results: Mapping[str, Any]) -> str:
    if not privacy_on(results):
        return ""
    p = results["privacy"]
    eps = p["epsilon"]
    settings = [
        [k, p.get(k)]
        for k in (
            "mode",
            "unit",
            "adjacency",
            "noise",
            "client_rate",
            "epsilon_observer",
            "delta",
            "accountant",
        )
        if p.get(k) is not None
    ]
    for k in ("noise_multiplier", "clip_norms"):
        v = p.get(k)
        if isinstance(v, Mapping):
            settings += [[f"{k} ({g})", x] for g, x in v.items()]
        elif v is not None:
            settings.append([k, v])
    body = _table("privacy", ["setting", "value"], settings)
    body += _table("epsilon", ["group", "ε"], [[k, v] for k, v in eps.items() if is_number(v)])
    observers = p.get("observers")
    if isinstance(observers, Mapping) and observers:
        rows = []
        for name, o in observers.items():
            if not isinstance(o, Mapping):
                continue
            total = get_in(o, "epsilon", "total")
            rows.append([
                str(name).replace("_", " "),
                total if is_number(total) else "none holds",
                "yes" if o.get("amplified") else "no",
                str(o.get("why", "")),
            ])  # fmt: skip
        body += _table("observers", ["observer", "ε total", "amplified", "what it sees"], rows)
    rounds = _rounds(results)
    keys: list[str] = []
    for r in rounds:
        e = r.get("epsilon")
        if isinstance(e, Mapping):
            keys += [str(k) for k in e if k not in keys and is_number(e[k])]
    if keys:
        series = {
            k: [float(v) if is_number(v := get_in(r, "epsilon", k)) else None for r in rounds]
            for k in keys
        }
        body += _img(
            plots.line_chart(
                _xs(rounds),
                series,
                xlabel="round",
                ylabel="ε",
                title="ε spent so far, per modality and in total",
            ),
            "epsilon per round",
        )
    return _section("privacy", "Differential privacy", body)


def _ledger(ledger: LedgerSummary | None) -> str:
    if ledger is None:
        return ""
    if ledger.error:
        body = f'<p class="warn">The ledger could not be read: {_e(ledger.error)}</p>'
        return _section("ledger", "Privacy ledger", body)
    h = ledger.header
    rows: list[list[Any]] = [
        [k, h[k]] for k in ("unit", "delta", "accountant", "version") if k in h
    ]
    rows += [
        ["releases", ledger.releases],
        ["rounds with releases", len(ledger.rounds)],
        ["parties", ledger.parties],
        ["lines", ledger.lines],
    ]
    if ledger.unreadable:
        rows.append(["unreadable lines (skipped)", ledger.unreadable])
    body = _table("ledger", ["ledger", "value"], rows)
    grows = [
        [
            g,
            v["lines"],
            v["steps"],
            ", ".join(fmt_num(x) for x in v["noise_multiplier"]),
            ", ".join(fmt_num(x) for x in v["clip_norm"]),
            ", ".join(fmt_num(x) for x in v["sample_rate"]),
        ]
        for g, v in ledger.groups.items()
    ]
    if grows:
        body += _table(
            "ledger_groups",
            ["group", "lines", "steps", "noise multiplier σ", "clip norm C", "sample rate q"],
            grows,
        )
    if ledger.recomputed is not None:
        body += "<p>ε recomputed from the ledger alone:</p>" + _table(
            "ledger_epsilon", ["group", "ε"], [[k, v] for k, v in ledger.recomputed.items()]
        )
    elif ledger.recompute_error:
        body += f'<p class="warn">ε could not be recomputed: {_e(ledger.recompute_error)}</p>'
    body += "".join(f'<p class="warn">{_e(w)}</p>' for w in ledger.warnings)
    return _section("ledger", "Privacy ledger", body)


def _secure(results: Mapping[str, Any]) -> str:
    mode = secure_mode(results)
    if mode is None:
        return ""
    counts = [r.get("clients") for r in _rounds(results)]
    n = [len(c) if isinstance(c, list) else c for c in counts if isinstance(c, list | int)]
    per_round = (
        f"up to {max(n)} individual updates per round" if n else "each organisation's update"
    )
    saw = {
        "none": f"{per_round}, in the clear",
        "secagg+": "masked updates; only their sum could be unmasked",
        "ckks": "CKKS ciphertexts and the decrypted aggregate",
    }.get(mode, "(not described for this mode)")
    rows: list[list[Any]] = [["mode", mode], ["what the server could see", saw]]
    return _section("secure", "Secure aggregation", _table("secure", ["", ""], rows))


def _audit(results: Mapping[str, Any], pictures: Mapping[str, bytes]) -> str:
    audit = results.get("audit")
    if not isinstance(audit, Mapping) or not audit:
        return ""
    body = ""
    for name, entry in audit.items():
        label = attack_label(str(name))
        body += f"<h3>{_e(label[:1].upper() + label[1:])}</h3>"
        if is_membership_audit(entry):
            body += _membership(str(name), entry)
            continue
        if name == "poisoning" and isinstance(entry, Mapping):
            body += _poisoning(entry)
            continue
        header, recon_rows = reconstruction_rows(entry) if isinstance(entry, Mapping) else ([], [])
        if recon_rows and isinstance(entry, Mapping):
            body += _reconstruction_intro(entry)
            body += _table(f"audit.{name}", header, recon_rows)
            grid = entry.get("grid")
            if isinstance(grid, str) and grid in pictures:
                body += _img(pictures[grid], f"{label}: originals (top), reconstructions (bottom)")
            continue
        metrics = audit_metrics(entry)
        if metrics:
            body += _table(
                f"audit.{name}", ["metric", "value"], [[k, v] for k, v in metrics.items()]
            )
        grid = entry.get("grid") if isinstance(entry, Mapping) else None
        if isinstance(grid, str) and grid in pictures:
            body += _img(pictures[grid], f"{label}: originals (top), reconstructions (bottom)")
        roc = entry.get("roc") if isinstance(entry, Mapping) else None
        roc = roc if isinstance(roc, Mapping) else entry if isinstance(entry, Mapping) else {}
        fpr, tpr = roc.get("fpr"), roc.get("tpr")
        if isinstance(fpr, list) and isinstance(tpr, list) and all(map(is_number, fpr + tpr)):
            body += _img(plots.roc_curve(fpr, tpr, title=f"{label}: ROC"), f"{label} ROC")
        if isinstance(entry, Mapping):
            for k, v in entry.items():
                if (
                    k not in ("fpr", "tpr")
                    and isinstance(v, list)
                    and len(v) > 1
                    and all(map(is_number, v))
                ):
                    body += _img(
                        plots.line_chart(
                            list(range(1, len(v) + 1)),
                            {str(k): v},
                            xlabel="index",
                            ylabel=str(k),
                            title=f"{label}: {k}",
                        ),
                        f"{label} {k}",
                    )
    return _section("audit", "Attacks (privacy audit)", body)


def _poisoning(entry: Mapping[str, Any]) -> str:
    """The planted attack and the defences, how well each detector found the attackers,
    the clients' final reputations, and the backdoor's success rate."""
    a, d = entry.get("attack"), entry.get("defence")
    attack: Mapping[str, Any] = a if isinstance(a, Mapping) else {}
    defence: Mapping[str, Any] = d if isinstance(d, Mapping) else {}
    # bucket_size 1: no bucketing
    on = [k for k, v in defence.items()
          if v not in (None, False, "mean") and not (k == "bucket_size" and v == 1)]  # fmt: skip
    out = (f"<p><b>attack:</b> {_e(attack.get('kind'))} by organisations "
           f"{_e(', '.join(str(p) for p in attack.get('attackers', [])))}; "
           f"<b>defences:</b> {_e(', '.join(_setting(k, defence[k]) for k in on) or 'none')}</p>")  # fmt: skip
    backdoor = entry.get("backdoor")
    if isinstance(backdoor, Mapping):
        out += _table("audit.poisoning.backdoor", ["metric", "value"],
                      [[k, v] for k, v in audit_metrics(backdoor).items()])  # fmt: skip
    detectors, clients = poisoning_rows(entry)
    if detectors:
        out += _table("audit.poisoning.detection",
                      ["detector", "precision", "recall", "attacker client-rounds caught",
                       "honest client-rounds caught"], detectors)  # fmt: skip
    if clients:
        response = len(clients[0]) == 7
        out += ("<p>Each client's reputation after the last round: its mean cosine to the "
                "median of the other updates, its mean log-ratio of update norm to the "
                "round's median" + (", and its mean response (the cosine of its update's "
                "change to the others' last mean update: negative for descent, positive for "
                "a sign-flipper)" if response else "") + " (docs/robustness.md).</p>")  # fmt: skip
        out += _table("audit.poisoning.reputation",
                      ["client", "planted", "rounds", "mean cosine", "mean log-norm ratio",
                       *(["mean response"] if response else []), "excluded at the end"],
                      clients)  # fmt: skip
    return out


def _setting(name: str, value: Any) -> str:
    """One defence setting for people: ``name = value``, a nested one as its parts."""
    if isinstance(value, Mapping):
        return f"{name} ({', '.join(f'{k} {v}' for k, v in value.items())})"
    return f"{name} = {value}"


def _reconstruction_intro(entry: Mapping[str, Any]) -> str:
    """Who attacks what in the reconstruction audit, before its table."""
    parts = []
    if isinstance(entry.get("attacker"), str):
        parts.append(f"<p><b>attacker:</b> {_e(entry['attacker'])}</p>")
    if entry.get("organisation") is not None:
        parts.append(f"<p><b>organisation attacked:</b> {_e(str(entry['organisation']))}; "
                     "each cell: records recovered exactly / records in the update, the median "
                     "cosine of recovered to true features, and for images the PSNR of the "
                     "pixels rebuilt from them, in brackets the PSNR the labels alone give "
                     "(one mean public image per label the observer learns)</p>")  # fmt: skip
    return "".join(parts)


def _membership(name: str, entry: Mapping[str, Any]) -> str:
    """umbra.audit's membership object: who attacks with what, AUC and TPR at each FPR per
    attack (and the DP ceiling), AUC per modality subset, the ROC curves."""
    attacks = {str(k): v for k, v in entry["attacks"].items()}
    shadows = entry.get("shadows") if isinstance(entry.get("shadows"), Mapping) else {}
    setup = [
        ("attacker", entry.get("attacker")),
        ("model", entry.get("model")),
        ("members", get_in(entry, "members", "origin")),
        ("non-members", get_in(entry, "non_members", "origin")),
        (
            "LiRA shadow models",
            f"{shadows.get('count')} models, {shadows.get('records_each')} records each, "
            f"{fmt_num(shadows.get('epochs'))} epochs; {shadows.get('origin')}; "
            f"{shadows.get('training')}; {shadows.get('lira_variance')} OUT variance"
            if shadows
            else None,
        ),
    ]
    body = "".join(f"<p><b>{_e(k)}:</b> {_e(v)}</p>" for k, v in setup if isinstance(v, str))
    fprs = sorted({f for a in attacks.values() for f in (a.get("tpr_at_fpr") or {})}, key=float)
    rows: list[list[Any]] = []
    for k, a in attacks.items():
        tprs = a.get("tpr_at_fpr") or {}
        rows.append(
            [MEMBERSHIP_ATTACKS.get(k, k), a.get("auc"), a.get("auc_standard_error")]
            + [tprs.get(f) for f in fprs]
        )
    dp = entry.get("dp") if isinstance(entry.get("dp"), Mapping) else None
    if dp is not None:
        caps = dp.get("ceiling_at_fpr") or {}
        rows.append(["DP ceiling (any attack)", None, None] + [caps.get(f) for f in fprs])
    header = ["attack", "AUC", "± (std. error)"] + [f"TPR at FPR {f}" for f in fprs]
    body += _table(f"audit.{name}", header, rows)
    n0 = get_count(entry, "non_members")
    if n0:
        body += (
            f'<p class="meta">With {n0} non-members the smallest false-positive rate '
            f"measured is {fmt_num(1 / n0)}: a TPR at a lower FPR rests on the few "
            "highest-scoring non-members and is uncertain (95 % intervals in results.json).</p>"
        )
    subsets = sorted({s for a in attacks.values() for s in (a.get("subsets") or {})})
    if subsets:
        srows = []
        for sub in subsets:
            first = next(
                a["subsets"][sub] for a in attacks.values() if sub in (a.get("subsets") or {})
            )
            srows.append(
                [sub, first.get("members"), first.get("non_members")]
                + [get_in(a, "subsets", sub, "auc") for a in attacks.values()]
            )
        body += "<p>AUC per modality subset (records holding, or lacking, a modality):</p>"
        body += _table(
            f"audit.{name}.subsets",
            ["records", "members", "non-members"]
            + [f"AUC {MEMBERSHIP_ATTACKS.get(k, k)}" for k in attacks],
            srows,
        )
    curves = {}
    for k, a in attacks.items():
        fpr, tpr = get_in(a, "roc", "fpr"), get_in(a, "roc", "tpr")
        if isinstance(fpr, list) and isinstance(tpr, list) and all(map(is_number, fpr + tpr)):
            curves[MEMBERSHIP_ATTACKS.get(k, k)] = (fpr, tpr)
    ceiling = None
    floor = 1.0 / n0 if n0 else 1e-3
    if dp is not None and is_number(dp.get("epsilon")) and is_number(dp.get("delta")):
        grid = [floor * (1.0 / floor) ** (i / 60) for i in range(61)]
        caps = dp_ceiling(np.array(grid), epsilon=float(dp["epsilon"]), delta=float(dp["delta"]))
        ceiling = (grid, caps.tolist())
    body += _img(
        plots.membership_roc(
            curves, floor=floor, ceiling=ceiling, title="membership inference: ROC"
        ),
        "membership inference ROC",
    )
    said = ceiling_sentence(entry)
    body += f"<p>{_e(said)}</p>" if said else ""
    return body


def _data(results: Mapping[str, Any]) -> str:
    clients = get_in(results, "data", "clients")
    if not isinstance(clients, list) or not clients:
        return ""
    mods = get_in(results, "data", "modalities", default=[])
    names = get_in(results, "data", "class_names", default=[])
    clients = [c for c in clients if isinstance(c, Mapping)]
    # under DP the run withholds what its organisations keep private: show only what is there
    has = {k: any(k in c for c in clients) for k in ("records", "per_modality", "labels")}
    rows = []
    for c in clients:
        labels = c.get("labels")
        nz = sum(1 for x in labels if is_number(x) and x > 0) if isinstance(labels, list) else None
        rows.append(
            [c.get("client")]
            + ([c.get("records")] if has["records"] else [])
            + ([get_in(c, "per_modality", m) for m in mods] if has["per_modality"] else [])
            + ([nz] if has["labels"] else [])
        )
    header = (
        ["organisation"]
        + (["records"] if has["records"] else [])
        + ([f"with {m}" for m in mods] if has["per_modality"] else [])
        + (["classes held"] if has["labels"] else [])
    )
    intro = ""
    if names:
        intro = f"<p>{len(names)} classes: {_e(', '.join(map(str, names)))}.</p>"
    withheld = get_in(results, "data", "clients_withheld")
    if isinstance(withheld, str):
        intro += f"<p>{_e(withheld)}</p>"
    return _section("data", "Organisations and their data", intro + _table("clients", header, rows))


def _config(results: Mapping[str, Any]) -> str:
    cfg = results.get("config")
    if not isinstance(cfg, Mapping):
        return ""
    text = json.dumps(cfg, indent=2, sort_keys=True, default=str)
    return _section(
        "config",
        "Configuration",
        f"<details><summary>fully resolved configuration</summary><pre>{_e(text)}</pre></details>",
    )


_SECTIONS: tuple[Callable[[Mapping[str, Any]], str], ...] = (
    _training,
    _modalities,
    _missing,
    _communication,
    _privacy,
)


def build_report(
    results: Mapping[str, Any],
    ledger: LedgerSummary | None = None,
    *,
    title: str = "Umbra run",
    pictures: Mapping[str, bytes] | None = None,
) -> str:
    """The report page for ``results`` (and an optional ledger summary), as HTML text.

    ``pictures``: PNG bytes of the run folder's files that an attack names as its
    ``grid`` (path relative to the run folder), embedded in the Attacks section."""
    fed = get_in(results, "config", "federation", default={})
    meta = [
        f"{k} {v}"
        for k, v in (
            ("Umbra", results.get("umbra_version")),
            ("data", get_in(results, "data", "source")),
            ("mode", get_in(fed, "mode")),
            ("strategy", get_in(fed, "strategy")),
            ("clients", get_in(fed, "num_clients")),
            ("rounds", get_in(fed, "rounds")),
            ("config", results.get("fingerprint")),
        )
        if v is not None
    ]
    parts = [
        f'<header><h1>{_e(title)}</h1><p class="meta">{_e(" · ".join(meta))}</p></header>',
        _summary(results),
        _statement(results, ledger),
        *(f(results) for f in _SECTIONS),
        _ledger(ledger),
        _secure(results),
        _audit(results, pictures or {}),
        _data(results),
        _config(results),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)} — report</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(parts)}</main></body></html>\n"
    )


def _audit_pictures(run_dir: Path, results: Mapping[str, Any]) -> dict[str, bytes]:
    """The PNG files inside ``run_dir`` that results.json's attacks name as ``grid``."""
    audit = results.get("audit")
    out: dict[str, bytes] = {}
    if not isinstance(audit, Mapping):
        return out
    root = run_dir.resolve()
    for entry in audit.values():
        grid = entry.get("grid") if isinstance(entry, Mapping) else None
        if not isinstance(grid, str) or not grid.endswith(".png"):
            continue
        path = (run_dir / grid).resolve()
        if path.is_relative_to(root) and path.is_file():
            out[grid] = path.read_bytes()
    return out


def render_report(run_dir: Path, *, verify_ledger: bool = True) -> Path:
    """Write ``run_dir/report.html`` from ``run_dir/results.json`` (and ``ledger.jsonl``).

    Args:
        run_dir: a run's output folder.
        verify_ledger: recompute ε from the ledger (dp-accounting) and show it.

    Returns:
        The path of the report.

    Raises:
        DataError: ``results.json`` is missing or is not a JSON object.
    """
    run_dir = Path(run_dir)
    path = run_dir / RESULTS_FILE
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{run_dir} has no {RESULTS_FILE}: is it an Umbra run folder?") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(results, dict):
        raise DataError(f"{path} must hold a JSON object")
    ledger = summarize_ledger(run_dir / LEDGER_FILE, recompute=verify_ledger)
    page = build_report(
        results,
        ledger,
        title=f"Umbra run {run_dir.resolve().name}",
        pictures=_audit_pictures(run_dir, results),
    )
    out = run_dir / REPORT_FILE
    tmp = run_dir / f".{REPORT_FILE}.{os.getpid()}.tmp"  # same folder: os.replace is atomic
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
