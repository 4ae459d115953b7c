"""Server side of threshold CKKS, without Flower: validate and add encrypted updates, then
combine t decryption shares into the decoded sum. Holds no secret and needs none."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from umbra.secure.he import threshold as th
from umbra.secure.he.ckks import CiphertextError, HeAbort, checked_update_blobs
from umbra.secure.he.packing import from_slot_chunks

__all__ = ["EncryptedSum", "ThresholdAggregator", "decode_sum"]

log = logging.getLogger(__name__)


class EncryptedSum:
    """Sum of ciphertexts: ``c0`` (coefficient domain) and ``c1`` (NTT), residue arrays
    (ciphertexts, primes, N)."""

    def __init__(self, c0: np.ndarray, c1: np.ndarray, included: tuple[int, ...]):
        self.c0 = c0
        self.c1 = c1
        self.included = included

    def c1_blobs(self, ring: th.Ring) -> list[bytes]:
        """What each decryptor receives: the summed ``c1`` residues, bit-packed."""
        return [th.pack_residues(c, ring.data_primes) for c in self.c1]


class ThresholdAggregator:
    """Validates clients' update messages (`holder.encrypt_update`) and adds them."""

    def __init__(
        self,
        plan: th.ThresholdPlan,
        *,
        length: int,
        round_number: int,
        seen_digests: set[bytes] | None = None,
    ) -> None:
        self.plan = plan
        self.ring = th.Ring.of(plan.params)
        self.length = length
        self.num_ciphertexts = max(1, -(-length // plan.params.values_per_ciphertext))
        self.round_number = round_number
        self.seen_digests: set[bytes] = seen_digests if seen_digests is not None else set()
        self.excluded: dict[int, str] = {}

    def load(self, client_id: int, message: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """One client's ciphertexts as (c0, c1) residue arrays (ciphertexts, primes, N);
        CiphertextError naming the client for a wrong round/client, wrong count, garbled
        or replayed update."""
        c0, c1, rounded = self._parse(client_id, message)
        if rounded:
            c0 = th.rounded_to_residues(c0, self.ring.data_primes, self.plan.c0_drop_bits)
        return c0, c1

    def _parse(
        self, client_id: int, message: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        """(c0, c1, whether c0 is still the rounded integers (m, N) rather than residues)."""
        data = checked_update_blobs(
            message,
            client_id=client_id,
            round_number=self.round_number,
            num_ciphertexts=self.num_ciphertexts,
            seen_digests=self.seen_digests,
        )
        drop = self.plan.c0_drop_bits
        raw = th.unpack_ciphertexts_rounded(self.ring, data, c0_drop_bits=drop)
        if raw is not None:
            return raw[0], raw[1], True
        try:
            c0, c1 = th.unpack_ciphertexts(self.ring, data, c0_drop_bits=drop)
        except CiphertextError as err:
            raise CiphertextError(f"client {client_id}: {err}") from err
        return c0, c1, False

    def aggregate(
        self, updates: Mapping[int, Mapping[str, Any]], *, min_clients: int
    ) -> EncryptedSum:
        """Sum the valid updates (invalid ones are excluded with a logged reason); HeAbort
        if fewer than ``min_clients`` remain. Everything is added in uint64 without
        reduction and reduced once at the end (fewer than 2^16 clients, each term below
        2^48): the ``c1`` residues, and ``c0`` as the rounded integers the clients sent
        (`threshold.unpack_ciphertexts_rounded`), mapped to residues only as a sum."""
        c0: np.ndarray | None = None
        c1: np.ndarray | None = None
        c0_rounded: bool | None = None
        included = []
        for cid in sorted(updates):
            try:
                a0, a1, rounded = self._parse(cid, updates[cid])
            except CiphertextError as err:
                self.excluded[cid] = str(err)
                log.warning("ckks aggregation: client %d excluded: %s", cid, err)
                continue
            self.seen_digests.add(updates[cid]["digest"])
            if c0 is not None and rounded != c0_rounded:  # one form per sum: residues
                primes, drop = self.ring.data_primes, self.plan.c0_drop_bits
                if rounded:
                    a0 = th.rounded_to_residues(a0, primes, drop)
                else:
                    c0 = th.rounded_to_residues(c0, primes, drop)
                c0_rounded = rounded = False
            if c0 is None or c1 is None:
                c0, c1, c0_rounded = a0, a1, rounded
            else:
                c0 += a0
                c1 += a1
            included.append(cid)
        if c0 is None or c1 is None or len(included) < min_clients:
            raise HeAbort(
                f"ckks aggregation aborted: {len(included)} valid updates < {min_clients}"
            )
        if len(included) >= 1 << 16:
            raise HeAbort("ckks aggregation: at most 65535 updates per sum")
        qs = np.asarray(self.ring.data_primes, dtype=np.uint64)[:, None]
        if c0_rounded:
            c0 = th.rounded_to_residues(c0, self.ring.data_primes, self.plan.c0_drop_bits)
        return EncryptedSum(c0 % qs, c1 % qs, tuple(included))


def decode_sum(
    plan: th.ThresholdPlan,
    total: EncryptedSum,
    shares: Mapping[int, Sequence[bytes]],
    *,
    length: int,
) -> np.ndarray:
    """The decrypted sum (float64, ``length``) from the decryption shares of a set of
    holders; CiphertextError naming a client whose shares are malformed."""
    ring = th.Ring.of(plan.params)
    drop = plan.share_drop_bits
    rounded: dict[int, np.ndarray | None] = {}
    for cid, blobs in shares.items():
        if len(blobs) != len(total.c0):
            raise CiphertextError(
                f"client {cid}: {len(blobs)} decryption shares, expected {len(total.c0)}"
            )
        try:
            rounded[cid] = th.unpack_shares_rounded(ring, list(blobs), drop_bits=drop)
        except (ValueError, TypeError) as err:
            raise CiphertextError(f"client {cid}: garbled decryption share ({err})") from err
    parts = [r for r in rounded.values() if r is not None]
    summed: list[np.ndarray] = []
    if parts:  # the shares' rounded integers, added exactly, mapped to residues once
        acc = np.zeros_like(parts[0])
        for part in parts:
            acc += part
        summed.append(th.rounded_to_residues(acc, ring.data_primes, drop))
    for cid in sorted(c for c, r in rounded.items() if r is None):
        summed.append(th.unpack_shares(ring, list(shares[cid]), drop_bits=drop))
    rows = th.combine_many(ring, total.c0, summed, scale=plan.scale)
    return from_slot_chunks(rows, length=length, complex_slots=True)
