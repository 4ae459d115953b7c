"""Attack results of ``results.json``'s ``audit`` object, named and phrased for people."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from umbra.report.format import fmt_delta, fmt_eps, fmt_num, get_in, is_number, join_words

__all__ = [
    "MEMBERSHIP_ATTACKS",
    "attack_label",
    "audit_metrics",
    "ceiling_sentence",
    "is_membership_audit",
    "is_poisoning_audit",
    "membership_sentences",
    "metric_phrase",
    "pct",
    "poisoning_rows",
    "poisoning_sentences",
    "reconstruction_rows",
]

#: The attacks of ``audit.membership.attacks`` (umbra.audit), named for people.
MEMBERSHIP_ATTACKS = {"loss": "loss threshold", "lira": "offline LiRA"}

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


def metric_phrase(key: str, value: float) -> str:
    """``AUC = 0.531 (guessing gives 0.5)``: a metric, and chance where it has one."""
    text = f"{_metric_label(key)} = {fmt_num(value, 3)}"
    if key in _CHANCE:
        text += f" (guessing gives {fmt_num(_CHANCE[key], 3)})"
    return text


def pct(x: float) -> str:
    """A rate as a percentage for prose: ``0.012`` -> ``1.2 %``, ``0.001`` -> ``0.1 %``."""
    return f"{fmt_num(100 * x, 3)} %"


def is_membership_audit(entry: Any) -> bool:
    """Whether ``entry`` is umbra.audit's membership object (it has ``attacks`` with AUCs)."""
    attacks = entry.get("attacks") if isinstance(entry, Mapping) else None
    return (
        isinstance(attacks, Mapping)
        and bool(attacks)
        and all(isinstance(a, Mapping) and is_number(a.get("auc")) for a in attacks.values())
    )


def _top_fpr(entry: Mapping[str, Any]) -> str | None:
    """The largest FPR key at which the attacks report a TPR."""
    keys = {str(f) for a in entry["attacks"].values() for f in (a.get("tpr_at_fpr") or {})}
    return max(keys, key=float) if keys else None


def ceiling_sentence(entry: Mapping[str, Any]) -> str | None:
    """How the measured curves compare with the DP ceiling (None without DP)."""
    at = _top_fpr(entry)
    dp = entry.get("dp")
    if not isinstance(dp, Mapping) or not is_number(dp.get("epsilon")):
        return None
    cap = (
        dp.get("ceiling_at_fpr", {}).get(at)
        if isinstance(dp.get("ceiling_at_fpr"), Mapping)
        else None
    )
    checks = {
        MEMBERSHIP_ATTACKS.get(str(k), str(k)): a.get("dp_ceiling_check")
        for k, a in entry["attacks"].items()
    }
    above = {
        k: c for k, c in checks.items() if isinstance(c, Mapping) and not c.get("under_ceiling")
    }
    text = f"The differential-privacy guarantee against the model holder (ε = {fmt_eps(dp['epsilon'])}, δ = {fmt_delta(float(dp.get('delta') or 0.0))})"
    text += (
        f" caps any membership test at {pct(cap)} of members at {pct(float(at))} FPR"
        if is_number(cap) and at is not None
        else " caps any membership test"
    )
    if not above:
        return text + "; the measured curves stay under that ceiling."
    sig = [k for k, c in above.items() if c.get("significant_violation")]
    worst = max(float(c.get("max_excess", 0.0)) for c in above.values())
    n1, n0 = get_count(entry, "members"), get_count(entry, "non_members")
    sample = f"{n1:,} members and {n0:,} non-members" if n1 and n0 else "a finite sample"
    return text + (
        f"; the {join_words(sorted(above))} curve rises above it by up to "
        f"{fmt_num(worst, 3)} in TPR at some point"
        + (
            ", more than chance allows: the guarantee or its accounting is in doubt."
            if sig
            else f", within the chance variation of {sample} "
            "(no point lies above it at the 95 % confidence ends)."
        )
    )


def get_count(entry: Mapping[str, Any], side: str) -> int | None:
    """``members.count`` / ``non_members.count`` of a membership object, if present."""
    part = entry.get(side)
    n = part.get("count") if isinstance(part, Mapping) else None
    return int(n) if is_number(n) else None


def membership_sentences(entry: Mapping[str, Any]) -> list[str]:
    """The statement's sentences for umbra.audit's membership object, from its numbers:
    the AUC of each attack, what the strongest finds at the largest reported FPR, and how
    the curves compare with the DP ceiling."""
    attacks = {str(k): v for k, v in entry["attacks"].items()}
    aucs = join_words(
        [f"{fmt_num(a['auc'], 3)} ({MEMBERSHIP_ATTACKS.get(k, k)})" for k, a in attacks.items()]
    )
    n1, n0 = get_count(entry, "members"), get_count(entry, "non_members")
    among = f" among {n1:,} members and {n0:,} non-members" if n1 and n0 else ""
    s = [
        "Whoever holds the final model tells the run's training records from records it "
        f"never saw{among} with AUC {aucs}; guessing gives 0.5."
    ]
    at = _top_fpr(entry)
    found = {
        k: a["tpr_at_fpr"][at]
        for k, a in attacks.items()
        if at is not None
        and isinstance(a.get("tpr_at_fpr"), Mapping)
        and is_number(a["tpr_at_fpr"].get(at))
    }
    if found and at is not None:
        best = max(found, key=lambda k: found[k])  # the attack that finds the most there
        s.append(
            f"At {pct(float(at))} false positives the {MEMBERSHIP_ATTACKS.get(best, best)} "
            f"attack finds {pct(found[best])} of members (guessing finds {pct(float(at))})."
        )
    ceiling = ceiling_sentence(entry)
    if ceiling:
        s.append(ceiling)
    return s


def reconstruction_rows(recon: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The reconstruction audit as one row per view (what the server sees) and method,
    one column per modality: records recovered exactly / records attacked, the median
    feature cosine and, for images, PSNR beside the label-only floor (the PSNR of one mean
    public image per label the observer learns). ([], []) when ``recon`` has no views."""
    views = recon.get("views")
    if not isinstance(views, Mapping):
        return [], []
    methods = [(str(view), str(method), per) for view, found in views.items()
               if isinstance(found, Mapping) for method, per in found.items()
               if isinstance(per, Mapping) and any(isinstance(x, Mapping) for x in per.values())]  # fmt: skip
    modalities = sorted({str(m) for _, _, per in methods for m, x in per.items()
                         if isinstance(x, Mapping)})  # fmt: skip
    rows = []
    for view, method, per in methods:
        cells = [view, method]
        for m in modalities:
            x = per.get(m)
            if not isinstance(x, Mapping):
                cells.append("")
                continue
            cell = f"{x.get('exact', '-')}/{x.get('records', '-')}"
            if is_number(x.get("feature_cosine")):
                cell += f", {float(x['feature_cosine']):.2f}"
            if is_number(x.get("psnr")):
                cell += f", {float(x['psnr']):.1f} dB"
                # what the labels alone give the observer: the PSNR to beat
                if is_number(x.get("label_floor_psnr")):
                    cell += f" (labels alone {float(x['label_floor_psnr']):.1f} dB)"
            cells.append(cell)
        rows.append(cells)
    return ["what the server sees", "method", *modalities], rows


def poisoning_rows(entry: Mapping[str, Any]) -> tuple[list[list[Any]], list[list[Any]]]:
    """The poisoning audit (``audit.poisoning``) as two tables' rows: per detector (the
    per-round screening, the reputation's exclusions) precision, recall, attacker
    client-rounds found and honest client-rounds caught; and per client its final
    reputation (rounds, mean cosine, mean log-norm ratio, and the mean response where the
    response rule ran), whether it was excluded at the end and whether it was a planted
    attacker. Empty lists where the run had neither."""
    attackers = {int(p) for p in get_in(entry, "attack", "attackers") or []}
    detectors = []
    for key, label in (("detection", "per-round screening"), ("reputation", "reputation")):
        q = entry.get(key)
        if isinstance(q, Mapping):
            detectors.append([label, q.get("precision"), q.get("recall"),
                              q.get("true_positives"), q.get("false_positives")])  # fmt: skip
    rep = entry.get("reputation")
    clients: list[list[Any]] = []
    if isinstance(rep, Mapping) and isinstance(rep.get("scores"), Mapping):
        final = {int(p) for p in rep.get("excluded_final") or []}
        scores = [(int(p), r) for p, r in rep["scores"].items() if isinstance(r, Mapping)]
        response = any("response" in r for _, r in scores)
        for pid, r in sorted(scores, key=lambda kv: kv[0]):
            clients.append([pid, "attacker" if pid in attackers else "honest", r.get("rounds"),
                            r.get("cosine"), r.get("log_norm"),
                            *([r.get("response")] if response else []),
                            "yes" if pid in final else "no"])  # fmt: skip
    return detectors, clients


#: The defences that flag clients: their ``defence`` switch, their entry in
#: ``audit.poisoning``, and their name for people.
_DETECTORS = (
    ("detect", "detection", "per-round screening"),
    ("reputation", "reputation", "the reputation over rounds"),
)


def is_poisoning_audit(entry: Any) -> bool:
    """Whether ``entry`` is the poisoning object (it names its ``attack`` and ``defence``)."""
    return (
        isinstance(entry, Mapping)
        and isinstance(entry.get("attack"), Mapping)
        and isinstance(entry.get("defence"), Mapping)
    )


def poisoning_sentences(entry: Mapping[str, Any]) -> list[str]:
    """The statement's sentences for the poisoning object, from its numbers: who attacked
    how, against which defences, what each detector caught, and a backdoor's success."""
    attack, defence = entry["attack"], entry["defence"]
    attackers = [str(a) for a in attack.get("attackers", [])]
    who = ("organisation " if len(attackers) == 1 else "organisations ") + join_words(attackers)
    kind = str(attack.get("kind", "an attack"))
    if kind == "scale" and is_number(attack.get("scale")):
        kind = f"scaling ×{fmt_num(attack['scale'], 3)}"
    used = [f"the {defence['aggregator']} aggregator"] if defence.get("aggregator") else []
    if defence.get("clip_updates") is not None:
        used.append("update-norm clipping")
    used += [name for switch, _, name in _DETECTORS if defence.get(switch)]
    s = [f"A poisoning attack was planted on purpose: {kind} by {who}, against "
         f"{join_words(used) or 'no defence'}."]  # fmt: skip
    for _, key, name in _DETECTORS:
        found = entry.get(key)
        if not isinstance(found, Mapping) or not is_number(found.get("recall")):
            continue
        caught, missed = found.get("true_positives"), found.get("false_negatives")
        honest = found.get("false_positives")
        share = f"{pct(found['recall'])} of the attacker client-rounds"
        if isinstance(caught, int) and isinstance(missed, int):
            share = f"{caught} of {caught + missed} attacker client-rounds ({pct(found['recall'])})"
        s.append(f"{name[0].upper()}{name[1:]} caught {share}"
                 + (f" and {honest} honest ones" if is_number(honest) else "")
                 + (f" (precision {fmt_num(found['precision'], 3)})."
                    if is_number(found.get("precision")) else "."))  # fmt: skip
    backdoor = entry.get("backdoor")
    if isinstance(backdoor, Mapping) and is_number(backdoor.get("success_rate")):
        s.append(f"The backdoor moved {pct(backdoor['success_rate'])} of the triggered test "
                 "records of other classes to its target class.")  # fmt: skip
    return s
