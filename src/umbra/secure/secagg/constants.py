"""Constants shared by the SecAgg+ client and server (stage names, message keys, labels).

Both parties import this module so that message layouts and the domain-separation labels
fed to HKDF cannot drift apart.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "AEAD_KEY_INFO",
    "CFG_NEXT_KEYS",
    "CFG_PREKEYS",
    "CFG_SECAGG_ID",
    "COMMIT_LABEL",
    "COMPLETE_GRAPH_MAX_CLIENTS",
    "CORRECTNESS_BITS",
    "CORRUPT_FRACTION",
    "GRAPH_COMMIT_LABEL",
    "GRAPH_SEED_LABEL",
    "KEY_BYTES",
    "MASK_INFO",
    "NONCE_BYTES",
    "PAIR_SEED_INFO",
    "RING_BITS",
    "RING_WIDTHS",
    "SECURITY_BITS",
    "SEED_BYTES",
    "SELF_MASK_INFO",
    "SHARE_AAD_LABEL",
    "SHARE_PLAINTEXT_BYTES",
    "STAGES",
    "STAGE_ADVERTISE_KEYS",
    "STAGE_COLLECT_MASKED",
    "STAGE_REVEAL_SEED",
    "STAGE_SHARE_KEYS",
    "STAGE_UNMASK",
    "Key",
]

# Stages, in protocol order (Bell et al., CCS 2020, Fig. 2; Bonawitz et al., CCS 2017, Fig. 4).
# The reveal stage runs only on sparse graphs: clients commit to graph randomness in
# advertise_keys and reveal it there, so the graph seed is fixed before anyone can steer it.
STAGE_ADVERTISE_KEYS: Final = "advertise_keys"
STAGE_REVEAL_SEED: Final = "reveal_seed"
STAGE_SHARE_KEYS: Final = "share_keys"
STAGE_COLLECT_MASKED: Final = "collect_masked"
STAGE_UNMASK: Final = "unmask"
STAGES: Final = (
    STAGE_ADVERTISE_KEYS,
    STAGE_REVEAL_SEED,
    STAGE_SHARE_KEYS,
    STAGE_COLLECT_MASKED,
    STAGE_UNMASK,
)

# Graph parameters (Bell et al., CCS 2020, Thm. 3.6 style bounds; `graph.graph_parameters`).
# Up to this many clients every client masks with and shares among all others (the complete
# graph of Bonawitz et al., CCS 2017): no statistical failure, t - 1 colluders tolerated.
# The cost is the server's Shamir reconstruction (pycryptodome, pure Python), measured with
# a third of the clients dropped: n = 128 complete (t = 86) about 28 s per round, n = 129
# sparse (k = 112, tau = 70) 19 s, n = 256 complete 419 s against 77 s sparse - so the
# complete graph stops where it becomes several times dearer than the sparse one.
COMPLETE_GRAPH_MAX_CLIENTS: Final = 128
# sigma: an honest client's update is exposed with probability <= 2^-SECURITY_BITS per round
SECURITY_BITS: Final = 40
# eta: a round with at most n - t dropouts fails with probability <= 2^-CORRECTNESS_BITS
CORRECTNESS_BITS: Final = 20
# gamma: the fraction of clients that may collude with the server that sparse graphs are
# sized for (the complete graph tolerates t - 1 colluders, whatever gamma)
CORRUPT_FRACTION: Final = 1 / 3

# Entries of a request's Flower ConfigRecord "config" (beside "stage" and "server-round").
CFG_SECAGG_ID: Final = "secagg-id"  # the node's protocol id in this round (0..n-1)
# unmask request: also send two fresh public keys for the node's next round (pre-keys)
CFG_NEXT_KEYS: Final = "secagg-next-keys"
# share_keys request without an advertise stage: the client uses its stored pre-keys
CFG_PREKEYS: Final = "secagg-prekeys"

# Ring Z_{2^32} by default: masked vectors travel as little-endian uint32 (4 bytes per
# parameter).
RING_BITS: Final = 32
# Ring widths a round may use: Z_{2^16} halves the bytes of a masked vector (little-endian
# uint16) where the round's clients can do with fewer levels (compression.value_bits = 16).
RING_WIDTHS: Final = (16, 32)

KEY_BYTES: Final = 32  # X25519 keys, graph seed, derived keys
# Self-mask seed: 128 bits (expanded by HKDF to a 256-bit ChaCha20 key); one 16-byte
# Shamir sharing instead of two halves halves the server's reconstruction cost.
SEED_BYTES: Final = 16
NONCE_BYTES: Final = 12  # ChaCha20-Poly1305 nonce
# Share plaintext: owner id (u32) | holder id (u32) | share index (u32) | b share | sk share
SHARE_PLAINTEXT_BYTES: Final = 12 + SEED_BYTES + KEY_BYTES

# HKDF "info" labels (domain separation between the uses of one Diffie-Hellman secret).
AEAD_KEY_INFO: Final = b"umbra/secagg+/v1/share-encryption"
PAIR_SEED_INFO: Final = b"umbra/secagg+/v1/pairwise-seed"
MASK_INFO: Final = b"umbra/secagg+/v1/pairwise-mask"
SELF_MASK_INFO: Final = b"umbra/secagg+/v1/self-mask"
SHARE_AAD_LABEL: Final = b"umbra/secagg+/v1/share"
COMMIT_LABEL: Final = b"umbra/secagg+/v1/self-seed-commitment"
GRAPH_COMMIT_LABEL: Final = b"umbra/secagg+/v1/graph-randomness-commitment"
GRAPH_SEED_LABEL: Final = b"umbra/secagg+/v1/graph-seed"


class Key:
    """Keys of the plain-dict messages (values: int, bytes, list[bytes] or numpy arrays)."""

    ROUND: Final = "round"
    CLIENT_ID: Final = "client_id"
    PK_C: Final = "pk_c"  # X25519 public key for share encryption (32 bytes)
    PK_S: Final = "pk_s"  # X25519 public key for pairwise masks (32 bytes)
    IDS: Final = "ids"  # int64 array of client ids
    GRAPH_COMMITMENT: Final = "graph_commitment"  # H(r_i), sent with the public keys
    GRAPH_COMMITMENTS: Final = "graph_commitments"  # the roster's H(r_j), in roster order
    GRAPH_REVEAL: Final = "graph_reveal"  # r_i (32 bytes)
    GRAPH_REVEALS: Final = "graph_reveals"  # the roster's r_j, in roster order
    TO: Final = "to"
    FROM: Final = "from"
    CIPHERTEXTS: Final = "ciphertexts"
    COMMITMENT: Final = "commitment"
    COMMITMENTS: Final = "commitments"
    MASKED: Final = "masked"
    MASKED_WITH: Final = "masked_with"
    REJECTED: Final = "rejected"
    SURVIVORS: Final = "survivors"
    DROPPED: Final = "dropped"
    B_IDS: Final = "b_ids"
    B_SHARES: Final = "b_shares"
    SK_IDS: Final = "sk_ids"
    SK_SHARES: Final = "sk_shares"
    VECTOR_LENGTH: Final = "vector_length"
    RING_BITS: Final = "ring_bits"
    NUM_CLIENTS: Final = "num_clients"
    KEY_IDS: Final = "key_ids"  # ids whose public keys follow (the owner's neighbourhood)
    DIGEST: Final = "digest"  # SHA-256 of the masked vector (transport integrity)
    THRESHOLD: Final = "threshold"
    SHARE_THRESHOLD: Final = "share_threshold"
    DEGREE: Final = "degree"
    # unmask reply: public halves of the pre-keys for the client's next round (32 bytes)
    NEXT_PK_C: Final = "next_pk_c"
    NEXT_PK_S: Final = "next_pk_s"
    # signed advertisements (a run with an identity roster, `umbra.secure.secagg.advert`)
    IDENTITY: Final = "identity"  # the advertiser's partition id (its roster entry)
    SIGNATURE: Final = "signature"  # its identity signature over the advertisement
    KEY_PIDS: Final = "key_pids"  # partition ids of the KEY_IDS, in the same order
    SIGNATURES: Final = "signatures"  # their advertisement signatures, in the same order
