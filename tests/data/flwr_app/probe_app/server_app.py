"""ServerApp: waits for ``min-nodes`` nodes, sends each one query, writes the replies.

It polls the SuperLink every 0.1 s (not Grid.send_and_receive's 3 s) so the measured round
trip shows the SuperNode side of Flower's latency.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

__all__ = ["app"]

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    if cfg["fail"]:
        raise RuntimeError("asked to fail")
    out_file = Path(str(cfg["out-file"]))
    min_nodes = int(cfg["min-nodes"])
    deadline = time.monotonic() + float(cfg["wait-timeout"])
    node_ids = list(grid.get_node_ids())
    while len(node_ids) < min_nodes and time.monotonic() < deadline:
        time.sleep(0.2)
        node_ids = list(grid.get_node_ids())

    t0 = time.monotonic()
    messages = [
        Message(
            RecordDict({"ask": ConfigRecord({"what": "partition-id"})}), node_id, MessageType.QUERY
        )
        for node_id in node_ids
    ]
    pending = set(grid.push_messages(messages))
    replies: dict[str, int] = {}
    pids: dict[str, int] = {}
    reply_deadline = t0 + float(cfg["reply-timeout"])
    while pending and time.monotonic() < reply_deadline:
        for reply in grid.pull_messages(pending):
            pending.discard(reply.metadata.reply_to_message_id)
            if reply.has_content():
                record = reply.content.config_records["reply"]
                replies[str(reply.metadata.src_node_id)] = int(record["partition-id"])
                pids[str(reply.metadata.src_node_id)] = int(record["pid"])
        time.sleep(0.1)
    out_file.write_text(
        json.dumps(
            {
                "asked": [str(n) for n in node_ids],
                "replies": replies,
                "pids": pids,
                "round_trip_s": time.monotonic() - t0,
            }
        ),
        encoding="utf-8",
    )
