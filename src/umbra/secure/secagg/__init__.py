"""SecAgg+ secure aggregation (Bell et al., CCS 2020, https://eprint.iacr.org/2020/704).

Modules: :mod:`~umbra.secure.secagg.config` (the round's public parameters),
:mod:`~umbra.secure.secagg.messages` (what both sides agree on about messages),
:mod:`~umbra.secure.secagg.advert` (signed advertisements),
:mod:`~umbra.secure.secagg.client` and :mod:`~umbra.secure.secagg.server` (the state
machines), :mod:`~umbra.secure.secagg.errors`; primitives in ``crypto``, ``shamir``,
``graph``, ``quantize``, ``constants``; Flower glue in ``client_mod`` and ``workflow``.

Transport-independent state machines for the SecAgg+ protocol, itself the sparse-graph
version of Bonawitz et al. (CCS 2017, https://eprint.iacr.org/2017/281):

1. **advertise keys** - each client creates two X25519 key pairs (``c``: share
   encryption, ``s``: pairwise masks) and sends the public halves (or adopts, with
   `SecAggPlusClient.adopt_keys`, single-use pre-keys whose public halves it sent ahead
   with its previous round's unmask reply, which saves this message exchange); on a sparse
   graph it also draws 32 random bytes ``r_i`` and sends the commitment ``H(r_i)``;
1b. **reveal seed** (sparse graphs only) - the server relays the roster and all
   commitments; each client checks its own is there and reveals ``r_i``;
2. **share keys** - the server relays the roster (and on a sparse graph every ``r_j``:
   each client checks them against the commitments and derives the graph seed
   ``H(r_1 .. r_n)`` itself, so the server cannot choose the graph); each client draws a
   self-mask seed ``b``, Shamir-shares ``b`` and its mask secret key among its neighbours
   (threshold ``tau``) and sends the shares encrypted (ChaCha20-Poly1305) to each neighbour
   through the server, with a commitment to ``b``;
3. **collect masked inputs** - each client decrypts the shares it received and sends
   ``y_i = x_i + PRG(b_i) + sum_{j in N(i), i<j} PRG(s_ij) - sum_{j in N(i), j<i} PRG(s_ij)``
   in Z_{2^32}, where ``s_ij`` comes from X25519(s_i, s_j) + HKDF, and the PRG (ChaCha20)
   binds the round number;
4. **unmask** - survivors send shares of ``b`` for survivors and of the mask key for
   clients that dropped after sharing; the server reconstructs them, removes the masks and
   obtains only the sum. A client never reveals both kinds of share for one client.

Messages are plain dicts of ints, bytes, lists of bytes and numpy arrays (keys in
`constants.Key`), ready to be put into Flower records.

Threat model: a server colluding with fewer than ``t`` clients on the complete graph
(``n <= COMPLETE_GRAPH_MAX_CLIENTS``), with a ``CORRUPT_FRACTION`` of the clients on the
sparse graph beyond, except with probability ``2^-SECURITY_BITS``
(`graph.collusion_bound`). The graph seed is unbiased except that the server may abort a
round after the reveals (a visible aborted round, after which the next round draws a fresh
graph).

* **With an identity roster** (`SecureSettings.roster`: simulation always; a deployment
  whose nodes have authentication keys) advertisements are signed (``advert``; Bonawitz
  et al. §4, active-adversary variant): each client checks every neighbour's signature
  against its own roster before deriving a pairwise key or sharing a secret, so a server
  that substitutes a client's public keys (a man in the middle on the pairwise keys and the
  share encryption), replays an advertisement from another round or run, or invents a
  client is refused by every honest client (`ProtocolViolation` naming the peer). Pre-keys
  are unsigned and not used then.
* **Without a roster** advertisements are unsigned: the guarantee needs a server that
  relays keys faithfully (semi-honest), since a substituted key goes unnoticed by everyone
  but its owner.

There is no consistency-check round (signatures on the survivor set, Bonawitz et al. §4 /
Bell et al.), so a server that sent different survivor lists to different clients could
unmask one client; a malicious client can still send any well-formed vector (input
validation is the poisoning defence's job). A digest on the masked vector only detects
corruption in transit.
"""

from umbra.secure.secagg.client import ClientState, SecAggPlusClient
from umbra.secure.secagg.config import SecAggConfig
from umbra.secure.secagg.errors import ProtocolViolation, SecAggAbort, SecAggError
from umbra.secure.secagg.graph import (
    collusion_bound,
    default_degree,
    graph_parameters,
    neighbour_graph,
)
from umbra.secure.secagg.quantize import PayloadLayout, QuantizationSpec
from umbra.secure.secagg.server import SecAggPlusServer, ServerState
from umbra.secure.secagg.shamir import combine_shares, split_secret

__all__ = [
    "ClientState",
    "PayloadLayout",
    "ProtocolViolation",
    "QuantizationSpec",
    "SecAggAbort",
    "SecAggConfig",
    "SecAggError",
    "SecAggPlusClient",
    "SecAggPlusServer",
    "ServerState",
    "collusion_bound",
    "combine_shares",
    "default_degree",
    "graph_parameters",
    "neighbour_graph",
    "split_secret",
]
