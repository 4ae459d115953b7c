"""FedProx (Li et al. 2020, https://arxiv.org/abs/1812.06127) with modality-aware averaging.

Flower's own FedProx sends ``proximal-mu`` to the clients; the client adds
``μ/2 ||w - w_global||²`` to its loss. Averaging is :class:`ModalityFedAvg`'s.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedProx

from umbra.federation.strategies.modality import ModalityFedAvg

__all__ = ["UmbraFedProx"]


class UmbraFedProx(FedProx, ModalityFedAvg):
    """Flower's FedProx whose averaging step is modality-aware (MRO: FedProx -> ModalityFedAvg)."""
