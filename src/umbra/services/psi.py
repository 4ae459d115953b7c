"""Two-party private set intersection (ECDH PSI with openmined-psi): the two roles and a
local run of both.

The protocol is Diffie-Hellman PSI (Meadows 1986; Huberman, Franklin & Hogg 1999) as
openmined-psi implements it over P-256 (Angelou et al., "Asymmetric Private Set
Intersection with Applications to Contact Tracing and Private Vertical Federated Machine
Learning", 2020):

1. the **server** hashes each of its ids to the curve and raises it to its secret key
   ``s``; the set of ``H(y)^s`` goes to the client in a ``ServerSetup``, compressed as a
   Golomb-compressed set (GCS, the default: a false-positive rate ``fpr`` for the
   client's whole query), a Bloom filter (padded, `BLOOM_MIN_ELEMENTS`: the library's
   filter misses ``fpr``), or raw (every point, exact, ~6x larger);
2. the **client** sends ``H(x)^c`` for each of its ids (``Request``), ``c`` its secret key;
3. the server returns ``H(x)^(cs)`` (``Response``): in the request's order, or in an
   order unrelated to it under ``cardinality_only`` so that the client learns only the
   count;
4. the client removes ``c`` and looks each ``H(x)^s`` up in the setup's filter.

What each party learns (semi-honest parties): the **client** learns the intersection (or,
with ``cardinality_only``, its size) and the size of the server's set; the **server**
learns the size of the client's set and nothing about which ids are shared. A filter may
report a false positive (a GCS with probability ``fpr`` over the whole query, 1e-9 by
default; ``raw`` never). Keys come from openmined-psi's own key generation (BoringSSL's CSPRNG),
fresh for every session and never serialized.

``PsiServer`` and ``PsiClient`` are the two roles over bytes (what the network carries);
``intersect_pair`` runs both in one process and reports the real serialized sizes.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import StrEnum

import private_set_intersection.python as oppsi

from umbra.services.psi_errors import PsiError, PsiProtocolError
from umbra.services.psi_ids import IdSet
from umbra.services.psi_messages import request_from, response_from, setup_from

__all__ = [
    "BLOOM_MIN_ELEMENTS",
    "DEFAULT_FPR",
    "MIN_FPR",
    "DataStructure",
    "PairResult",
    "PsiClient",
    "PsiConfig",
    "PsiServer",
    "gcs_min_fpr",
    "intersect_pair",
]

DEFAULT_FPR = 1e-9
# Below this a Bloom filter would need more hash functions than a setup message may carry
# (psi_messages.MAX_BLOOM_HASHES): about log2(max_ids / fpr).
MIN_FPR = 1e-30

# openmined-psi 2.0.6's Bloom filter places an element's k bits by double hashing modulo
# the filter's m bits; measured, a foreign id then matches with probability about 1/m
# whatever fpr asks for (1 in 100 against 2 server ids, 1 in 3,000 against 64). A Bloom
# setup therefore carries at least this many elements: the server's digests and random
# dummies (32 random bytes each, never the digest of an id), so m >= ~180,000 bits.
BLOOM_MIN_ELEMENTS = 4096

# A server caps the client's announced set size: every blinded id costs it one scalar
# multiplication and 33 bytes of response.
DEFAULT_MAX_IDS = 2_000_000
_GCS_MAX_RANGE = float(2**62)
_GCS_MAX_GAP = float(2**50)


class DataStructure(StrEnum):
    """How the server's blinded set travels in the setup message."""

    GCS = "gcs"
    BLOOM = "bloom"
    RAW = "raw"

    @property
    def native(self) -> oppsi.DataStructure:
        return {
            DataStructure.GCS: oppsi.DataStructure.GCS,
            DataStructure.BLOOM: oppsi.DataStructure.BLOOM_FILTER,
            DataStructure.RAW: oppsi.DataStructure.RAW,
        }[self]


@dataclass(frozen=True)
class PsiConfig:
    """What both roles agree on before a session.

    ``cardinality_only``: the client learns only the size of the intersection.
    ``fpr``: false-positive probability of the whole query for GCS and Bloom filters, in
    [1e-30, 0.01]; ignored for raw. ``max_ids``: the largest set either role accepts from a peer.
    """

    cardinality_only: bool = False
    data_structure: DataStructure = DataStructure.GCS
    fpr: float = DEFAULT_FPR
    max_ids: int = DEFAULT_MAX_IDS

    def __post_init__(self) -> None:
        # accept the plain names ("gcs", "bloom", "raw") as well as the enum
        object.__setattr__(self, "data_structure", DataStructure(self.data_structure))
        if not MIN_FPR <= self.fpr <= 0.01:
            raise ValueError(f"fpr must be in [{MIN_FPR:g}, 0.01], got {self.fpr:g}")
        if self.max_ids < 1:
            raise ValueError(f"max_ids must be at least 1, got {self.max_ids}")

    @property
    def reveal(self) -> bool:
        return not self.cardinality_only


def gcs_min_fpr(client_size: int, server_size: int) -> float:
    """The smallest false-positive rate openmined-psi's GCS can be built with for these
    set sizes.

    The library sizes the hash range as ``client_size * max(client_size, server_size) /
    fpr`` in a signed 64-bit integer, which wraps negative past 2^63 (at 100,000 x 100,000
    ids, fpr 1e-9 already does); and it picks the Golomb divisor from ``1 - 1 / gap`` in
    double precision, which rounds to 1 (an infinite divisor, an exception) once the mean
    gap ``hash_range / server_size`` passes about 2^53. Keeping the range below 2^62 and
    the mean gap below 2^50 leaves room for rounding.
    """
    n_c, n_s = max(client_size, 1), max(server_size, 1)
    return n_c * max(n_c, n_s) / min(_GCS_MAX_RANGE, n_s * _GCS_MAX_GAP)


def bloom_padding(count: int) -> list[str]:
    """Random dummy elements that bring a Bloom setup of ``count`` ids up to
    `BLOOM_MIN_ELEMENTS` (hex like the ids' digests; from the OS's CSPRNG, so the client
    cannot tell them from ids and no id of its own can equal one)."""
    return [secrets.token_hex(32) for _ in range(max(0, BLOOM_MIN_ELEMENTS - count))]


class PsiServer:
    """The role whose set is encoded in the setup message. It learns the client's set size.

    ``fpr`` after ``setup``: the false-positive rate used, ``config.fpr`` raised to
    ``gcs_min_fpr`` where a GCS cannot reach it (2.2e-9 at 100,000 x 100,000 ids; 8.9e-8
    for 100,000 client ids against 100 server ids).
    """

    def __init__(self, ids: IdSet, config: PsiConfig) -> None:
        self.ids = ids
        self.config = config
        self.fpr = config.fpr
        self._psi = oppsi.server.CreateWithNewKey(config.reveal)

    def setup(self, client_size: int) -> bytes:
        """The setup message for a client that announced ``client_size`` ids."""
        if not 0 <= client_size <= self.config.max_ids:
            raise PsiProtocolError(
                f"the client announced {client_size} ids; this server accepts at most "
                f"{self.config.max_ids}"
            )
        self.fpr = self.config.fpr
        if self.config.data_structure is DataStructure.GCS:
            self.fpr = max(self.fpr, gcs_min_fpr(client_size, len(self.ids)))
        elements = list(self.ids.hex_digests)
        if self.config.data_structure is DataStructure.BLOOM:
            elements += bloom_padding(len(elements))
        msg = self._psi.CreateSetupMessage(
            self.fpr,
            max(client_size, 1),  # the library's fpr is per query: at least one element
            elements,
            self.config.data_structure.native,
        )
        return msg.SerializeToString()

    def respond(self, request: bytes, *, client_size: int) -> bytes:
        """The response to a client's request of ``client_size`` blinded ids."""
        req = request_from(request, expected=client_size, reveal=self.config.reveal)
        try:
            resp = self._psi.ProcessRequest(req)
        except RuntimeError as err:
            raise PsiProtocolError(f"request rejected: {_first_line(err)}") from None
        return resp.SerializeToString()


class PsiClient:
    """The role that learns the intersection (or its size) and the server's set size."""

    def __init__(self, ids: IdSet, config: PsiConfig) -> None:
        self.ids = ids
        self.config = config
        self._psi = oppsi.client.CreateWithNewKey(config.reveal)

    def request(self) -> bytes:
        """The client's blinded ids, in its set's order."""
        return self._psi.CreateRequest(self.ids.hex_digests).SerializeToString()

    def finish(self, setup: bytes, response: bytes) -> tuple[int, tuple[int, ...] | None]:
        """The intersection's size and, unless cardinality-only, the positions of the shared
        ids in this client's set (ascending)."""
        server_setup = setup_from(setup, max_elements=self.config.max_ids)
        resp = response_from(response, expected=len(self.ids))
        try:
            if self.config.cardinality_only:
                return int(self._psi.GetIntersectionSize(server_setup, resp)), None
            found = sorted(int(i) for i in self._psi.GetIntersection(server_setup, resp))
        except RuntimeError as err:
            raise PsiProtocolError(f"server messages rejected: {_first_line(err)}") from None
        if len(set(found)) != len(found) or (
            found and not 0 <= found[0] <= found[-1] < len(self.ids)
        ):
            raise PsiError("openmined-psi returned positions outside the client's set")
        return len(found), tuple(found)


@dataclass(frozen=True)
class PairResult:
    """One two-party session as the client sees it, with what went over the wire.

    ``positions``: indices of the shared ids in the client's set, in ascending id digest
    (the order every party can reproduce, so rows line up across parties); ``shared``: those
    ids, normalised. Both ``None`` under cardinality-only. Bytes are the serialized protobuf messages (the network adds a
    frame header of 8 bytes per message and a 16-byte hello).
    """

    size: int
    shared: tuple[str, ...] | None
    positions: tuple[int, ...] | None
    server_size: int
    client_size: int
    bytes_to_client: int  # setup + response
    bytes_to_server: int  # request


def intersect_pair(client: IdSet, server: IdSet, config: PsiConfig | None = None) -> PairResult:
    """Run both roles in this process over serialized messages: the client's view."""
    cfg = config or PsiConfig()
    if len(client) > cfg.max_ids or len(server) > cfg.max_ids:
        raise PsiError(f"a set has more than max_ids = {cfg.max_ids} ids")
    if client.ignore_case != server.ignore_case:
        raise PsiError("the two id sets were normalised with different case policies")
    srv = PsiServer(server, cfg)
    cli = PsiClient(client, cfg)
    setup = srv.setup(len(client))
    request = cli.request()
    response = srv.respond(request, client_size=len(client))
    size, positions = cli.finish(setup, response)
    if positions is not None:
        positions = client.canonical(positions)
    shared = None if positions is None else tuple(client.ids[i] for i in positions)
    return PairResult(
        size=size,
        shared=shared,
        positions=positions,
        server_size=len(server),
        client_size=len(client),
        bytes_to_client=len(setup) + len(response),
        bytes_to_server=len(request),
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
