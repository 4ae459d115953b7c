"""The client's side of update compression: encode this round's reply as the server
announced (:mod:`umbra.federation.compression`), with error feedback kept client-side.

Runs inside the organisation. The residual of error feedback is a function of the
organisation's past updates, so it is client state: it lives in the node's own state
folder (beside SCAFFOLD's control variate, `umbra.federation.client_app.client_state_dir`),
never in the server's run folder, and is stamped with the round that wrote it so that a
resumed run picks up the newest one from before its round.

Under client-level DP the reply is the clipped update; what is sent (the kept
coordinates of update + residual) is clipped again to the same bound, so each round's
release keeps its sensitivity whatever the residual holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from umbra.federation.client_state import load_round_arrays, save_round_arrays
from umbra.federation.common import config_float
from umbra.federation.compression import (
    COMPRESS_DENSE,
    COMPRESS_FEEDBACK,
    Arrays,
    codec,
    decode_arrays,
    encode_arrays,
    with_feedback,
)
from umbra.privacy.controller import CLIENT_GROUP, DP_UNWEIGHTED, dp_config_keys
from umbra.secure.shared_coordinates import (
    COMPRESS_FRACTION,
    COMPRESS_METHOD,
    round_coordinates,
    round_value_bits,
)

__all__ = ["compress_reply", "load_residual", "save_residual"]

_RESIDUAL = "compress_residual_r"


def load_residual(state_dir: Path, server_round: int) -> dict[str, np.ndarray] | None:
    """The newest stored residual from a round before ``server_round``, or None."""
    return load_round_arrays(state_dir, _RESIDUAL, server_round)


def save_residual(state_dir: Path, server_round: int, residual: Mapping[str, np.ndarray]) -> None:
    """Store ``residual`` for the rounds after ``server_round`` (atomic; keeps two rounds)."""
    save_round_arrays(state_dir, _RESIDUAL, server_round, residual)


def compress_reply(
    config: Mapping[str, Any],
    x: Mapping[str, np.ndarray],
    out: Mapping[str, np.ndarray],
    metrics: Mapping[str, Any],
    *,
    state_dir: Path,
    server_round: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """The reply arrays to send: ``out`` as is when the round announces no compression,
    else the codes of the model keys' delta plus the other keys (``cv.``) unchanged.

    ``x``: the global model received; ``out``: the reply arrays (new weights, or the DP
    update itself when ``metrics`` has ``dp-unweighted``); ``seed``: the quantiser's
    rounding seed (not privacy-relevant).
    """
    method = str(config.get(COMPRESS_METHOD, "none"))
    if method == "none":
        return dict(out)
    fraction = config_float(config, COMPRESS_FRACTION, 1.0)
    shared = round_coordinates(config)  # shared-k: the round's public coordinates
    dense = bool(config.get(COMPRESS_DENSE, False))
    # under SecAgg+ (dense replies) the kept values are quantised in the protocol's ring,
    # whatever its width: the client's own codec keeps them float32
    c = codec(method, fraction, 32 if dense else round_value_bits(config))
    dp = int(metrics.get(DP_UNWEIGHTED, 0)) == 1
    keys = [k for k in x if k in out]
    delta = {
        k: np.asarray(out[k], dtype=np.float64)
        - (0.0 if dp else np.asarray(x[k], dtype=np.float64))
        for k in keys
    }
    shapes = {k: tuple(np.shape(out[k])) for k in keys}
    clip = config_float(config, dp_config_keys(CLIENT_GROUP)[1]) if dp else None
    rng = np.random.default_rng(seed)

    def send(v: dict[str, np.ndarray]) -> tuple[Arrays, dict[str, np.ndarray]]:
        wire = encode_arrays(v, c, rng=rng, coordinates=shared)
        sent = decode_arrays(wire, shapes, c, coordinates=shared)
        norm = math.sqrt(sum(float(np.sum(s * s)) for s in sent.values()))
        if clip is not None and norm > clip:
            # the same coordinates, scaled: float32 rounding stays inside the bound
            factor = clip / norm * (1.0 - 1e-6)
            wire = encode_arrays({k: a * factor for k, a in v.items()}, c, rng=rng,
                                 coordinates=shared)  # fmt: skip
            sent = decode_arrays(wire, shapes, c, coordinates=shared)
        return wire, sent

    if bool(config.get(COMPRESS_FEEDBACK, False)):
        wire, residual = with_feedback(delta, load_residual(state_dir, server_round), send)
        save_residual(state_dir, server_round, residual)
    else:
        wire, _ = send(delta)
    rest = {k: np.asarray(v) for k, v in out.items() if k not in shapes}
    if dense:
        # the secure transport cuts the shared coordinates out of x + sent itself
        sent = decode_arrays(wire, shapes, c, coordinates=shared)
        base = {k: np.zeros(shapes[k]) if dp else np.asarray(x[k], np.float64) for k in keys}
        return {**{k: (base[k] + sent[k]).astype(np.asarray(out[k]).dtype) for k in keys}, **rest}
    return {**wire, **rest}
