"""``flower-supernode`` with Umbra's shorter waits: ``python -m umbra.deploy.supernode
--idle-poll-s S [--wake-port P] -- <flower-supernode arguments>``.

Runs Flower's own ``flower-supernode`` entry point unchanged (the same arguments, TLS,
authentication, node config and Runtime API) after `umbra.deploy.flower_timing` has
capped its idle poll at ``S`` seconds (Flower: 3 s) and shortened its object-pull
backoff, and `umbra.deploy.node_wakeup` has made its waits for a ClientApp's reply end
when the reply arrives and, with ``--wake-port``, tells the ClientApp host on that
loopback UDP port when a message is ready. A Flower release that moved a patch point
makes it refuse to start with one line (exit 2) rather than silently keep Flower's waits.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from umbra.deploy.commands import DEFAULT_IDLE_POLL_S
from umbra.deploy.flower_timing import cap_supernode_sleep, shorten_pull_backoff
from umbra.deploy.node_wakeup import install_supernode_wakeups

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``--idle-poll-s``, then run ``flower-supernode`` with the remaining arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m umbra.deploy.supernode",
        description="flower-supernode with an idle poll of --idle-poll-s seconds; every "
        "argument after -- goes to flower-supernode",
    )
    parser.add_argument("--idle-poll-s", type=float, default=DEFAULT_IDLE_POLL_S)
    parser.add_argument("--wake-port", type=int, default=None,
                        help="loopback UDP port of this node's ClientApp host")  # fmt: skip
    args, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    try:
        if args.wake_port is not None and not 0 < args.wake_port < 65536:
            raise ValueError(f"--wake-port must be 1-65535, got {args.wake_port}")
        sleeper = cap_supernode_sleep(args.idle_poll_s)
        shorten_pull_backoff()
        install_supernode_wakeups(sleeper, args.wake_port)
    except (RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *rest]
    flower_supernode()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
