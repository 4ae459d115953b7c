"""ClientApp: answers a query with the node's partition id (from its --node-config)."""

from __future__ import annotations

import os

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

__all__ = ["app"]

app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Reply with this node's partition id and the PID of the process that answered."""
    reply = ConfigRecord(
        {"partition-id": int(context.node_config["partition-id"]), "pid": os.getpid()}
    )
    return Message(RecordDict({"reply": reply}), reply_to=msg)
