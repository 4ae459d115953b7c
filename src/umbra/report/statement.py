"""The privacy statement: plain-language sentences generated from ``results.json``.

Every sentence is built from a field of the results (or of the ledger) and appears only
when that field is present; nothing about a run is written here as a fixed fact. The
wording of each protection follows the threat model of DESIGN.md ("Privacy semantics"):
an honest-but-curious server, clients that keep their raw data, authenticated and
encrypted channels whose traffic metadata (who talks to the server) is observable.

It reads what :func:`umbra.experiment.run_experiment` writes: ``secure_aggregation`` (a
mode string), ``config.secure.threshold`` (a *fraction* of a round's participants),
``privacy.{unit, noise, adjacency, budget, epsilon_observer, observers}`` (ε per observer,
:mod:`umbra.privacy.observers`) and ``data.tabular_standardization``.

Also here: :func:`summarize_ledger`, the figures of ``ledger.jsonl`` that the report shows
(and, through :func:`umbra.privacy.ledger.replay`, ε recomputed from the ledger alone).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

__all__ = [
    "LedgerSummary",
    "StatementPart",
    "attack_label",
    "audit_metrics",
    "fmt_bytes",
    "fmt_delta",
    "fmt_eps",
    "fmt_num",
    "get_in",
    "is_number",
    "privacy_on",
    "privacy_statement",
    "secure_mode",
    "summarize_ledger",
]

_MODALITY_NOUNS = {
    "image": "images",
    "audio": "audio recordings",
    "text": "texts",
    "tabular": "tabular values",
}
_ATTACK_NAMES = {
    "membership": "membership-inference attack",
    "membership_inference": "membership-inference attack",
    "mia": "membership-inference attack",
    "inversion": "gradient-inversion attack",
    "gradient_inversion": "gradient-inversion attack",
    "poisoning": "poisoning attack",
    "backdoor": "backdoor (poisoning) attack",
}
_METRIC_NAMES = {
    "auc": "AUC",
    "advantage": "advantage (TPR − FPR)",
    "accuracy": "accuracy",
    "attack_accuracy": "attack accuracy",
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "mse": "MSE",
    "attack_success_rate": "attack success rate",
    "success_rate": "success rate",
    "clean_accuracy": "clean accuracy",
    "tpr_at_fpr": "TPR at FPR",
}
#: What a metric's value would be for an attacker who only guesses.
_CHANCE = {"auc": 0.5, "advantage": 0.0}


# --------------------------------------------------------------------------- lenient access


def get_in(obj: Any, *keys: str, default: Any = None) -> Any:
    """``obj[k1][k2]...`` or ``default`` when any level is missing or not a mapping."""
    for k in keys:
        if not isinstance(obj, Mapping) or k not in obj:
            return default
        obj = obj[k]
    return default if obj is None else obj


def is_number(x: Any) -> TypeGuard[int | float]:
    """A finite int or float (not bool)."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def fmt_num(x: Any, digits: int = 4) -> str:
    """A number for people: integers with thousands separators, floats with ``digits``
    significant figures (scientific notation below 0.001 and from 1e6)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if not math.isfinite(x) or x == 0:
        return str(x) if x != 0 else "0"
    if 1e-3 <= abs(x) < 10**digits:
        return f"{x:.{digits}g}"
    if 10**digits <= abs(x) < 1e6:
        return f"{x:,.0f}"
    return f"{x:.{digits - 1}e}"


def fmt_eps(x: float) -> str:
    """ε for prose: two decimals (three significant figures below 0.1)."""
    return f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.3g}"


def fmt_delta(x: float) -> str:
    """δ for prose, e.g. ``1e-05``."""
    return f"{x:.3g}"


def fmt_bytes(n: float) -> str:
    """A byte count in decimal units (kB = 1000 B)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _join(words: Sequence[str]) -> str:
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'s' * (n != 1)}"


# --------------------------------------------------------------------------- facts


def privacy_on(results: Mapping[str, Any]) -> bool:
    """Differential privacy was active: ``privacy`` has an ε and a mode other than none."""
    p = results.get("privacy")
    if not isinstance(p, Mapping) or p.get("mode") in ("none", False):
        return False
    eps = p.get("epsilon")
    return is_number(eps) or (isinstance(eps, Mapping) and is_number(eps.get("total")))


def _epsilon(results: Mapping[str, Any]) -> dict[str, float]:
    eps = get_in(results, "privacy", "epsilon")
    if is_number(eps):
        return {"total": float(eps)}
    if isinstance(eps, Mapping):
        return {str(k): float(v) for k, v in eps.items() if is_number(v)}
    return {}


def secure_mode(results: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """``(mode, details)`` of ``secure_aggregation`` (a string, or an object with ``mode``)."""
    sa = results.get("secure_aggregation")
    if isinstance(sa, str):
        return sa, {}
    if isinstance(sa, Mapping) and isinstance(sa.get("mode"), str):
        return str(sa["mode"]), {str(k): v for k, v in sa.items() if k != "mode"}
    return None, {}


def _threshold(results: Mapping[str, Any], details: Mapping[str, Any]) -> float | None:
    """The unmasking threshold as a fraction of a round's participants, in (0, 1]."""
    for t in (details.get("threshold"), get_in(results, "config", "secure", "threshold")):
        if is_number(t) and 0 < t <= 1:
            return float(t)
    return None


def _threshold_phrase(t: float, n_clients: int | None) -> str:
    """``"67% of the round's organisations (3 of 4 when all take part)"``."""
    pct = f"{100 * t:.0f}% of the round's organisations"
    if n_clients:
        need = max(1, math.ceil(t * n_clients - 1e-9))
        return f"{pct} ({need} of {n_clients} when all take part)"
    return pct


def _clients(results: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(number of organisations, training records) from ``data`` (else the config)."""
    clients = get_in(results, "data", "clients")
    n_clients: int | None = None
    records: int | None = None
    if isinstance(clients, list) and clients:
        n_clients = len(clients)
        rec = [c.get("records") for c in clients if isinstance(c, Mapping)]
        nums = [int(r) for r in rec if is_number(r)]
        if rec and len(nums) == len(rec):
            records = sum(nums)
    else:
        n = get_in(results, "config", "federation", "num_clients")
        n_clients = int(n) if is_number(n) else None
    n_train = get_in(results, "data", "n_train")
    if records is None and is_number(n_train):
        records = int(n_train)
    return n_clients, records


def _modalities(results: Mapping[str, Any]) -> list[str]:
    mods = get_in(results, "data", "modalities")
    if isinstance(mods, list):
        return [str(m) for m in mods]
    per = get_in(results, "final", "per_modality_accuracy")
    return [str(m) for m in per if m != "fused"] if isinstance(per, Mapping) else []


def _bytes_total(results: Mapping[str, Any], key: str) -> float | None:
    tot = get_in(results, "bytes", f"{key}_total")
    if is_number(tot):
        return float(tot)
    rounds = results.get("rounds")
    if isinstance(rounds, list) and rounds:
        vals = [r.get(f"bytes_{key}") for r in rounds if isinstance(r, Mapping)]
        nums = [float(v) for v in vals if is_number(v)]
        if vals and len(nums) == len(vals):
            return sum(nums)
    return None


def attack_label(name: str) -> str:
    """Plain name of an attack key, e.g. ``membership`` -> ``membership-inference attack``."""
    return _ATTACK_NAMES.get(name, name.replace("_", " ") + " attack")


def audit_metrics(entry: Any, prefix: str = "") -> dict[str, float]:
    """Every finite scalar of an attack's result, nested keys joined with ``.``."""
    out: dict[str, float] = {}
    if is_number(entry):
        out[prefix or "value"] = float(entry)
    elif isinstance(entry, Mapping):
        for k, v in entry.items():
            out.update(audit_metrics(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _metric_label(key: str) -> str:
    """``auc`` -> ``AUC``; nested ``tpr_at_fpr.0.01`` -> ``TPR at FPR 0.01``."""
    head, _, rest = key.partition(".")
    label = _METRIC_NAMES.get(head, head.replace("_", " "))
    return f"{label} {rest}" if rest else label


def _metric_phrase(key: str, value: float) -> str:
    text = f"{_metric_label(key)} = {fmt_num(value, 3)}"
    if key in _CHANCE:
        text += f" (guessing gives {fmt_num(_CHANCE[key], 3)})"
    return text


# --------------------------------------------------------------------------- ledger


@dataclass(frozen=True)
class LedgerSummary:
    """Figures of a privacy ledger (``ledger.jsonl``).

    Attributes:
        lines: JSON lines read (the header included); ``unreadable``: lines skipped.
        header: the header object, if any.
        releases: distinct release numbers; ``rounds``: rounds that released.
        parties: distinct parties (clients, or the server).
        groups: per parameter group: ``{"lines", "steps", "noise_multiplier",
            "clip_norm", "sample_rate"}`` (the last three as sorted distinct values).
        recomputed: ε recomputed from the ledger alone (``{"total", <group>}``), or None.
        recompute_error: why it could not be recomputed, if it could not.
    """

    lines: int
    unreadable: int
    header: dict[str, Any]
    releases: int
    rounds: list[int]
    parties: int
    groups: dict[str, dict[str, Any]]
    recomputed: dict[str, float] | None = None
    recompute_error: str | None = None
    warnings: list[str] = field(default_factory=list)


def summarize_ledger(path: Path, *, recompute: bool = True) -> LedgerSummary | None:
    """Summarise ``path`` (None when it does not exist), optionally replaying ε."""
    if not path.is_file():
        return None
    objs: list[dict[str, Any]] = []
    unreadable = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            unreadable += 1
            continue
        if isinstance(obj, dict):
            objs.append(obj)
        else:
            unreadable += 1
    header = next((o for o in objs if o.get("type") == "header"), {})
    rel = [o for o in objs if o.get("type", "release") == "release"]
    groups: dict[str, dict[str, Any]] = {}
    for o in rel:
        g = groups.setdefault(
            str(o.get("group", "all")),
            {
                "lines": 0,
                "steps": 0,
                "noise_multiplier": set(),
                "clip_norm": set(),
                "sample_rate": set(),
            },
        )
        g["lines"] += 1
        if is_number(o.get("steps")):
            g["steps"] += int(o["steps"])
        for k in ("noise_multiplier", "clip_norm", "sample_rate"):
            if is_number(o.get(k)):
                g[k].add(float(o[k]))
    for g in groups.values():
        for k in ("noise_multiplier", "clip_norm", "sample_rate"):
            g[k] = sorted(g[k])
    recomputed: dict[str, float] | None = None
    error: str | None = None
    notes: list[str] = []
    if recompute and rel:
        recomputed, error, notes = _replay(path)
    return LedgerSummary(
        lines=len(objs),
        unreadable=unreadable,
        header=header,
        releases=len({o.get("release", i) for i, o in enumerate(rel)}),
        rounds=sorted({int(o["round"]) for o in rel if is_number(o.get("round"))}),
        parties=len({str(o.get("party")) for o in rel if "party" in o}),
        groups=groups,
        recomputed=recomputed,
        recompute_error=error,
        warnings=notes,
    )


def _replay(path: Path) -> tuple[dict[str, float] | None, str | None, list[str]]:
    """ε from the ledger through the privacy layer's replay (dp-accounting)."""
    import warnings

    try:
        from umbra.privacy.ledger import replay
    except ImportError as exc:  # the privacy layer is optional for rendering a report
        return None, f"the ledger replay is unavailable ({exc})", []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rep = replay(path)
        except (ValueError, KeyError, TypeError, OSError) as exc:  # DataError is a ValueError
            return None, str(exc), [str(w.message) for w in caught]
    return {k: float(v) for k, v in rep.epsilon.items()}, None, [str(w.message) for w in caught]


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
    n_clients, records = _clients(results)
    mods = _modalities(results)
    nouns = _join([_MODALITY_NOUNS.get(m, m) for m in mods]) or "records"
    s: list[str] = []
    source = get_in(results, "data", "manifest") or get_in(results, "config", "data", "manifest")
    if get_in(results, "data", "source") == "manifest" and source:
        s.append(f"The records came from the manifest {source}.")
    skipped = get_in(results, "data", "skipped_rows")
    if is_number(skipped) and skipped > 0:
        s.append(f"{_plural(int(skipped), 'bad manifest row')} were skipped before training.")
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
    up, down = _bytes_total(results, "up"), _bytes_total(results, "down")
    rounds = results.get("rounds")
    n_rounds = len(rounds) if isinstance(rounds, list) else None
    if up is not None and down is not None:
        over = f" over {_plural(n_rounds, 'round')}" if n_rounds else ""
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


def _observers(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    obs = get_in(results, "privacy", "observers")
    if not isinstance(obs, Mapping):
        return {}
    return {str(k): dict(v) for k, v in obs.items() if isinstance(v, Mapping)}


def _protections_part(results: Mapping[str, Any]) -> StatementPart | None:
    s: list[str] = []
    mode, details = secure_mode(results)
    n_clients, _ = _clients(results)
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
                    if _distributed(results)
                    else "norm; the server added Gaussian noise to the sum"
                ),
            }.get(unit, "")
            if unit == "example" and _distributed(results):
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
    t = _threshold(results, details)
    if mode == "none":
        s.append(
            "Secure aggregation was off: the server received each organisation's model "
            "update in the clear."
        )
    elif mode == "secagg+":
        need = f" of at least {_threshold_phrase(t, n_clients)}" if t is not None else ""
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
    dropped = details.get("dropped")
    if is_number(dropped) and dropped > 0:
        s.append(
            f"{_plural(int(dropped), 'organisation')} dropped out during aggregation; "
            "the protocol recovered the sum of the others."
        )
    if isinstance(results.get("audit"), Mapping) and results["audit"]:
        names = _join([f"a {attack_label(str(k))}" for k in results["audit"]])
        s.append(f"The run was audited with {names} (results below).")
    return StatementPart("Protections in this run", tuple(s))


def _trust_part(results: Mapping[str, Any]) -> StatementPart | None:
    mode, details = secure_mode(results)
    t = _threshold(results, details)
    n_clients, _ = _clients(results)
    s: list[str] = []
    if mode in ("secagg+", "ckks"):
        if mode == "secagg+":
            collude = (
                " unless it colludes with enough of an organisation's neighbours to reach the "
                f"Shamir threshold, {_threshold_phrase(t, n_clients)}"
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
        elif _distributed(results):
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


def _distributed(results: Mapping[str, Any]) -> bool:
    return get_in(results, "privacy", "noise") == "distributed"


def _budget_target(results: Mapping[str, Any]) -> float | None:
    for t in (
        get_in(results, "privacy", "budget", "epsilon"),
        get_in(results, "privacy", "target_epsilon"),
    ):
        if is_number(t):
            return float(t)
    return None


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
    eps = _epsilon(results)
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
        s.append("Per modality: " + _join([f"{m} ε = {fmt_eps(v)}" for m, v in per.items()]) + ".")
    for name, entry in _observers(results).items():
        s.append(_observer_sentence(name, entry))
    target = _budget_target(results)
    if target is not None and "total" in eps:
        rel = "within" if eps["total"] <= target + 1e-9 else "OVER"
        s.append(f"The configured budget was ε = {fmt_eps(target)}; the run is {rel} it.")
    if ledger is not None:
        s.append(
            f"The privacy ledger records {_plural(ledger.releases, 'release')} over "
            f"{_plural(len(ledger.rounds), 'round')}."
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
        metrics = audit_metrics(entry)
        if not metrics:
            continue
        shown = list(metrics.items())[:4]
        phrases = _join([_metric_phrase(k, v) for k, v in shown])
        more = f" ({len(metrics) - len(shown)} more figures below)" if len(metrics) > 4 else ""
        s.append(f"The {attack_label(str(name))} reached {phrases}{more}.")
    return StatementPart("Attacks", tuple(s))
