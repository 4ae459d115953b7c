"""What the label holder's ServerApp and the feature parties' ClientApps agree on: message
types and record keys of the vertical protocol (both sides import this module only)."""

from __future__ import annotations

__all__ = [
    "BATCH",
    "EMBEDDINGS",
    "EXPORT",
    "GRAD",
    "HELLO",
    "KEYS",
    "OBSERVE",
    "PARTITION",
    "PEERS",
    "POSITIONS",
    "PUBLIC_KEY",
    "SECURE",
    "SHARE",
    "SLOTS",
    "STEP",
    "STEP_ACTION",
]

#: Message types: ``query.<action>`` for set-up and export, ``train.<action>`` for a step.
HELLO = "vertical_hello"  # -> the party's index (its partition id)
KEYS = "vertical_keys"  # -> the party's X25519 public key for the pairwise masks
PEERS = "vertical_peers"  # every party's public key -> the party derives its pair seeds
STEP_ACTION = "vertical_step"  # one mini-batch: gradient of the last, request for the next
EXPORT = "vertical_export"  # -> the bottom model's arrays (the simulation's evaluation)

#: ConfigRecord keys.
PARTITION = "partition"
STEP = "step"
BATCH = "batch"
SECURE = "secure"
OBSERVE = "observe"
PUBLIC_KEY = "public-key"
#: ArrayRecord keys.
POSITIONS = "positions"  # (n_p,) int64: the party's aligned rows in this batch
SLOTS = "slots"  # (n_p,) int64: their places in the batch (secure sum: the full batch)
GRAD = "grad"  # (n_prev, D) float32: ∂L/∂(embedding sum) at the previous batch's rows
EMBEDDINGS = "embeddings"  # (n_p, D) float32: the party's embedding sums
SHARE = "share"  # (B·D,) uint32: the party's masked fixed-point share of the batch sum
PEERS_PREFIX = "peer-"  # ConfigRecord keys of the public keys: peer-<index>
