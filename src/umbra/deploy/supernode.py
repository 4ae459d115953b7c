"""``flower-supernode`` with Umbra's shorter waits: ``python -m umbra.deploy.supernode
--idle-poll-s S -- <flower-supernode arguments>``.

Runs Flower's own ``flower-supernode`` entry point unchanged (the same arguments, TLS,
authentication, node config and Runtime API) after `umbra.deploy.flower_timing` has
capped its idle poll at ``S`` seconds (Flower: 3 s) and shortened its object-pull
backoff. A Flower release that moved either patch point makes it refuse to start with
one line (exit 2) rather than silently keep Flower's waits.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from umbra.deploy.commands import DEFAULT_IDLE_POLL_S
from umbra.deploy.flower_timing import cap_supernode_sleep, shorten_pull_backoff

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``--idle-poll-s``, then run ``flower-supernode`` with the remaining arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m umbra.deploy.supernode",
        description="flower-supernode with an idle poll of --idle-poll-s seconds; every "
        "argument after -- goes to flower-supernode",
    )
    parser.add_argument("--idle-poll-s", type=float, default=DEFAULT_IDLE_POLL_S)
    args, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    try:
        cap_supernode_sleep(args.idle_poll_s)
        shorten_pull_backoff()
    except (RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *rest]
    flower_supernode()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
