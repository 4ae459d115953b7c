"""Heterogeneous organisations: per-organisation architectures joined by averaging what
matches and FedDF ensemble distillation on an unlabeled transfer set; cross-modal
retrieval to measure alignment through a pivot modality (docs/heterogeneous.md)."""

from umbra.federation.hetero.distillation import (
    DistillSettings,
    distil,
    ensemble_logits,
    kl_to_ensemble,
)
from umbra.federation.hetero.ensemble import evaluate_ensemble
from umbra.federation.hetero.federation import HeteroResult, check_hetero_config, run_hetero
from umbra.federation.hetero.organisations import check_joinable, organisation_specs
from umbra.federation.hetero.retrieval import cross_modal_recall, recall_at_k
from umbra.federation.hetero.transfer import (
    check_transfer,
    hold_out_transfer,
    load_transfer_manifest,
    transfer_set,
)

__all__ = [
    "DistillSettings",
    "HeteroResult",
    "check_hetero_config",
    "check_joinable",
    "check_transfer",
    "cross_modal_recall",
    "distil",
    "ensemble_logits",
    "evaluate_ensemble",
    "hold_out_transfer",
    "kl_to_ensemble",
    "load_transfer_manifest",
    "organisation_specs",
    "recall_at_k",
    "run_hetero",
    "transfer_set",
]
