"""Buffered asynchronous aggregation (FedBuff, ``federation.mode = "async"``; docs/async.md).

Which party runs what: `staleness` (the weight s(τ)) is read by both sides;
`client_update` runs inside an organisation (it weights its own update); `speeds` and
`clock` are the pure virtual-clock simulation; `buffer_round` and `loop` run on the server
(`loop.run_buffered` is imported by the server loop where it needs it, so that a client
never imports server code through this package).
"""

from umbra.federation.buffered.clock import Buffer, Task, VirtualClock
from umbra.federation.buffered.speeds import speed_factors, stragglers, sync_round_time
from umbra.federation.buffered.staleness import (
    RULE_KEY,
    STALENESS_KEY,
    register_staleness_rule,
    staleness_rules,
    staleness_weight,
)

__all__ = [
    "RULE_KEY",
    "STALENESS_KEY",
    "Buffer",
    "Task",
    "VirtualClock",
    "register_staleness_rule",
    "speed_factors",
    "staleness_rules",
    "staleness_weight",
    "stragglers",
    "sync_round_time",
]
