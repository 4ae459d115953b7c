"""Entity alignment by private set intersection: which rows of which party are one entity.

The label holder ``L`` (the first label party) runs a two-party PSI session
(:func:`umbra.services.psi.intersect_pair`, ``L`` as the client that learns) with every
other party ``P_j`` and then sends ``P_j`` the SHA-256 id digests of the shared ids, in the
canonical order (ascending digest) both can reproduce. So:

* ``L`` learns, per entity of its own, which parties hold it (``S_L ∩ S_j`` for each j),
  and each ``|S_j|``; nothing about entities it does not hold;
* ``P_j`` learns ``S_L ∩ S_j`` (the entities it will contribute embeddings for) and
  ``|S_L|``; nothing about the other parties' sets.

Pairwise sessions rather than the k-party chain (:mod:`umbra.services.psi_chain`) because
entities held by only some parties still train: the label holder needs each pairwise
intersection, which the chain by design hides. Entities ``L`` does not hold have no label
and are not trained. A second label party checks its labels on the shared entities
against ``L``'s (sent in the canonical order): any disagreement stops the run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from umbra.services.psi import PsiConfig, intersect_pair
from umbra.services.psi_errors import PsiInputError
from umbra.services.psi_ids import IdSet
from umbra.vertical.errors import VerticalError
from umbra.vertical.layout import PartyData

__all__ = ["Alignment", "align"]


@dataclass(frozen=True)
class Alignment:
    """The aligned entities: the label holder's rows, in its own row order.

    Attributes:
        label_party: index of the party running the top model.
        entities: ``(E,)`` the label holder's rows that are trained (all of its rows).
        slots: per party, ``(E,)`` int: for each entity, the row of that party holding it,
            or -1. At the label holder the row itself. Party ``p`` knows only its own
            column's non-negative values (its rows); the label holder knows ``slots != -1``
            (who holds what) but not the other parties' row numbers, which it never needs:
            it addresses party ``p``'s rows by position in :attr:`party_rows`.
        party_rows: per party, its rows of the entities it shares with the label holder, in
            the canonical order (what that party learns).
        positions: per party, ``(E,)`` int: index into ``party_rows[p]`` of each entity, or
            -1 (what the label holder sends in a batch request).
        psi_s: wall time of all PSI sessions; psi_bytes: their serialized messages plus
            the digests sent to the parties.
    """

    label_party: int
    entities: np.ndarray
    slots: list[np.ndarray]
    party_rows: list[np.ndarray]
    positions: list[np.ndarray]
    psi_s: float
    psi_bytes: int

    @property
    def holders(self) -> np.ndarray:
        """``(E, K)`` bool: which parties hold each aligned entity."""
        return np.stack([s >= 0 for s in self.slots], axis=1)


def _id_set(party: PartyData) -> IdSet:
    try:
        return IdSet.from_ids(party.ids, source=f"{party.name} ids")
    except PsiInputError as err:
        raise VerticalError(str(err)) from None


def align(
    parties: Sequence[PartyData], label_parties: Sequence[int], config: PsiConfig | None = None
) -> Alignment:
    """Align ``parties`` on the first label party's entities (see the module docstring).

    Raises:
        VerticalError: duplicate ids in a party's list, a party sharing no entity with the
            label holder, or label parties that disagree on a shared entity.
    """
    if not label_parties:
        raise VerticalError("no party holds the labels")
    lead = label_parties[0]
    holder = parties[lead]
    if holder.labels is None:
        raise VerticalError(f"{holder.name} is named a label party but holds no labels")
    sets = [_id_set(p) for p in parties]
    n = len(holder)
    slots: list[np.ndarray] = []
    party_rows: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    t0 = time.perf_counter()
    total_bytes = 0
    for p, party in enumerate(parties):
        if p == lead:
            slots.append(np.arange(n))
            party_rows.append(np.arange(n))
            positions.append(np.arange(n))
            continue
        pair = intersect_pair(sets[lead], sets[p], config)
        assert pair.positions is not None  # full-result mode: positions are revealed
        lead_rows = np.asarray(pair.positions, dtype=np.int64)
        if len(lead_rows) == 0:
            raise VerticalError(f"{party.name} shares no entity with the label holder "
                                f"{holder.name}: its ids do not overlap")  # fmt: skip
        digests = [sets[lead].digests[r] for r in lead_rows]
        total_bytes += pair.bytes_to_client + pair.bytes_to_server + 32 * len(digests)
        own_rows = np.asarray(sets[p].positions_of(digests), dtype=np.int64)
        slot = np.full(n, -1, dtype=np.int64)
        slot[lead_rows] = own_rows
        pos = np.full(n, -1, dtype=np.int64)
        pos[lead_rows] = np.arange(len(lead_rows))
        slots.append(slot)
        party_rows.append(own_rows)
        positions.append(pos)
    psi_s = time.perf_counter() - t0
    for q in label_parties[1:]:
        other = parties[q]
        if other.labels is None:
            raise VerticalError(f"{other.name} is named a label party but holds no labels")
        shared = slots[q] >= 0
        theirs = other.labels[slots[q][shared]]
        ours = holder.labels[shared]
        disagree = int(np.sum(theirs != ours))
        if disagree:
            raise VerticalError(f"label parties {holder.name} and {other.name} disagree on "
                                f"{disagree} of {int(shared.sum())} shared entities")  # fmt: skip
    return Alignment(
        label_party=lead,
        entities=np.arange(n),
        slots=slots,
        party_rows=party_rows,
        positions=positions,
        psi_s=psi_s,
        psi_bytes=total_bytes,
    )
