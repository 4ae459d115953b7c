"""A Flower Grid whose nodes are the real ClientApp called in this process.

`run_rounds` (and FedBuff's loop) talk to the federation through the three Grid methods
below only, so an object with them runs a whole federation without Ray or a SuperLink:
one persistent `Context` per node (client state lives there as it does on a SuperNode),
partition id = the node's position in ``node_ids``. Benchmarks use it to run many
federations cheaply and tests to control which node answers; `umbra run` never does.

`silent` nodes are listed but never answer (a crashed SuperNode the SuperLink still
lists); `gone` nodes are no longer listed (after Flower's heartbeat timeout). With
``seed_torch``, torch's global generator is seeded with the node id before each call,
so two runs of the same client train identically whatever ran before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import cast

import torch
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid

__all__ = ["InProcessGrid"]


class InProcessGrid:
    """``app(message, context)`` answering for every node of ``node_ids``."""

    def __init__(
        self,
        app: Callable[[Message, Context], Message],
        node_ids: Sequence[int],
        *,
        seed_torch: bool = False,
    ) -> None:
        if len(set(node_ids)) != len(node_ids):
            raise ValueError("node ids must be distinct")
        self.app = app
        self.node_ids = list(node_ids)
        self.seed_torch = seed_torch
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": i},
                state=RecordDict(),
                run_config={},
            )
            for i, node in enumerate(self.node_ids)
        }
        self.silent: set[int] = set()
        self.gone: set[int] = set()
        #: the sorted destination nodes of each `send_and_receive` call
        self.sent_to: list[list[int]] = []

    def get_node_ids(self) -> list[int]:
        return [n for n in self.node_ids if n not in self.gone]

    def send_and_receive(
        self, messages: Iterable[Message], timeout: float | None = None
    ) -> list[Message]:
        msgs = list(messages)
        self.sent_to.append(sorted(m.metadata.dst_node_id for m in msgs))
        replies = []
        for msg in msgs:
            node = msg.metadata.dst_node_id
            if node in self.silent or node in self.gone:
                continue  # no reply within the timeout
            if self.seed_torch:
                torch.manual_seed(node)
            replies.append(self.app(msg, self.contexts[node]))
        return replies

    def as_grid(self) -> Grid:
        """This object typed as the Grid it stands in for (it has the methods the round
        loops call, not Flower's whole Grid interface)."""
        return cast(Grid, self)
