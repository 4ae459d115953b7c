"""Signed SecAgg+ key advertisements (Bonawitz et al., CCS 2017, §4 active-adversary
variant, https://eprint.iacr.org/2017/281; Bell et al., CCS 2020, malicious server).

In a run with an identity roster (`umbra.secure.identity`: partition id -> public key,
distributed out of band), each client signs its advertisement - its two X25519 public keys
(and, on a sparse graph, its graph commitment) bound to the run id, the round, its
protocol id in the round and its partition id - with its long-term identity key. Every
client checks each neighbour's signature against its *own* roster before it derives a
pairwise key or encrypts a share for that neighbour, so a server that substitutes a
client's keys (a man in the middle on the pairwise keys and the share encryption), moves
an advertisement to another round, run or protocol id, or invents a client is caught:
the honest client refuses the round (`ProtocolViolation` naming the peer) and reveals
nothing of its input.

Both sides use `advert_payload`; :class:`NodeIdentity` is what a client holds (its private
key, the roster, the run id) and refuses to be pickled.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from umbra.secure import identity

__all__ = ["ADVERT_STAGE", "NodeIdentity", "advert_payload", "check_advert"]

#: The ``stage`` of `identity.signed_message` for a SecAgg+ advertisement.
ADVERT_STAGE = "secagg+/advertise"


def advert_payload(
    *, round_number: int, secagg_id: int, pk_c: bytes, pk_s: bytes, graph_commitment: bytes
) -> bytes:
    """The bytes an advertisement signature covers (with the run id and partition id that
    `identity.signed_message` adds): round, protocol id, both public keys and the graph
    commitment (empty on the complete graph)."""
    return (
        struct.pack("<QQ", round_number, secagg_id)
        + bytes(pk_c)
        + bytes(pk_s)
        + bytes(graph_commitment)
    )


@dataclass(frozen=True)
class NodeIdentity:
    """One client's signing identity in a run: its partition id (its roster entry), its
    private identity key (Ed25519 raw or ECDSA P-384 OpenSSH/PEM, `identity.load_private_key`),
    its own copy of the public roster and the run id (`identity.run_key`). Never pickled,
    the key never in ``repr``."""

    partition_id: int
    private_key: bytes = field(repr=False)
    roster: Mapping[int, bytes] = field(repr=False)
    run_id: int = 0

    def __reduce__(self) -> Any:
        raise TypeError("NodeIdentity holds an identity key and cannot be pickled")

    def sign_advert(
        self,
        *,
        round_number: int,
        secagg_id: int,
        pk_c: bytes,
        pk_s: bytes,
        graph_commitment: bytes = b"",
    ) -> bytes:
        """This client's signature over its advertisement."""
        payload = advert_payload(round_number=round_number, secagg_id=secagg_id, pk_c=pk_c,
                                 pk_s=pk_s, graph_commitment=graph_commitment)  # fmt: skip
        return identity.sign(self.private_key, run_id=self.run_id, stage=ADVERT_STAGE,
                             client_id=self.partition_id, payload=payload)  # fmt: skip


def check_advert(
    roster: Mapping[int, bytes],
    signature: object,
    *,
    run_id: int,
    partition_id: int,
    round_number: int,
    secagg_id: int,
    pk_c: bytes,
    pk_s: bytes,
    graph_commitment: bytes = b"",
) -> None:
    """`identity.IdentityError` naming the partition unless ``signature`` is its roster
    key's signature over this advertisement."""
    payload = advert_payload(round_number=round_number, secagg_id=secagg_id, pk_c=pk_c,
                             pk_s=pk_s, graph_commitment=graph_commitment)  # fmt: skip
    identity.verify(roster, signature, run_id=run_id, stage=ADVERT_STAGE,
                    client_id=partition_id, payload=payload)  # fmt: skip
