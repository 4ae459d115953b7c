"""Attack results of ``results.json``'s ``audit`` object, named and phrased for people."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from umbra.report.format import fmt_num, is_number

__all__ = ["attack_label", "audit_metrics", "metric_phrase"]

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
