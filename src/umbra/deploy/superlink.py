"""``flower-superlink`` holding pulls until there is an answer: ``python -m
umbra.deploy.superlink --hold-s S -- <flower-superlink arguments>``.

Runs Flower's own ``flower-superlink`` entry point unchanged (the same arguments, TLS,
node authentication, Fleet, Control and Runtime APIs) after `umbra.deploy.link_wait` has
made its Fleet and Runtime API pulls wait up to ``S`` seconds for a message (long
polling) instead of answering empty at once. A Flower release that moved a patch point
makes it refuse to start with one line (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from umbra.deploy.link_wait import DEFAULT_HOLD_S, install_link_waits

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``--hold-s``, then run ``flower-superlink`` with the remaining arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m umbra.deploy.superlink",
        description="flower-superlink whose message pulls wait up to --hold-s seconds for "
        "a message; every argument after -- goes to flower-superlink",
    )
    parser.add_argument("--hold-s", type=float, default=DEFAULT_HOLD_S)
    args, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    try:
        install_link_waits(args.hold_s)
    except (RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from flwr.superlink.cli import flower_superlink

    sys.argv = ["flower-superlink", *rest]
    flower_superlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
