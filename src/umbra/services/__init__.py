"""Services on top of a federation's records and model.

Private set intersection (docs/psi.md), which parties run, each on its own ids:

* :mod:`~umbra.services.psi_ids`: ids as compared (UTF-8, NFC, trimmed, case policy,
  duplicates refused) and their SHA-256 digests;
* :mod:`~umbra.services.psi_messages`: openmined-psi's messages parsed and range-checked
  before the native library sees them;
* :mod:`~umbra.services.psi`: the server and client roles over bytes, and both in one
  process (``intersect_pair``);
* :mod:`~umbra.services.psi_chain`: k parties as a chain of two-party sessions that passes
  the running intersection on (``intersect_chain``), each party's aligned view;
* :mod:`~umbra.services.psi_wire` and :mod:`~umbra.services.psi_network`: the framed TCP
  protocol of ``umbra psi serve`` / ``join``;
* :mod:`~umbra.services.psi_chain_network`: one party of the chain as its own process
  (``umbra psi chain``);
* :mod:`~umbra.services.psi_cli`: the ``umbra psi`` commands.
"""

from umbra.services.psi import (
    DataStructure,
    PairResult,
    PsiClient,
    PsiConfig,
    PsiServer,
    intersect_pair,
)
from umbra.services.psi_chain import ChainResult, PartyView, intersect_chain
from umbra.services.psi_chain_network import ChainPartyResult, chain_party
from umbra.services.psi_errors import PsiError, PsiInputError, PsiProtocolError
from umbra.services.psi_ids import IdSet
from umbra.services.psi_network import JoinResult, ServeResult, join, serve

__all__ = [
    "ChainPartyResult",
    "ChainResult",
    "DataStructure",
    "IdSet",
    "JoinResult",
    "PairResult",
    "PartyView",
    "PsiClient",
    "PsiConfig",
    "PsiError",
    "PsiInputError",
    "PsiProtocolError",
    "PsiServer",
    "ServeResult",
    "chain_party",
    "intersect_chain",
    "intersect_pair",
    "join",
    "serve",
]
