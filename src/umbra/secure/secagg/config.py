"""The public parameters of one SecAgg+ round (:class:`SecAggConfig`), which the server
sends to every client and each client checks against its own configuration."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from umbra.secure.secagg.constants import RING_BITS, RING_WIDTHS, Key
from umbra.secure.secagg.errors import ProtocolViolation
from umbra.secure.secagg.graph import graph_parameters
from umbra.secure.secagg.messages import Message

__all__ = ["SecAggConfig"]


@dataclass(frozen=True)
class SecAggConfig:
    """Public parameters of one SecAgg+ round, sent by the server to every client.

    ``threshold`` (t) is the minimum number of surviving clients; ``share_threshold``
    (tau) is the Shamir threshold inside each neighbourhood of ``degree + 1`` holders
    (the owner holds one share). Defaults: `graph.graph_parameters` - the complete graph
    with ``tau = t`` up to ``COMPLETE_GRAPH_MAX_CLIENTS`` clients, so any ``n - t``
    dropouts are recovered; beyond, Bell et al.'s degree and threshold for the configured
    security and correctness. An explicit ``degree`` without ``share_threshold`` gets
    ``tau = t`` on the complete graph, else ``ceil(t (degree + 1) / n)`` (at least 2):
    explicit parameters carry no statistical guarantee.

    ``ring_bits``: the masked vectors' ring Z_{2^bits} (`RING_WIDTHS`); the masks are
    uniform in it whatever its width, so the width decides only the encoding's precision
    and headroom (`umbra.secure.secagg.quantize`) and the bytes on the wire.
    """

    round_number: int
    num_clients: int
    threshold: int
    vector_length: int
    degree: int = -1
    share_threshold: int = -1
    ring_bits: int = RING_BITS

    def __post_init__(self) -> None:
        n = self.num_clients
        if self.round_number < 0:
            raise ValueError(f"round_number must be >= 0, got {self.round_number}")
        if not 1 <= n <= 1 << 16:
            raise ValueError(f"num_clients must be in [1, 65536], got {n}")
        if not 1 <= self.threshold <= n:
            raise ValueError(f"threshold must be in [1, num_clients={n}], got {self.threshold}")
        if self.vector_length < 0:
            raise ValueError(f"vector_length must be >= 0, got {self.vector_length}")
        if self.ring_bits not in RING_WIDTHS:
            raise ValueError(f"ring_bits must be one of {RING_WIDTHS}, got {self.ring_bits}")
        if self.degree == -1 and self.share_threshold == -1:
            params = graph_parameters(n, self.threshold)
            object.__setattr__(self, "degree", params.degree)
            object.__setattr__(self, "share_threshold", params.share_threshold)
            return
        degree = graph_parameters(n, self.threshold).degree if self.degree == -1 else self.degree
        if not 0 <= degree <= max(n - 1, 0):
            raise ValueError(f"degree must be in [0, {n - 1}], got {degree}")
        if degree < n - 1:
            degree = min(n - 1, degree + degree % 2)  # Harary graphs use even degrees
        object.__setattr__(self, "degree", degree)
        if self.share_threshold == -1:
            if degree >= n - 1:
                tau = self.threshold
            else:
                tau = max(2, math.ceil(self.threshold * (degree + 1) / n))
            object.__setattr__(self, "share_threshold", min(tau, degree + 1))
        if not 1 <= self.share_threshold <= degree + 1:
            raise ValueError(
                f"share_threshold must be in [1, degree+1={degree + 1}], got {self.share_threshold}"
            )
        if self.share_threshold == 1 and n > 1:
            warnings.warn(
                "share_threshold=1 hands every neighbour the secrets in clear", stacklevel=2
            )

    @property
    def complete(self) -> bool:
        """Every client is every other's neighbour (no graph seed is needed)."""
        return self.degree >= self.num_clients - 1

    def to_message(self) -> Message:
        return {
            Key.ROUND: self.round_number,
            Key.NUM_CLIENTS: self.num_clients,
            Key.THRESHOLD: self.threshold,
            Key.VECTOR_LENGTH: self.vector_length,
            Key.DEGREE: self.degree,
            Key.SHARE_THRESHOLD: self.share_threshold,
            Key.RING_BITS: self.ring_bits,
        }

    @classmethod
    def from_message(cls, msg: Mapping[str, Any]) -> SecAggConfig:
        try:
            return cls(
                round_number=int(msg[Key.ROUND]),
                num_clients=int(msg[Key.NUM_CLIENTS]),
                threshold=int(msg[Key.THRESHOLD]),
                vector_length=int(msg[Key.VECTOR_LENGTH]),
                degree=int(msg[Key.DEGREE]),
                share_threshold=int(msg[Key.SHARE_THRESHOLD]),
                ring_bits=int(msg[Key.RING_BITS]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ProtocolViolation(f"malformed configuration message: {err}") from err
