"""openmined-psi's three protocol messages, parsed from bytes and checked before use.

openmined-psi (ECDH over P-256, https://github.com/OpenMined/PSI) exchanges three
protobuf messages: the server's ``ServerSetup`` (its blinded set in a GCS, a Bloom filter
or raw), the client's ``Request`` (the client's blinded ids) and the server's ``Response``
(the request re-blinded with the server's key). The native library trusts its inputs: a
GCS with ``hash_range = 0`` or a Bloom filter with no bits aborts the process, a huge
``num_hash_functions`` hangs it, and a response shorter than the request silently yields a
wrong intersection. Every message a peer sends therefore goes through these loaders first:
they parse, check counts, lengths and ranges, and raise a one-line ``PsiProtocolError``.
"""

from __future__ import annotations

from typing import TypeVar

import private_set_intersection.python as oppsi
from google.protobuf.message import DecodeError, Message

from umbra.services.psi_errors import PsiProtocolError

__all__ = [
    "MAX_BLOOM_HASHES",
    "POINT_BYTES",
    "request_from",
    "response_from",
    "setup_from",
]

POINT_BYTES = 33  # a compressed P-256 point: every blinded element
MAX_BLOOM_HASHES = 128  # openmined-psi picks ~log2(n / fpr): 30-70 for sane settings
_MAX_GCS_DIV = 63  # a Golomb divisor is a shift of a 64-bit hash

_M = TypeVar("_M", bound=Message)


def _parse(cls: type[_M], data: bytes, what: str) -> _M:
    msg = cls()
    try:
        msg.ParseFromString(data)
    except DecodeError:
        raise PsiProtocolError(f"malformed {what} message (not a valid protobuf)") from None
    return msg


def _check_points(elements: list[bytes], what: str) -> None:
    for i, e in enumerate(elements):
        if len(e) != POINT_BYTES:
            raise PsiProtocolError(
                f"malformed {what} message: element {i} has {len(e)} bytes, not {POINT_BYTES}"
            )


def request_from(data: bytes, *, expected: int, reveal: bool) -> oppsi.Request:
    """A client's request: ``expected`` blinded ids, in the agreed mode."""
    req = _parse(oppsi.Request, data, "request")
    if len(req.encrypted_elements) != expected:
        raise PsiProtocolError(
            f"request has {len(req.encrypted_elements)} elements; {expected} were announced"
        )
    if req.reveal_intersection != reveal:
        want = "the intersection" if reveal else "its size only"
        raise PsiProtocolError(f"request asks for another mode than agreed ({want})")
    _check_points(list(req.encrypted_elements), "request")
    return req


def response_from(data: bytes, *, expected: int) -> oppsi.Response:
    """The server's response: one re-blinded element per requested one."""
    resp = _parse(oppsi.Response, data, "response")
    if len(resp.encrypted_elements) != expected:
        raise PsiProtocolError(
            f"response has {len(resp.encrypted_elements)} elements; the request had {expected}"
        )
    _check_points(list(resp.encrypted_elements), "response")
    return resp


def setup_from(data: bytes, *, max_elements: int) -> oppsi.ServerSetup:
    """The server's setup message, its filter parameters within the library's safe range."""
    setup = _parse(oppsi.ServerSetup, data, "setup")
    kind = setup.WhichOneof("data_structure")
    if kind is None:
        raise PsiProtocolError("malformed setup message: no data structure")
    if kind == "gcs":
        if setup.gcs.hash_range < 1 or not 0 <= setup.gcs.div <= _MAX_GCS_DIV:
            raise PsiProtocolError(
                "malformed setup message: GCS parameters out of range "
                f"(hash_range {setup.gcs.hash_range}, div {setup.gcs.div})"
            )
    elif kind == "bloom_filter":
        k = setup.bloom_filter.num_hash_functions
        if not 1 <= k <= MAX_BLOOM_HASHES or not setup.bloom_filter.bits:
            raise PsiProtocolError(
                "malformed setup message: Bloom filter with "
                f"{k} hash functions and {len(setup.bloom_filter.bits)} bytes"
            )
    else:
        elements = list(setup.raw.encrypted_elements)
        if len(elements) > max_elements:
            raise PsiProtocolError(
                f"setup message has {len(elements)} elements, more than the limit {max_elements}"
            )
        _check_points(elements, "setup")
    return setup
