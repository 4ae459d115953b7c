"""The ledger writer: appends each release and fsyncs it before the release happens.

Write-ahead rule: :meth:`PrivacyLedger.record` appends the lines of a release in one
``write``, flushes and ``os.fsync``s the file *before* it returns, and the caller performs
the release only after that. A crash between the write and the release therefore leaves a
release that is counted but never happened: ε may be over-counted by one release, never
under-counted. Reopening a ledger whose last line was cut by a crash cuts that line off
before appending, so the file stays well-formed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from umbra.errors import DataError, ResumeError
from umbra.privacy.accounting import DEFAULT_ACCOUNTANT, make_accountant
from umbra.privacy.budget import Budget
from umbra.privacy.ledger.jsonl import (
    UNITS,
    LedgerContents,
    Unit,
    header_line,
    label_release_line,
    read_ledger,
    release_lines,
)
from umbra.privacy.ledger.release import LabelRelease, Release
from umbra.privacy.ledger.replay import LedgerReport, compute_report, party_epsilons

__all__ = ["PrivacyLedger"]

log = logging.getLogger(__name__)


class PrivacyLedger:
    """Append-only, fsynced ledger of releases for one run.

    Opening an existing file resumes it: its header must match ``unit``, ``delta`` and
    ``accountant`` (else :class:`~umbra.errors.ResumeError`), its releases are loaded (so
    every release ever written is counted, including one written just before a crash), and
    new releases are appended after them.

    Args:
        path: the ``ledger.jsonl`` file (created with its header if missing or empty).
        unit: ``"example"`` (DP-SGD, ε per client) or ``"client"`` (client-level DP).
        delta: δ every ε is reported at, in (0, 1).
        accountant: registered accountant name.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        unit: Unit = "example",
        delta: float,
        accountant: str = DEFAULT_ACCOUNTANT,
    ) -> None:
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        make_accountant(accountant)
        self.path = Path(path)
        self.contents = LedgerContents(unit=unit, delta=float(delta), accountant=accountant)
        if self.path.exists() and self.path.stat().st_size > 0:
            self._resume()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append([header_line(unit, float(delta), accountant)])

    def _resume(self) -> None:
        try:
            found = read_ledger(self.path)
        except DataError as err:
            raise ResumeError(f"cannot resume the privacy ledger: {err}") from None
        mine = (self.contents.unit, self.contents.delta, self.contents.accountant)
        theirs = (found.unit, found.delta, found.accountant)
        if mine != theirs:
            raise ResumeError(
                f"{self.path} was written with (unit, delta, accountant) = {theirs},"
                f" this run uses {mine}"
            )
        data = self.path.read_bytes()
        if found.truncated_tail:
            keep = data.rfind(b"\n") + 1
            for note in found.warnings:
                log.warning("%s", note)
                warnings.warn(note, stacklevel=3)
            with self.path.open("r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
        elif not data.endswith(b"\n"):
            self._write(b"\n")  # complete last record that lost only its newline
        self.contents = found

    def _write(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)  # durable before the caller releases anything
        finally:
            os.close(fd)

    def _append(self, objs: Sequence[dict[str, Any]]) -> None:
        data = "".join(json.dumps(o, sort_keys=True, allow_nan=False) + "\n" for o in objs)
        self._write(data.encode("utf-8"))

    def flush(self) -> None:
        """No-op kept for symmetry: every :meth:`record` is already fsynced on return."""

    @property
    def releases(self) -> list[Release]:
        return list(self.contents.releases)

    def record(self, release: Release) -> None:
        """Append ``release`` (one line per group) and fsync; release only after this returns."""
        self._append(release_lines(release, secrets.token_hex(8)))
        self.contents.releases.append(release)

    def record_label(self, release: LabelRelease) -> None:
        """Append a label release and fsync; randomise the labels only after this returns."""
        self._append([label_release_line(release, secrets.token_hex(8))])
        self.contents.label_releases.append(release)

    def report(self, *, up_to_round: int | None = None, worst_only: bool = False) -> LedgerReport:
        """ε of everything recorded so far (same computation as :func:`replay`)."""
        return compute_report(self.contents, up_to_round=up_to_round, worst_only=worst_only)

    def spent(self, party: str, extra: Iterable[Release] = ()) -> dict[str, float]:
        """``{"total", <group>...}`` ε of ``party``'s recorded releases (label releases
        included) plus ``extra``."""
        rel = [r for r in self.contents.releases if r.party == party]
        rel += [r for r in extra if r.party == party]
        labels = [r for r in self.contents.label_releases if r.party == party]
        return party_epsilons(rel, delta=self.contents.delta, accountant=self.contents.accountant,
                              labels=labels)  # fmt: skip

    def would_exceed(self, next_release: Release, budget: Budget) -> bool:
        """True if recording ``next_release`` would push its party above ``budget``.

        Checks the composed total against ``budget.epsilon`` and every group with a cap in
        ``budget.groups`` against its cap. Exactly reaching a cap is allowed. Call it before
        :meth:`record`; when it returns True, stop training instead of releasing.

        Raises:
            ValueError: ``budget.delta`` differs from the ledger's δ.
        """
        if budget.delta != self.contents.delta:
            raise ValueError(
                f"budget.delta = {budget.delta} differs from the ledger's delta ="
                f" {self.contents.delta}"
            )
        eps = self.spent(next_release.party, [next_release])
        if eps["total"] > budget.epsilon:
            return True
        return any(eps.get(g, 0.0) > cap for g, cap in budget.groups.items())
