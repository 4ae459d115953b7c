"""The server's side of update compression: announce the round's codec in every train
message and decode each compressed reply to full weights before the strategy sees it.

Runs on the server. It learns nothing a plaintext round would not show it: the decoded
update is what the client chose to send. The ``shared-k`` coordinates are public and the
same for every client of a round (:mod:`umbra.secure.shared_coordinates`): the cyclic
block from the run seed and the round, and, with ``support = "last-update"``, the top
coordinates of the last global update, which the server computes from the two global
models it sent (the previous released aggregate) and announces as bit masks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message

from umbra.federation.common import from_record, metric_int, reply_metrics, to_record
from umbra.federation.compression import (
    COMPRESS_DENSE,
    COMPRESS_FEEDBACK,
    METHODS,
    SEP,
    VALUE_BITS,
    codec,
    decode_arrays,
)
from umbra.privacy.controller import DP_UNWEIGHTED
from umbra.secure.shared_coordinates import (
    COMPRESS_BITS,
    COMPRESS_CYCLIC_SHARE,
    COMPRESS_FRACTION,
    COMPRESS_MASK_PREFIX,
    COMPRESS_METHOD,
    COMPRESS_SEED,
    SHARED_METHOD,
    SUPPORTS,
    RoundCoordinates,
    kept_count,
    pack_mask,
    shared_seed,
    top_mask,
)

__all__ = ["Compression"]

log = logging.getLogger("umbra")


@dataclass
class Compression:
    """The run's ``compression`` settings as the server applies them (one per run).

    ``method``: one of :data:`~umbra.federation.compression.METHODS`; ``fraction``: the
    sparsifiers' share of coordinates, in (0, 1]; ``error_feedback``: sparsifying clients
    carry what they did not send into their next update; ``run_seed``: the public seed
    the ``shared-k`` coordinates derive from; ``support``: ``shared-k``'s coordinates
    (:data:`~umbra.secure.shared_coordinates.SUPPORTS`); ``cyclic_share``: with
    ``last-update``, the share of each array's coordinates from the cyclic block;
    ``value_bits``: the width of ``shared-k``'s kept values (32: float32; 16 / 8:
    stochastic codes; under SecAgg+, 16 selects the protocol's 16-bit ring).

    Keeps the last global model it announced (``last-update`` support: the next round's
    top coordinates come from the global update between the two) and each round's
    coordinates, to decode that round's replies.
    """

    method: str = "none"
    fraction: float = 0.1
    error_feedback: bool = True
    run_seed: int = 0
    support: str = "cyclic"
    cyclic_share: float = 0.5
    value_bits: int = 32
    _last: tuple[int, dict[str, np.ndarray]] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _rounds: dict[int, RoundCoordinates] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"compression.method must be one of {METHODS}, got {self.method!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"compression.fraction must be in (0, 1], got {self.fraction}")
        if self.support not in SUPPORTS:
            raise ValueError(f"compression.support must be one of {SUPPORTS}, got {self.support!r}")
        if not 0.0 < self.cyclic_share <= 1.0:
            raise ValueError(f"compression.cyclic_share must be in (0, 1], got {self.cyclic_share}")
        if self.value_bits not in VALUE_BITS:
            raise ValueError(
                f"compression.value_bits must be one of {VALUE_BITS}, got {self.value_bits}"
            )

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def coordinates(
        self, server_round: int, x: Mapping[str, np.ndarray] | None = None
    ) -> RoundCoordinates:
        """The ``shared-k`` coordinates of ``server_round`` whose global model is ``x``.

        ``last-update`` with the global model of an earlier round at hand: the top
        coordinates of ``x - x_prev`` (per array, :func:`top_mask`); else all cyclic.
        Remembered for :meth:`decode`; ``x`` becomes the next round's ``x_prev``."""
        seed = shared_seed(self.run_seed, server_round)
        if server_round in self._rounds:
            return self._rounds[server_round]
        masks: dict[str, bytes] = {}
        if self.support == "last-update" and x is not None:
            last = self._last
            if last is not None and last[0] < server_round:
                prev = last[1]
                for k, v in x.items():
                    a = np.asarray(v, dtype=np.float64)
                    if k not in prev or prev[k].shape != a.shape:
                        continue
                    count = kept_count(a.size, self.fraction)
                    masks[k] = pack_mask(top_mask(a - prev[k], count, self.cyclic_share))
            self._last = (server_round, {k: np.asarray(v, np.float64) for k, v in x.items()})
        share = self.cyclic_share if masks else 1.0
        coords = RoundCoordinates(seed, self.fraction, cyclic_share=share, masks=masks)
        self._rounds = {r: c for r, c in self._rounds.items() if r >= server_round - 1}
        self._rounds[server_round] = coords
        return coords

    def announce(
        self,
        messages: Iterable[Message],
        server_round: int,
        *,
        dense: bool = False,
        x: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Write the round's codec into each train message's ``config`` record.

        ``dense``: the secure transport sparsifies (``shared-k`` under SecAgg+), so the
        clients reply with ``x`` + their sent update at full shape instead of codes.
        ``x``: the round's global model (``shared-k`` with ``last-update`` support: the
        top coordinates of the last global update travel as bit masks, ``size / 8``
        bytes per array, counted in the messages' bytes down)."""
        if not self.enabled:
            return
        sparse = self.method in ("topk", "shared-k")
        coords = self.coordinates(server_round, x) if self.method == SHARED_METHOD else None
        for m in messages:
            config = m.content.config_records["config"]
            config[COMPRESS_METHOD] = self.method
            config[COMPRESS_FRACTION] = float(self.fraction)
            config[COMPRESS_FEEDBACK] = bool(self.error_feedback and sparse)
            config[COMPRESS_SEED] = shared_seed(self.run_seed, server_round)
            config[COMPRESS_DENSE] = dense
            config[COMPRESS_BITS] = int(self.value_bits)
            if coords is not None and coords.masks:
                config[COMPRESS_CYCLIC_SHARE] = float(coords.cyclic_share)
                for name, packed in coords.masks.items():
                    config[COMPRESS_MASK_PREFIX + name] = packed

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
                codec(self.method, self.fraction, self.value_bits),
                coordinates=self.coordinates(server_round)
                if self.method == SHARED_METHOD
                else None,
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
