"""SecAgg+ secure aggregation (Bell et al., CCS 2020): primitives and protocol state machines."""

from umbra.secure.secagg.graph import (
    collusion_bound,
    default_degree,
    graph_parameters,
    neighbour_graph,
)
from umbra.secure.secagg.protocol import (
    ClientState,
    ProtocolViolation,
    SecAggAbort,
    SecAggConfig,
    SecAggError,
    SecAggPlusClient,
    SecAggPlusServer,
    ServerState,
    Transcript,
    message_nbytes,
    run_secagg_round,
)
from umbra.secure.secagg.quantize import PayloadLayout, QuantizationSpec
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
    "Transcript",
    "collusion_bound",
    "combine_shares",
    "default_degree",
    "graph_parameters",
    "message_nbytes",
    "neighbour_graph",
    "run_secagg_round",
    "split_secret",
]
