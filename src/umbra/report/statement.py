"""The privacy statement: plain-language sentences generated from ``results.json``.

Every sentence is built from a field of the results (or of the ledger) and appears only
when that field is present; nothing about a run is written here as a fixed fact. The
wording of each protection follows the threat model of DESIGN.md ("Privacy semantics"):
an honest-but-curious server, clients that keep their raw data, authenticated and
encrypted channels whose traffic metadata (who talks to the server) is observable.

The fields are read through :mod:`umbra.report.facts`; the ledger's figures come from
:func:`umbra.report.ledger_summary.summarize_ledger`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from umbra.report.audit import (
    attack_label,
    audit_metrics,
    is_membership_audit,
    is_poisoning_audit,
    membership_sentences,
    metric_phrase,
    poisoning_sentences,
)
from umbra.report.facts import (
    budget_target,
    bytes_total,
    clients,
    distributed_noise,
    epsilon,
    modalities,
    observers,
    privacy_on,
    secure_mode,
    threshold,
)
from umbra.report.format import (
    fmt_bytes,
    fmt_delta,
    fmt_eps,
    fmt_num,
    get_in,
    is_number,
    join_words,
    plural,
)
from umbra.report.ledger_summary import LedgerSummary

__all__ = ["StatementPart", "privacy_statement"]

_MODALITY_NOUNS = {
    "image": "images",
    "audio": "audio recordings",
    "text": "texts",
    "tabular": "tabular values",
}


def threshold_phrase(t: float, n_clients: int | None) -> str:
    """``"67% of the round's organisations (3 of 4 when all take part)"``."""
    pct = f"{100 * t:.0f}% of the round's organisations"
    if n_clients:
        need = max(1, math.ceil(t * n_clients - 1e-9))
        return f"{pct} ({need} of {n_clients} when all take part)"
    return pct


# --------------------------------------------------------------------------- the statement


@dataclass(frozen=True)
class StatementPart:
    """One titled paragraph of the privacy statement."""

    title: str
    sentences: tuple[str, ...]


def privacy_statement(
    results: Mapping[str, Any], ledger: LedgerSummary | None = None
) -> list[StatementPart]:
    """The privacy statement of a run, one part per topic that ``results`` has data for.

    Parts: "Data that stayed with each organisation", "Protections in this run",
    "Trust assumptions", "Privacy budget" (when DP was on), "Attacks" (when the audit ran).
    """
    parts = [
        _data_part(results),
        _protections_part(results),
        _trust_part(results),
        _budget_part(results, ledger),
        _attack_part(results),
    ]
    return [p for p in parts if p is not None and p.sentences]


def _data_part(results: Mapping[str, Any]) -> StatementPart | None:
    mode = get_in(results, "config", "federation", "mode", default="federated")
    n_clients, records = clients(results)
    mods = modalities(results)
    nouns = join_words([_MODALITY_NOUNS.get(m, m) for m in mods]) or "records"
    s: list[str] = []
    source = get_in(results, "data", "manifest") or get_in(results, "config", "data", "manifest")
    if get_in(results, "data", "source") == "manifest" and source:
        s.append(f"The records came from the manifest {source}.")
    skipped = get_in(results, "data", "skipped_rows")
    if is_number(skipped) and skipped > 0:
        s.append(f"{plural(int(skipped), 'bad manifest row')} were skipped before training.")
    if mode == "centralized":
        rec = f"all {records:,} training records" if records is not None else "all records"
        s.append(
            f"This run is the centralized baseline: {rec} ({nouns}) were pooled in one place, "
            "so no record stayed with its organisation."
        )
        return StatementPart("Data that stayed with each organisation", tuple(s))
    if n_clients is not None:
        rec = f" ({records:,} training records in all)" if records is not None else ""
        s.append(
            f"Each of the {n_clients} organisations{rec} kept its {nouns} on its own machine: "
            "no raw record was sent to the server or to another organisation."
        )
    up, down = bytes_total(results, "up"), bytes_total(results, "down")
    rounds = results.get("rounds")
    n_rounds = len(rounds) if isinstance(rounds, list) else None
    if up is not None and down is not None:
        over = f" over {plural(n_rounds, 'round')}" if n_rounds else ""
        s.append(
            f"Only model parameters and updates travelled: {fmt_bytes(up)} from the "
            f"organisations to the server and {fmt_bytes(down)} back{over}."
        )
    std = get_in(results, "data", "tabular_standardization")
    if "tabular" in mods and isinstance(std, str):
        s.append(
            {
                "identity": "Tabular values were used as given: no statistic of the records "
                "entered their scaling.",
                "public": "Tabular values were standardised with per-column statistics the "
                "user declared public: no record entered them.",
                "per-client": "Tabular values were standardised with each organisation's own "
                "mean and standard deviation (never by pooling raw values), so every record's "
                "features depend on the other records of its organisation.",
            }.get(std, f"Tabular values were scaled as follows: {std}.")
        )
    return StatementPart("Data that stayed with each organisation", tuple(s))


#: Plain names of the observers of :mod:`umbra.privacy.observers`.
_OBSERVER_NAMES = {
    "server": "the server",
    "other_clients": "any other organisation",
    "model_holder": "whoever holds the trained models",
}


def _protections_part(results: Mapping[str, Any]) -> StatementPart | None:
    s: list[str] = []
    mode = secure_mode(results)
    n_clients, _ = clients(results)
    if "privacy" in results:
        if privacy_on(results):
            unit = get_in(results, "privacy", "unit")
            where = {
                "example": "inside each organisation's training (DP-SGD): every record's "
                "gradient was clipped and noised before any update left",
                "client": "on each organisation's whole update, which was clipped to a fixed "
                + (
                    "norm; each organisation added a share of the Gaussian noise, so that "
                    "only the securely aggregated sum carried all of it"
                    if distributed_noise(results)
                    else "norm; the server added Gaussian noise to the sum"
                ),
            }.get(unit, "")
            if unit == "example" and distributed_noise(results):
                where = (
                    "in one DP-SGD step per round taken jointly by the organisations: every "
                    "record's gradient was clipped and each organisation added a share of the "
                    "noise, so that only the securely aggregated sum carried all of it"
                )
            s.append(
                f"Differential privacy was active at the {unit or 'reported'} level"
                + (f", {where}." if where else ".")
            )
            if unit == "example":
                s.append(
                    "Each organisation drew its records' Poisson samples from an OS-seeded "
                    "cryptographic generator and told nobody which records a sample held."
                )
            elif unit == "client":
                s.append(
                    "The server drew each round's sample of organisations (each joined with "
                    f"probability {fmt_num(get_in(results, 'privacy', 'client_rate'), 3)}) from "
                    "an OS-seeded cryptographic generator."
                    if is_number(get_in(results, "privacy", "client_rate"))
                    else "The server drew each round's sample of organisations."
                )
            s.append(
                "Under differential privacy the organisations sent no training loss, no "
                "per-modality record counts and no sampled batch sizes to the server"
                + (
                    "; only their record counts (public under the zero-out neighbouring "
                    "relation) and the noised updates."
                    if unit == "example"
                    else "; not even their record counts: only the clipped updates."
                )
            )
        else:
            s.append(
                "Differential privacy was not active: the trained model carries no formal "
                "bound on what it reveals about any single record or organisation."
            )
    t = threshold(results)
    if mode == "none":
        s.append(
            "Secure aggregation was off: the server received each organisation's model "
            "update in the clear."
        )
    elif mode == "secagg+":
        need = f" of at least {threshold_phrase(t, n_clients)}" if t is not None else ""
        s.append(
            "Secure aggregation (SecAgg+) was active: each update was masked before it left "
            f"its organisation, and the server could only unmask the sum{need} per round."
        )
    elif mode == "ckks":
        s.append(
            "Updates were encrypted with the CKKS homomorphic scheme: the server added "
            "ciphertexts and saw only the decrypted aggregate."
        )
    elif mode:
        s.append(f"Secure aggregation mode: {mode}.")
    if isinstance(results.get("audit"), Mapping) and results["audit"]:
        names = join_words([f"a {attack_label(str(k))}" for k in results["audit"]])
        s.append(f"The run was audited with {names} (results below).")
    return StatementPart("Protections in this run", tuple(s))


def _trust_part(results: Mapping[str, Any]) -> StatementPart | None:
    mode = secure_mode(results)
    t = threshold(results)
    n_clients, _ = clients(results)
    s: list[str] = []
    if mode in ("secagg+", "ckks"):
        if mode == "secagg+":
            collude = (
                " unless it colludes with enough of an organisation's neighbours to reach the "
                f"Shamir threshold, {threshold_phrase(t, n_clients)}"
                if t is not None
                else ""
            )
        else:
            collude = (
                " unless it colludes with organisations holding the decryption key (or enough "
                "of its shares)"
            )
        s.append(
            "The server is assumed honest-but-curious: it follows the protocol but may try "
            "to learn from what it receives; it never held an individual organisation's "
            f"update in the clear{collude}."
        )
        s.append(
            "The organisations taking part in a round learn who else takes part (the "
            "protocol exchanges keys among them)."
        )
    elif mode == "none":
        s.append("The server is trusted with every organisation's individual update.")
    if mode is not None:
        s.append(
            "Channels are assumed authenticated and encrypted (TLS on the Deployment Engine), "
            "so nobody else reads the updates; who talks to the server, and when, is visible "
            "to anyone watching the network, as it is to the server."
        )
    if privacy_on(results):
        unit = get_in(results, "privacy", "unit")
        central = get_in(results, "privacy", "noise") == "central"
        if unit == "client" and central:
            s.append(
                "The client-level noise was added by the server, which must be trusted to "
                "add it: no ε holds against the server."
            )
        elif distributed_noise(results):
            s.append(
                "The noise was shared out among the organisations: the ε bound holds for the "
                "aggregated sums and the model, provided the server does not collude with "
                "organisations to remove their shares. A single organisation's update, which "
                "nobody sees in the clear, carries only its share."
            )
        else:
            s.append(
                "Each organisation added its noise before its update left it: the ε bound "
                "holds against the server, the other organisations and whoever holds the "
                "models, whatever else they know."
            )
    return StatementPart("Trust assumptions", tuple(s))


def _observer_sentence(name: str, entry: Mapping[str, Any]) -> str:
    who = _OBSERVER_NAMES.get(name, name.replace("_", " "))
    why = entry.get("why")
    because = f" ({why})" if isinstance(why, str) and why else ""
    eps = entry.get("epsilon")
    total = eps.get("total") if isinstance(eps, Mapping) else None
    if not is_number(total):
        return f"Against {who}: no ε holds{because}."
    amp = (
        "with amplification by sampling"
        if entry.get("amplified")
        else "without amplification by sampling"
    )
    return f"Against {who}: ε = {fmt_eps(float(total))}, {amp}{because}."


def _budget_part(results: Mapping[str, Any], ledger: LedgerSummary | None) -> StatementPart | None:
    if not privacy_on(results):
        return None
    eps = epsilon(results)
    delta = get_in(results, "privacy", "delta")
    unit = get_in(results, "privacy", "unit")
    acc = get_in(results, "privacy", "accountant")
    observer = get_in(results, "privacy", "epsilon_observer")
    s: list[str] = []
    if "total" in eps:
        d = f", δ = {fmt_delta(float(delta))}" if is_number(delta) else ""
        who = {
            "example": " for any single record (the worst organisation's value)",
            "client": " for any single organisation's participation",
        }.get(unit, "")
        seen = (
            f", against {_OBSERVER_NAMES.get(str(observer), str(observer))}"
            if isinstance(observer, str)
            else ""
        )
        by = f", computed with the {str(acc).upper()} accountant" if acc else ""
        s.append(f"The whole run spent (ε = {fmt_eps(eps['total'])}{d}){who}{seen}{by}.")
    if get_in(results, "privacy", "adjacency") == "zero-out":
        s.append(
            "ε compares data sets that differ by one "
            + ("organisation's contribution" if unit == "client" else "record")
            + " replaced by a null one that contributes nothing (zero-out neighbours), so "
            "the number of "
            + ("organisations" if unit == "client" else "records an organisation holds")
            + " is public while their content is protected."
        )
    per = {k: v for k, v in eps.items() if k != "total"}
    if per:
        s.append(
            "Per modality: " + join_words([f"{m} ε = {fmt_eps(v)}" for m, v in per.items()]) + "."
        )
    for name, entry in observers(results).items():
        s.append(_observer_sentence(name, entry))
    target = budget_target(results)
    if target is not None and "total" in eps:
        rel = "within" if eps["total"] <= target + 1e-9 else "OVER"
        s.append(f"The configured budget was ε = {fmt_eps(target)}; the run is {rel} it.")
    if ledger is not None and ledger.error:
        s.append(f"The privacy ledger could not be read: {ledger.error}.")
    elif ledger is not None:
        s.append(
            f"The privacy ledger records {plural(ledger.releases, 'release')} over "
            f"{plural(len(ledger.rounds), 'round')}."
        )
        if ledger.recomputed is not None and "total" in ledger.recomputed and "total" in eps:
            ok = math.isclose(ledger.recomputed["total"], eps["total"], rel_tol=1e-6, abs_tol=1e-9)
            s.append(
                f"Recomputing ε from the ledger alone gives {fmt_eps(ledger.recomputed['total'])}"
                + (", the same value." if ok else ", which does NOT match the reported value.")
            )
        elif ledger.recompute_error:
            s.append(f"ε could not be recomputed from the ledger: {ledger.recompute_error}.")
    return StatementPart("Privacy budget", tuple(s))


def _attack_part(results: Mapping[str, Any]) -> StatementPart | None:
    audit = results.get("audit")
    if not isinstance(audit, Mapping) or not audit:
        return None
    s: list[str] = []
    for name, entry in audit.items():
        if is_membership_audit(entry):
            s.extend(membership_sentences(entry))
            continue
        if is_poisoning_audit(entry):
            s.extend(poisoning_sentences(entry))
            continue
        metrics = audit_metrics(entry)
        if not metrics:
            continue
        shown = list(metrics.items())[:4]
        phrases = join_words([metric_phrase(k, v) for k, v in shown])
        more = f" ({len(metrics) - len(shown)} more figures below)" if len(metrics) > 4 else ""
        s.append(f"The {attack_label(str(name))} reached {phrases}{more}.")
    return StatementPart("Attacks", tuple(s))
