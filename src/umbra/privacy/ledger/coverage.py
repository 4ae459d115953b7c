"""Resume checks: a checkpoint's ledger digest and the coverage a resumed run requires.

Every checkpoint records :func:`ledger_digest` of the ledger as it was when the round
completed; :func:`check_coverage` refuses a ledger that is missing, shorter, altered before
that point, or lacks a release for one of the checkpoint's rounds, so that ε can never
silently restart at 0.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from umbra.errors import DataError, ResumeError
from umbra.privacy.ledger.jsonl import read_ledger

__all__ = ["check_coverage", "ledger_digest"]


def ledger_digest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex digest}`` of the ledger file as it is now."""
    data = Path(path).read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def check_coverage(
    path: str | os.PathLike[str],
    *,
    through_round: int,
    digest: Mapping[str, Any] | None = None,
    header: Mapping[str, Any] | None = None,
) -> None:
    """Refuse to resume unless the ledger covers rounds ``1..through_round``.

    Args:
        path: the run's ``ledger.jsonl``.
        through_round: the checkpoint's last completed round (0: nothing to cover).
        digest: :func:`ledger_digest` recorded with that checkpoint; when given, the file's
            first ``digest["bytes"]`` bytes must hash to ``digest["sha256"]`` (a truncated,
            shortened or edited ledger fails; releases appended later are fine).
        header: expected ``unit``, ``delta`` and ``accountant`` (the run's config).

    Raises:
        ResumeError: one line naming what is missing.
    """
    if through_round < 1:
        return
    p = Path(path)
    if not p.is_file():
        raise ResumeError(
            f"cannot resume: the privacy ledger {p} is missing but the checkpoint holds "
            f"{through_round} round(s) of releases (ε would restart at 0)"
        )
    if digest is not None:
        data = p.read_bytes()
        n = int(digest.get("bytes", 0))
        if len(data) < n:
            raise ResumeError(
                f"cannot resume: the privacy ledger {p} is shorter ({len(data)} bytes) than "
                f"when round {through_round} completed ({n} bytes)"
            )
        if hashlib.sha256(data[:n]).hexdigest() != digest.get("sha256"):
            raise ResumeError(
                f"cannot resume: the privacy ledger {p} was altered after round "
                f"{through_round} completed (its hash differs from the checkpoint's)"
            )
    try:
        contents = read_ledger(p)
    except DataError as err:
        raise ResumeError(f"cannot resume the privacy ledger: {err}") from None
    for key, want in (header or {}).items():
        got = getattr(contents, key)
        if got != want:
            raise ResumeError(
                f"cannot resume: the privacy ledger {p} has {key} = {got!r}, the run's config "
                f"{want!r}"
            )
    missing = sorted(set(range(1, through_round + 1)) - {r.round for r in contents.releases})
    if missing:
        shown = ", ".join(map(str, missing[:5])) + ("..." if len(missing) > 5 else "")
        raise ResumeError(
            f"cannot resume: the privacy ledger {p} has no release for round(s) {shown} "
            f"of the {through_round} the checkpoint completed"
        )
