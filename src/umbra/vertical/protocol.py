"""What the label holder's ServerApp and the feature parties' ClientApps agree on: message
types and record keys of the vertical protocol (both sides import this module only)."""

from __future__ import annotations

__all__ = [
    "ALIGN",
    "BATCH",
    "CLIENT_SIZE",
    "DIGESTS",
    "EMBEDDINGS",
    "EXPORT",
    "GRAD",
    "HELLO",
    "KEYS",
    "MODALITIES",
    "MODEL_SPEC",
    "OBSERVE",
    "OBSERVED",
    "PARTITION",
    "PEERS",
    "POSITIONS",
    "PSI",
    "PSI_REQUEST",
    "PSI_RESPONSE",
    "PSI_SETUP",
    "PUBLIC_KEY",
    "ROWS",
    "SECURE",
    "SERVER_SIZE",
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
#: Deployment only (the simulation aligns before the apps start, in one process):
PSI = "vertical_psi"  # the label holder's blinded ids -> the party's PSI setup and response
ALIGN = "vertical_align"  # shared ids' digests in canonical order -> the party's aligned rows
OBSERVED = "vertical_observed"  # -> the gradients kept for the label-leakage audit

#: ConfigRecord keys.
PARTITION = "partition"
STEP = "step"
BATCH = "batch"
SECURE = "secure"
OBSERVE = "observe"
PUBLIC_KEY = "public-key"
MODALITIES = "modalities"  # hello's reply: the party's modalities, comma-separated
CLIENT_SIZE = "client-size"  # PSI: how many ids the label holder's request blinds
PSI_REQUEST = "psi-request"  # bytes: openmined-psi Request (label holder -> party)
PSI_SETUP = "psi-setup"  # bytes: openmined-psi ServerSetup (party -> label holder)
PSI_RESPONSE = "psi-response"  # bytes: openmined-psi Response (party -> label holder)
SERVER_SIZE = "server-size"  # PSI's reply: the party's id count (PSI reveals it anyway)
MODEL_SPEC = "model-spec"  # align: the joint model's spec (JSON; public architecture)
ROWS = "rows"  # align's reply: how many aligned rows the party holds
#: ArrayRecord keys.
POSITIONS = "positions"  # (n_p,) int64: the party's aligned rows in this batch
SLOTS = "slots"  # (n_p,) int64: their places in the batch (secure sum: the full batch)
GRAD = "grad"  # (n_prev, D) float32: ∂L/∂(embedding sum) at the previous batch's rows
EMBEDDINGS = "embeddings"  # (n_p, D) float32: the party's embedding sums
SHARE = "share"  # (B·D,) uint32: the party's masked fixed-point share of the batch sum
DIGESTS = "digests"  # (n, 32) uint8: SHA-256 digests of the shared ids, canonical order
PEERS_PREFIX = "peer-"  # ConfigRecord keys of the public keys: peer-<index>
