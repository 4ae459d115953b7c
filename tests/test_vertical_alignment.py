"""Vertical layout and PSI alignment: rows line up across parties; bad layouts stop in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from umbra.data.sources.synthetic import make_synthetic
from umbra.vertical.alignment import align
from umbra.vertical.errors import VerticalError
from umbra.vertical.layout import PartyData, holder_sets, split_parties

PARTIES = [["image"], ["audio"], ["text"]]


def _parties(n: int = 300, shared: float = 0.7) -> tuple[list[PartyData], list[np.ndarray]]:
    data = make_synthetic(n=n, seed=3)
    return split_parties(data, PARTIES, [2], shared=shared, seed=5)


def test_holder_sets_share_and_subsets() -> None:
    held = holder_sets(1000, 3, shared=0.7, seed=0)
    everyone = held.all(axis=1)
    assert everyone.sum() == 700
    # the rest: exactly two of three parties, each pair equally often
    assert (held[~everyone].sum(axis=1) == 2).all()
    missing = np.argmin(held[~everyone], axis=1)
    assert np.bincount(missing, minlength=3).tolist() == [100, 100, 100]


def test_alignment_rows_are_the_same_entities() -> None:
    parties, sources = _parties()
    a = align(parties, [2])
    holder = parties[2]
    # every aligned entity is one of the label holder's, and who holds it matches the layout
    assert len(a.entities) == len(holder)
    for p, party in enumerate(parties):
        rows = a.slots[p]
        have = rows >= 0
        # independent reference: compare ids directly (the parties never do this)
        for e in np.flatnonzero(have):
            assert party.ids[rows[e]] == holder.ids[e]
        expected = np.array([i in set(party.ids) for i in holder.ids])
        assert (have == expected).all()
        # a party's own list is in the canonical order the label holder addresses it by
        assert (a.party_rows[p][a.positions[p][have]] == rows[have]).all()
    # 70 % of all entities are held by everyone; the label holder holds 90 % of them
    assert a.holders.all(axis=1).sum() == round(0.7 * 300)
    # and the rows behind each party's aligned rows are the label holder's entities
    for p in range(3):
        have = a.slots[p] >= 0
        assert (sources[p][a.slots[p][have]] == sources[2][have]).all()
    assert a.psi_bytes > 0


def test_no_overlap_is_one_line() -> None:
    parties, _ = _parties()
    stranger = PartyData("party-0", ("image",), tuple(f"x{i}" for i in range(5)),
                         {"image": np.zeros((5, 1, 28, 28), np.float32)})  # fmt: skip
    with pytest.raises(VerticalError, match=r"party-0 shares no entity .* do not overlap"):
        align([stranger, parties[1], parties[2]], [2])


def test_duplicate_ids_are_one_line() -> None:
    parties, _ = _parties()
    p0 = parties[0]
    ids = (*p0.ids[:-1], p0.ids[0])
    dup = PartyData(p0.name, p0.modalities, ids, p0.features)
    with pytest.raises(VerticalError, match=r"party-0 ids .*duplicate id"):
        align([dup, parties[1], parties[2]], [2])


def test_label_parties_that_disagree() -> None:
    parties, _ = _parties()
    p0, holder = parties[0], parties[2]
    truth = dict(zip(holder.ids, holder.labels.tolist(), strict=True))
    agreeing = np.array([truth.get(i, 0) for i in p0.ids])
    ok = PartyData(p0.name, p0.modalities, p0.ids, p0.features, labels=agreeing)
    align([ok, parties[1], holder], [2, 0])  # same labels on the shared entities: fine
    flipped = agreeing.copy()
    shared_row = next(r for r, i in enumerate(p0.ids) if i in truth)
    flipped[shared_row] = (agreeing[shared_row] + 1) % 5
    bad = PartyData(p0.name, p0.modalities, p0.ids, p0.features, labels=flipped)
    with pytest.raises(VerticalError, match="party-2 and party-0 disagree on 1 of"):
        align([bad, parties[1], holder], [2, 0])


def test_party_without_modality() -> None:
    with pytest.raises(VerticalError, match="party-1 holds no modality"):
        PartyData("party-1", (), ("a",), {})


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (['vertical.parties=[["image"], []]'], "vertical.parties[1] holds no modality"),
        (['vertical.parties=[["image"], ["image", "text"]]'], "is at parties 0 and 1"),
        (["vertical.label_parties=[3]"], "label_parties [3] must be distinct party indices"),
        # two parties, no entity held by both: the PSI alignment finds nothing to train
        (
            [
                "data.source=synthetic",
                "data.n_train=100",
                'vertical.parties=[["image"], ["text"]]',
                "vertical.label_parties=[1]",
                "vertical.shared=0",
            ],
            "party-0 shares no entity",
        ),
    ],
)
def test_bad_layout_at_the_cli(overrides: list[str], needle: str, tmp_path: Path) -> None:
    sets = [a for o in overrides for a in ("--set", o)]
    proc = subprocess.run(
        [sys.executable, "-m", "umbra.cli", "run", "--preset", "vertical", *sets,
         "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
