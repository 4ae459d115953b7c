"""Private set intersection: results equal Python's set intersection (two parties and the
k-party chain, every data structure), ids are normalised as documented, and malformed
openmined-psi messages are refused before the native library sees them."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import private_set_intersection.python as oppsi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umbra.services import (
    DataStructure,
    IdSet,
    PsiClient,
    PsiConfig,
    PsiError,
    PsiInputError,
    PsiProtocolError,
    PsiServer,
    intersect_chain,
    intersect_pair,
)
from umbra.services.psi import gcs_min_fpr
from umbra.services.psi_messages import request_from, response_from, setup_from

STRUCTURES = list(DataStructure)
# exact up to fpr (1e-9): a Bloom filter's false positives are measured apart (below)
EXACT_STRUCTURES = [DataStructure.GCS, DataStructure.RAW]

# Sets drawn from a small universe so that overlaps of every size (none, some, all) occur,
# empty sets included.
id_sets = st.sets(st.integers(0, 40), max_size=25).map(lambda s: [f"rec-{i}" for i in s])


def _ids(values: list[str], ignore_case: bool = False) -> IdSet:
    return IdSet.from_ids(values, ignore_case=ignore_case)


@settings(max_examples=25, deadline=None)
@given(left=id_sets, right=id_sets, structure=st.sampled_from(EXACT_STRUCTURES))
def test_pair_equals_set_intersection(
    left: list[str], right: list[str], structure: DataStructure
) -> None:
    cfg = PsiConfig(data_structure=structure)
    result = intersect_pair(_ids(left), _ids(right), cfg)
    expected = set(left) & set(right)
    assert result.size == len(expected)
    assert result.shared is not None and set(result.shared) == expected
    assert result.positions is not None
    assert [left[p] for p in result.positions] == list(result.shared)
    # the bytes are the real serialized messages: one 33-byte point per client id each way
    assert result.bytes_to_server >= 33 * len(left)
    assert result.bytes_to_client >= 33 * len(left)


@settings(max_examples=15, deadline=None)
@given(left=id_sets, right=id_sets)
def test_bloom_never_misses_a_shared_id(left: list[str], right: list[str]) -> None:
    result = intersect_pair(_ids(left), _ids(right), PsiConfig(data_structure=DataStructure.BLOOM))
    assert result.shared is not None and set(result.shared) >= set(left) & set(right)


def test_bloom_setup_is_padded_to_a_filter_with_rare_false_positives() -> None:
    # openmined-psi's Bloom filter matches a foreign id with probability about 1/m (m its
    # bits): about 1 in 100 for a 2-id server set. The padded setup has m >= 150,000 bits
    # whatever the server's set size, and the dummies are fresh random values.
    from private_set_intersection.python import ServerSetup

    from umbra.services.psi import BLOOM_MIN_ELEMENTS, PsiServer, bloom_padding

    cfg = PsiConfig(data_structure=DataStructure.BLOOM)
    setup = ServerSetup()
    setup.ParseFromString(PsiServer(_ids(["rec-40", "rec-33"]), cfg).setup(1))
    assert 8 * len(setup.bloom_filter.bits) >= 150_000
    pad = bloom_padding(2)
    assert len(pad) == BLOOM_MIN_ELEMENTS - 2 and len(set(pad + bloom_padding(2))) == 2 * len(pad)
    assert bloom_padding(BLOOM_MIN_ELEMENTS + 5) == []
    # and on that setup the case that used to come back wrong about 1 in 100 times
    wrong = sum(
        intersect_pair(_ids(["rec-8"]), _ids(["rec-40", "rec-33"]), cfg).size for _ in range(100)
    )
    assert wrong == 0


@settings(max_examples=15, deadline=None)
@given(left=id_sets, right=id_sets)
def test_pair_cardinality_only(left: list[str], right: list[str]) -> None:
    result = intersect_pair(_ids(left), _ids(right), PsiConfig(cardinality_only=True))
    assert result.size == len(set(left) & set(right))
    assert result.shared is None and result.positions is None


@settings(max_examples=20, deadline=None)
@given(sets=st.lists(id_sets, min_size=2, max_size=5), structure=st.sampled_from(EXACT_STRUCTURES))
def test_chain_equals_set_intersection(sets: list[list[str]], structure: DataStructure) -> None:
    result = intersect_chain([_ids(s) for s in sets], PsiConfig(data_structure=structure))
    expected = set.intersection(*(set(s) for s in sets))
    assert result.size == len(expected)
    canonical = sorted(
        expected, key=lambda i: hashlib.sha256(b"umbra-psi-id-v1\x00" + i.encode()).digest()
    )
    for ids, view in zip(sets, result.views, strict=True):
        assert view.shared == tuple(canonical)  # every party: the same records, same order
        assert view.positions is not None
        assert [ids[p] for p in view.positions] == canonical
    # party i held the running intersection of the parties before it, and no more
    for i, view in enumerate(result.views[1:], start=1):
        assert view.running_size == len(set.intersection(*(set(s) for s in sets[:i])))


@settings(max_examples=10, deadline=None)
@given(sets=st.lists(id_sets, min_size=3, max_size=4))
def test_chain_cardinality_only(sets: list[list[str]]) -> None:
    result = intersect_chain([_ids(s) for s in sets], PsiConfig(cardinality_only=True))
    assert result.size == len(set.intersection(*(set(s) for s in sets)))
    assert all(v.size == result.size and v.shared is None for v in result.views)


normalised_text = st.text(min_size=1, max_size=6).filter(
    lambda t: unicodedata.normalize("NFC", t).strip() == t
)


@settings(max_examples=15, deadline=None)
@given(left=st.sets(normalised_text, max_size=12), right=st.sets(normalised_text, max_size=12))
def test_unicode_ids(left: set[str], right: set[str]) -> None:
    result = intersect_pair(_ids(sorted(left)), _ids(sorted(right)))
    assert set(result.shared or ()) == left & right


def test_normalisation_policy() -> None:
    ids = IdSet.from_ids(["  Ab1\t", "", "   ", "e\u0301"])  # NFD é
    assert ids.ids == ("Ab1", "\u00e9")  # trimmed, blank skipped, NFC
    assert intersect_pair(ids, _ids(["ab1", "é"])).shared == ("\u00e9",)  # case-sensitive
    folded = IdSet.from_ids(["Ab1", "STRASSE"], ignore_case=True)
    other = IdSet.from_ids(["aB1", "straße"], ignore_case=True)
    assert set(intersect_pair(folded, other).shared or ()) == {"ab1", "strasse"}
    with pytest.raises(PsiError, match="different case policies"):
        intersect_pair(folded, ids)


def test_duplicates_refused() -> None:
    with pytest.raises(
        PsiInputError, match=re.escape("id 3: duplicate id (same as id 1 after trimming)")
    ):
        IdSet.from_ids(["a", "b", " a "])
    with pytest.raises(PsiInputError, match="case folding"):
        IdSet.from_ids(["a", "A"], ignore_case=True)
    assert len(IdSet.from_ids(["a", "A"])) == 2


def test_file_reading(tmp_path: Path) -> None:
    good = tmp_path / "ids.txt"
    good.write_bytes(b"\xef\xbb\xbfx1\r\ny2\n\n z3 \n")
    assert IdSet.from_file(good).ids == ("x1", "y2", "z3")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\nfine\nab\xffc\n")
    with pytest.raises(
        PsiInputError, match=re.escape("bad.txt line 3: not valid UTF-8 (byte 0xff at column 3)")
    ):
        IdSet.from_file(bad)
    with pytest.raises(PsiInputError, match="no such file"):
        IdSet.from_file(tmp_path / "missing.txt")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="fpr must be in"):
        PsiConfig(fpr=0.5)
    with pytest.raises(ValueError, match="fpr must be in"):
        PsiConfig(fpr=1e-31)
    # the smallest accepted rate still gives a Bloom filter the client accepts
    tight = PsiConfig(fpr=1e-30, data_structure=DataStructure.BLOOM)
    assert intersect_pair(_ids(["a", "b"]), _ids(["b"]), tight).shared == ("b",)
    assert PsiConfig(data_structure="raw").data_structure is DataStructure.RAW
    with pytest.raises(ValueError, match="'heap' is not a valid DataStructure"):
        PsiConfig(data_structure="heap")
    with pytest.raises(ValueError, match="max_ids"):
        PsiConfig(max_ids=0)
    with pytest.raises(PsiError, match="at least 2 parties"):
        intersect_chain([_ids(["a"])])


def test_keys_are_fresh() -> None:
    """No seed: two sessions over the same ids send different blinded points."""
    ids = _ids(["a", "b"])
    assert PsiClient(ids, PsiConfig()).request() != PsiClient(ids, PsiConfig()).request()


# -- malformed messages: refused with one line, where the native library would abort, hang
#    or answer wrongly


def _session(structure: DataStructure = DataStructure.GCS) -> tuple[PsiClient, bytes, bytes, bytes]:
    cfg = PsiConfig(data_structure=structure)
    client, server = PsiClient(_ids(["a", "b", "c"]), cfg), PsiServer(_ids(["b", "c", "d"]), cfg)
    setup = server.setup(3)
    request = client.request()
    return client, setup, request, server.respond(request, client_size=3)


def test_valid_session_as_reference() -> None:
    client, setup, _, response = _session()
    assert client.finish(setup, response) == (2, (1, 2))


@pytest.mark.parametrize(
    ("structure", "edit", "needle"),
    [
        (
            DataStructure.GCS,
            lambda s: setattr(s.gcs, "hash_range", 0),
            "GCS parameters out of range",
        ),
        (DataStructure.GCS, lambda s: setattr(s.gcs, "div", 64), "GCS parameters out of range"),
        (DataStructure.BLOOM, lambda s: setattr(s.bloom_filter, "bits", b""), "Bloom filter"),
        (
            DataStructure.BLOOM,
            lambda s: setattr(s.bloom_filter, "num_hash_functions", 2**31 - 1),
            "Bloom filter",
        ),
        (
            DataStructure.RAW,
            lambda s: s.raw.encrypted_elements.append(b"x"),
            "element 3 has 1 bytes",
        ),
        (DataStructure.GCS, lambda s: s.ClearField("gcs"), "no data structure"),
    ],
)
def test_malformed_setup(
    structure: DataStructure, edit: Callable[[Any], object], needle: str
) -> None:
    client, setup, _, response = _session(structure)
    msg = oppsi.ServerSetup()
    msg.ParseFromString(setup)
    edit(msg)
    with pytest.raises(PsiProtocolError, match=needle):
        client.finish(msg.SerializeToString(), response)


def test_malformed_response_and_request() -> None:
    client, setup, request, response = _session()
    resp = oppsi.Response()
    resp.ParseFromString(response)
    resp.encrypted_elements.pop()  # the library would silently report a smaller intersection
    with pytest.raises(PsiProtocolError, match="response has 2 elements; the request had 3"):
        client.finish(setup, resp.SerializeToString())
    resp.encrypted_elements.append(b"\x02" + b"\xff" * 32)  # right length, not a curve point
    with pytest.raises(PsiProtocolError, match=r"server messages rejected: .*decode point"):
        client.finish(setup, resp.SerializeToString())
    with pytest.raises(PsiProtocolError, match="malformed response message"):
        response_from(b"\xff\xff\xff", expected=3)
    with pytest.raises(PsiProtocolError, match="malformed setup message"):
        setup_from(b"\x0a\xff", max_elements=10)
    with pytest.raises(PsiProtocolError, match="request has 3 elements; 4 were announced"):
        request_from(request, expected=4, reveal=True)
    with pytest.raises(PsiProtocolError, match="another mode than agreed"):
        request_from(request, expected=3, reveal=False)
    server = PsiServer(_ids(["b"]), PsiConfig())
    req = oppsi.Request()
    req.ParseFromString(request)
    req.encrypted_elements[0] = b"\x05" + bytes(32)
    with pytest.raises(PsiProtocolError, match=r"request rejected: .*decode point"):
        server.respond(req.SerializeToString(), client_size=3)
    with pytest.raises(PsiProtocolError, match="accepts at most"):
        PsiServer(_ids(["b"]), PsiConfig(max_ids=5)).setup(6)


def test_gcs_false_positive_rate_kept_within_the_library_range() -> None:
    """openmined-psi's GCS hash range wraps past 2^63 and its divisor overflows for huge
    gaps; the server raises fpr just enough, and the result stays exact."""
    assert gcs_min_fpr(100_000, 100_000) == pytest.approx(1e10 / 2**62)
    left, right = [f"r{i}" for i in range(30)], [f"r{i}" for i in range(20, 45)]
    cfg = PsiConfig(fpr=1e-30)  # 30 * 30 / 1e-30 would wrap
    server = PsiServer(_ids(right), cfg)
    client = PsiClient(_ids(left), cfg)
    setup = server.setup(30)
    request = client.request()
    size, _ = client.finish(setup, server.respond(request, client_size=30))
    assert size == 10
    assert server.fpr == pytest.approx(30 * 30 / (25 * 2**50))
    # the range fits in 63 bits, but the mean gap (4e17) would overflow the divisor
    lone = intersect_pair(_ids([f"r{i}" for i in range(200)]), _ids(["r7"]), PsiConfig(fpr=1e-13))
    assert lone.shared == ("r7",)
    small = PsiServer(_ids(right), PsiConfig())
    small.setup(30)
    assert small.fpr == 1e-9
