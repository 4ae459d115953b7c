"""Umbra: privacy-preserving multimodal federated learning on Flower."""

from __future__ import annotations

import warnings

# flwr 1.42 ships protobuf gencode 5.29 and runs on protobuf 6.30 (pinned by openmined-psi);
# the mismatch is supported but warns once per .proto file.
warnings.filterwarnings("ignore", message="Protobuf gencode version", category=UserWarning)

__version__ = "0.1.0"
__all__ = ["__version__"]
