"""``results.json``'s ``audit.poisoning``: the planted attack, the server's defences, how
well screening found the attackers and how well the reputation excluded them (precision
and recall over client-rounds, with the clients' final reputations) and, for a backdoor,
its success rate on the held-out test set (docs/robustness.md). Written for a
run with a planted attack (``attack.kind``), separately from the other audits."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from umbra.config import Config
from umbra.data.dataset import MultimodalData
from umbra.federation.attacks import AttackSpec, backdoor_success_rate
from umbra.federation.detection import detection_quality
from umbra.models import MultimodalNet

__all__ = ["poisoning_results"]


def poisoning_results(
    cfg: Config, history: Sequence[dict[str, Any]], model: torch.nn.Module, test: MultimodalData
) -> dict[str, Any] | None:
    """The ``audit.poisoning`` object, or None for a run without a planted attack (its
    defences are in the config and its per-round flags in the rows)."""
    fed = cfg.federation
    if cfg.attack.kind == "none":
        return None
    spec = AttackSpec.from_config(cfg)
    attack: dict[str, Any] = {"kind": spec.kind, "attackers": list(spec.attackers)}
    if spec.kind == "scale":
        attack["scale"] = spec.scale
    if spec.kind == "backdoor":
        attack.update(target_class=spec.target_class, trigger_modality=spec.trigger_modality,
                      trigger_size=spec.trigger_size, trigger_value=spec.trigger_value,
                      poison_fraction=spec.poison_fraction)  # fmt: skip
    # outcomes first: readers (the report) show an audit entry's leading figures
    out: dict[str, Any] = {}
    if spec.kind == "backdoor" and isinstance(model, MultimodalNet):
        rate, n = backdoor_success_rate(model, test, spec)
        out["backdoor"] = {"success_rate": rate, "records": n}
    if fed.detect:
        rounds = [(r["screened"], r.get("flagged", [])) for r in history if "screened" in r]
        flagged = Counter(p for _, f in rounds for p in f)
        out["detection"] = {
            **detection_quality(rounds, spec.attackers),
            "k": fed.detect_k,
            "rounds": len(rounds),
            "flagged_rounds": {str(p): n for p, n in sorted(flagged.items())},
        }
    if fed.reputation:
        left_out = [(r["screened"], r["excluded"]) for r in history if "excluded" in r]
        excluded = Counter(p for _, e in left_out for p in e)
        last: dict[str, Any] = next((r for r in reversed(history) if "reputation" in r), {})
        out["reputation"] = {
            **detection_quality(left_out, spec.attackers),
            "k": fed.reputation_k,
            "warmup": fed.reputation_warmup,
            "min_cosine": fed.reputation_min_cosine,
            "max_response": fed.reputation_max_response,
            "rounds": len(left_out),
            "excluded_rounds": {str(p): n for p, n in sorted(excluded.items())},
            "excluded_final": list(last.get("excluded", [])),
            "scores": dict(last.get("reputation", {})),
        }
    robust = fed.aggregator in ("krum", "multi-krum", "bulyan")
    out["attack"] = attack
    out["defence"] = {
        "aggregator": fed.aggregator,
        "trim_fraction": fed.trim_fraction if fed.aggregator == "trimmed-mean" else None,
        "byzantine": fed.byzantine if robust else None,
        "clip_updates": fed.clip_updates,
        "detect": fed.detect,
        "reputation": fed.reputation,
        "centered_clip": (
            {"tau": fed.centered_clip_tau, "iterations": fed.centered_clip_iterations,
             "beta": fed.centered_clip_beta}
            if fed.aggregator == "centered-clip" else None
        ),
        "bucket_size": fed.bucket_size,
    }  # fmt: skip
    return out
