"""The server's side of update compression: announce the round's codec in every train
message and decode each compressed reply to full weights before the strategy sees it.

Runs on the server. It learns nothing a plaintext round would not show it: the decoded
update is what the client chose to send. The ``shared-k`` coordinates derive from the
run seed and the round (:func:`~umbra.federation.compression.shared_seed`): they are
public, the same for every client of a round, and recomputed here to decode.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Message

from umbra.federation.common import from_record, metric_int, reply_metrics, to_record
from umbra.federation.compression import (
    COMPRESS_DENSE,
    COMPRESS_FEEDBACK,
    METHODS,
    SEP,
    codec,
    decode_arrays,
)
from umbra.privacy.controller import DP_UNWEIGHTED
from umbra.secure.shared_coordinates import (
    COMPRESS_FRACTION,
    COMPRESS_METHOD,
    COMPRESS_SEED,
    shared_seed,
)

__all__ = ["Compression"]

log = logging.getLogger("umbra")


@dataclass(frozen=True)
class Compression:
    """The run's ``compression`` settings as the server applies them.

    ``method``: one of :data:`~umbra.federation.compression.METHODS`; ``fraction``: the
    sparsifiers' share of coordinates, in (0, 1]; ``error_feedback``: sparsifying clients
    carry what they did not send into their next update; ``run_seed``: the public seed
    the ``shared-k`` coordinates derive from.
    """

    method: str = "none"
    fraction: float = 0.1
    error_feedback: bool = True
    run_seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"compression.method must be one of {METHODS}, got {self.method!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"compression.fraction must be in (0, 1], got {self.fraction}")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def announce(
        self, messages: Iterable[Message], server_round: int, *, dense: bool = False
    ) -> None:
        """Write the round's codec into each train message's ``config`` record.

        ``dense``: the secure transport sparsifies (``shared-k`` under SecAgg+), so the
        clients reply with ``x`` + their sent update at full shape instead of codes."""
        if not self.enabled:
            return
        sparse = self.method in ("topk", "shared-k")
        for m in messages:
            config = m.content.config_records["config"]
            config[COMPRESS_METHOD] = self.method
            config[COMPRESS_FRACTION] = float(self.fraction)
            config[COMPRESS_FEEDBACK] = bool(self.error_feedback and sparse)
            config[COMPRESS_SEED] = shared_seed(self.run_seed, server_round)
            config[COMPRESS_DENSE] = dense

    def decode(self, msg: Message, x: Mapping[str, np.ndarray], server_round: int) -> bool:
        """Replace ``msg``'s compressed arrays by full ones, in place: ``x + Δ̂`` for the
        model keys (``Δ̂`` itself for a DP update, which is a delta), in ``x``'s key order
        (strategies pair arrays by position), then the uncompressed rest (``cv.``).

        Returns False (and logs the client's partition) for a reply whose codes do not
        decode to ``x``'s shapes; True otherwise (and always without compression)."""
        if not self.enabled:
            return True
        wire = from_record(msg.content.array_records["arrays"])
        dp = metric_int(reply_metrics(msg), DP_UNWEIGHTED, 0) == 1
        shapes = {k: tuple(np.shape(v)) for k, v in x.items()}
        try:
            delta = decode_arrays(
                {k: v for k, v in wire.items() if SEP in k},
                shapes,
                codec(self.method, self.fraction),
                seed=shared_seed(self.run_seed, server_round),
                fraction=self.fraction,
            )
        except (ValueError, IndexError, KeyError) as err:
            log.warning("round %d: a compressed reply does not decode: %s", server_round, err)
            return False
        dtype = {k: np.asarray(v).dtype for k, v in x.items()}
        full = {
            k: (d if dp else np.asarray(x[k], dtype=np.float64) + d).astype(dtype[k])
            for k, d in delta.items()
        }
        full.update({k: v for k, v in wire.items() if SEP not in k})
        msg.content.array_records["arrays"] = to_record(full)
        return True
