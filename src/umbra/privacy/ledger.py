"""The privacy ledger: an append-only JSON-lines record of every privacy-consuming release.

File format (``ledger.jsonl``), one JSON object per line:

* line 1, the header: ``{"type": "header", "version": 1, "unit": "example"|"client",
  "delta": δ, "accountant": "pld"|"rdp"}``;
* then one ``"type": "release"`` line per parameter group of each release::

    {"type": "release", "release": "9f1c0e5a7b2d4c11", "round": 3, "party": "client-2",
     "group": "audio",
     "mechanism": "poisson_gaussian", "noise_multiplier": 1.8, "sample_rate": 0.0107,
     "steps": 94, "clip_norm": 1.0}

  ``release`` is a random id (``os.urandom``) shared by the lines of one release, whose
  groups share one Poisson sample per step (so they compose per step, see
  :mod:`umbra.privacy.accounting`). Random ids keep releases apart even when several
  processes append to the same file (each release is one ``O_APPEND`` write of a few
  hundred bytes). ``party`` is a client id (example-level DP: ε is per
  client) or ``"server"`` (client-level DP: the server releases the noised aggregate).

Write-ahead rule: :meth:`PrivacyLedger.record` appends the lines of a release in one
``write``, flushes and ``os.fsync``s the file *before* it returns, and the caller performs
the release only after that. A crash between the write and the release therefore leaves a
release that is counted but never happened: ε may be over-counted by one release, never
under-counted. A crash during the write can leave a truncated last line; :func:`read_ledger`
ignores it only when it is not valid JSON (and says so), and reopening the ledger cuts it off
before appending so the file stays well-formed.

ε is recomputed from the lines alone (:func:`replay`) through dp-accounting; per party,
per group and in total; the reported total (and each ε_g) is the worst party's. The
header also names the neighbouring relation (``"adjacency"``, see
:data:`umbra.privacy.accounting.ADJACENCY`).

Resuming a run: every checkpoint records :func:`ledger_digest` of the ledger as it was
when the round completed; :func:`check_coverage` refuses a ledger that is missing, shorter,
altered before that point, or lacks a release for one of the checkpoint's rounds, so that ε
can never silently restart at 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from umbra.errors import DataError, ResumeError
from umbra.privacy.accounting import (
    ADJACENCY,
    DEFAULT_ACCOUNTANT,
    compose_steps,
    epsilon_for,
    make_accountant,
)
from umbra.privacy.budget import Budget

__all__ = [
    "LEDGER_VERSION",
    "GroupRelease",
    "LedgerContents",
    "LedgerReport",
    "PrivacyLedger",
    "Release",
    "check_coverage",
    "compute_report",
    "ledger_digest",
    "read_ledger",
    "replay",
]

log = logging.getLogger(__name__)

LEDGER_VERSION = 1
Unit = Literal["example", "client"]
_UNITS = ("example", "client")
#: The only mechanism the accountant side knows: Gaussian noise on a Poisson sample.
MECHANISM = "poisson_gaussian"


@dataclass(frozen=True)
class GroupRelease:
    """One parameter group's part of a release.

    Attributes:
        group: parameter group (a modality, ``"shared"``, or e.g. ``"all"`` for one flat clip).
        noise_multiplier: σ_g = noise std / clip norm, > 0.
        clip_norm: C_g, the L2 bound of one record's (or client's) contribution, > 0.
    """

    group: str
    noise_multiplier: float
    clip_norm: float

    def __post_init__(self) -> None:
        if not self.group or self.group == "total":
            raise ValueError(
                f"group must be a non-empty name other than 'total', got {self.group!r}"
            )
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(
                f"noise_multiplier of group {self.group!r} must be finite and > 0,"
                f" got {self.noise_multiplier}"
            )
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(
                f"clip_norm of group {self.group!r} must be finite and > 0, got {self.clip_norm}"
            )


@dataclass(frozen=True)
class Release:
    """A privacy-consuming release: ``steps`` Poisson-sampled Gaussian steps by ``party``.

    Attributes:
        round: federation round, >= 0.
        party: client id (example-level) or ``"server"`` (client-level).
        sample_rate: Poisson rate q per step, in (0, 1] (records per step for DP-SGD,
            clients per round for client-level DP).
        steps: number of steps, >= 1 (1 for a client-level round).
        groups: the groups released on the same sample, with distinct names.
    """

    round: int
    party: str
    sample_rate: float
    steps: int
    groups: tuple[GroupRelease, ...]

    def __post_init__(self) -> None:
        if self.round < 0:
            raise ValueError(f"round must be >= 0, got {self.round}")
        if not self.party:
            raise ValueError("party must be a non-empty client id or 'server'")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps}")
        names = [g.group for g in self.groups]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"groups must be non-empty with distinct names, got {names}")
        object.__setattr__(self, "groups", tuple(self.groups))

    @classmethod
    def dpsgd(
        cls,
        *,
        round: int,
        party: str,
        sample_rate: float,
        steps: int,
        noise_multipliers: Mapping[str, float],
        clip_norms: Mapping[str, float],
    ) -> Release:
        """A release with one group per entry of ``noise_multipliers``.

        DP-SGD: ``party`` = client id, ``sample_rate`` = record sampling rate, ``steps`` =
        local steps. Client-level DP: ``party="server"``, ``sample_rate`` = client sampling
        rate, ``steps=1`` per round, one group (e.g. ``"all"`` for a flat clip).
        """
        return cls(
            round=round,
            party=party,
            sample_rate=sample_rate,
            steps=steps,
            groups=tuple(
                GroupRelease(g, float(s), float(clip_norms[g]))
                for g, s in noise_multipliers.items()
            ),
        )

    @property
    def noise_multipliers(self) -> dict[str, float]:
        return {g.group: g.noise_multiplier for g in self.groups}


@dataclass
class LedgerContents:
    """Parsed ledger: header fields, releases in file order, and reading notes."""

    unit: Unit
    delta: float
    accountant: str
    releases: list[Release] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    truncated_tail: bool = False


@dataclass(frozen=True)
class LedgerReport:
    """ε recomputed from a ledger.

    Attributes:
        unit, delta, accountant: from the header.
        epsilon: ``{"total": worst party's composed ε, <group>: worst party's ε_g}``.
        per_party: ``party -> {"total": ..., <group>: ...}``.
        worst_party: the party with the largest total (None when nothing was released).
        releases: number of releases counted; rounds: sorted rounds that released.
        warnings: notes such as an ignored truncated last line.
    """

    unit: str
    delta: float
    accountant: str
    epsilon: dict[str, float]
    per_party: dict[str, dict[str, float]]
    worst_party: str | None
    releases: int
    rounds: list[int]
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- (de)serialisation


def _header(unit: str, delta: float, accountant: str) -> dict[str, Any]:
    return {
        "type": "header",
        "version": LEDGER_VERSION,
        "unit": unit,
        "delta": delta,
        "accountant": accountant,
        "adjacency": ADJACENCY,
    }


def _release_lines(release: Release, release_id: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "release",
            "release": release_id,
            "round": release.round,
            "party": release.party,
            "group": g.group,
            "mechanism": MECHANISM,
            "noise_multiplier": g.noise_multiplier,
            "sample_rate": release.sample_rate,
            "steps": release.steps,
            "clip_norm": g.clip_norm,
        }
        for g in release.groups
    ]


def _releases_from_lines(lines: Sequence[tuple[int, dict[str, Any]]]) -> list[Release]:
    by_id: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for lineno, obj in lines:
        by_id.setdefault(str(obj.get("release")), []).append((lineno, obj))
    out = []
    for release_id, part in by_id.items():
        first_line, first = part[0]
        for lineno, obj in part:
            if obj.get("mechanism") != MECHANISM:
                raise DataError(f"ledger line {lineno}: unknown mechanism {obj.get('mechanism')!r}")
            for k in ("round", "party", "sample_rate", "steps"):
                if obj[k] != first[k]:
                    raise DataError(
                        f"ledger line {lineno}: release {release_id} has {k}={obj[k]!r}"
                        f" but line {first_line} has {first[k]!r}"
                    )
        try:
            out.append(
                Release(
                    round=int(first["round"]),
                    party=str(first["party"]),
                    sample_rate=float(first["sample_rate"]),
                    steps=int(first["steps"]),
                    groups=tuple(
                        GroupRelease(
                            str(o["group"]), float(o["noise_multiplier"]), float(o["clip_norm"])
                        )
                        for _, o in part
                    ),
                )
            )
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"ledger line {first_line}: bad release {release_id}: {err}") from None
    return out


def read_ledger(path: str | os.PathLike[str]) -> LedgerContents:
    """Parse a ledger file.

    A last line that is not valid JSON (a crash in the middle of a write) is ignored and
    reported in ``warnings`` / ``truncated_tail``; a complete last line without its newline
    is counted. Any other malformed line raises.

    Raises:
        DataError: missing/invalid header, a malformed line before the last, or
            inconsistent lines within one release.
    """
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    raw = text.split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    notes: list[str] = []
    truncated = False
    parsed: list[tuple[int, dict[str, Any]]] = []
    for i, line in enumerate(raw, start=1):
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
        except ValueError:
            if i == len(raw) and not text.endswith("\n"):
                truncated = True
                notes.append(
                    f"{p}: ignored truncated last line {i} (not valid JSON; a write was"
                    " interrupted before it completed, so its release never happened)"
                )
                break
            raise DataError(f"{p}: line {i} is not a valid ledger record") from None
        parsed.append((i, obj))
    if not parsed or parsed[0][1].get("type") != "header":
        raise DataError(f"{p}: the first line must be the ledger header")
    head = parsed[0][1]
    if head.get("version") != LEDGER_VERSION or head.get("unit") not in _UNITS:
        raise DataError(f"{p}: unsupported ledger header {head}")
    release_lines = []
    for lineno, obj in parsed[1:]:
        if obj.get("type") != "release":
            raise DataError(f"{p}: line {lineno} has unknown type {obj.get('type')!r}")
        release_lines.append((lineno, obj))
    return LedgerContents(
        unit=head["unit"],
        delta=float(head["delta"]),
        accountant=str(head["accountant"]),
        releases=_releases_from_lines(release_lines),
        warnings=notes,
        truncated_tail=truncated,
    )


# --------------------------------------------------------------------------- ε


def _party_epsilons(
    releases: Iterable[Release], *, delta: float, accountant: str
) -> dict[str, float]:
    """``{"total": composed ε, <group>: ε_g}`` of one party's releases."""
    rel = list(releases)
    out: dict[str, float] = {}
    groups = list(dict.fromkeys(g.group for r in rel for g in r.groups))
    for name in groups:
        steps = [
            ({name: g.noise_multiplier}, r.sample_rate, r.steps)
            for r in rel
            for g in r.groups
            if g.group == name
        ]
        out[name] = epsilon_for(*compose_steps(steps), delta=delta, accountant=accountant)
    joint = [(r.noise_multipliers, r.sample_rate, r.steps) for r in rel]
    out["total"] = epsilon_for(*compose_steps(joint), delta=delta, accountant=accountant)
    return out


def dominant_parties(parties: Mapping[str, Sequence[Release]]) -> list[str]:
    """The parties whose ε bounds every other party's, in every group and in total.

    Two parties whose releases are identical (rounds, steps, σ_g, C_g) except for one
    constant Poisson rate each are ordered by that rate: amplification by subsampling is
    monotone in q, so the larger rate spends at least as much in every group. This is the
    case of distributed DP-SGD, where every silo uses the same σ_g and only its own
    ``q_i = B / n_i`` differs. Only the largest-rate party of each such class is returned;
    a party with varying rates is its own class.
    """
    best: dict[Any, tuple[float, str]] = {}
    for party, rel in parties.items():
        rates = {r.sample_rate for r in rel}
        history = tuple((r.round, r.steps, r.groups) for r in rel)
        key: Any = (history, None if len(rates) == 1 else party)
        q = max(rates) if rates else 0.0
        if key not in best or q > best[key][0]:
            best[key] = (q, party)
    return sorted(p for _, p in best.values())


def compute_report(
    contents: LedgerContents,
    *,
    up_to_round: int | None = None,
    accountant: str | None = None,
    delta: float | None = None,
    worst_only: bool = False,
) -> LedgerReport:
    """ε per party, per group and in total from parsed ledger contents.

    Args:
        contents: from :func:`read_ledger` (or :attr:`PrivacyLedger.contents`).
        up_to_round: count only releases with ``round <= up_to_round`` (ε after that round).
        accountant, delta: override the header's (e.g. to cross-check with RDP).
        worst_only: compute only the :func:`dominant_parties` (``per_party`` then holds only
            them); ``epsilon`` and ``worst_party`` are the same as for all parties.
    """
    acc = accountant or contents.accountant
    d = contents.delta if delta is None else delta
    rel = [r for r in contents.releases if up_to_round is None or r.round <= up_to_round]
    parties: dict[str, list[Release]] = {}
    for r in rel:
        parties.setdefault(r.party, []).append(r)
    if worst_only:
        parties = {p: parties[p] for p in dominant_parties(parties)}
    per_party = {p: _party_epsilons(rs, delta=d, accountant=acc) for p, rs in parties.items()}
    epsilon: dict[str, float] = {"total": 0.0}
    for eps in per_party.values():
        for k, v in eps.items():
            epsilon[k] = max(epsilon.get(k, 0.0), v)
    worst = max(per_party, key=lambda p: per_party[p]["total"]) if per_party else None
    return LedgerReport(
        unit=contents.unit,
        delta=d,
        accountant=acc,
        epsilon=epsilon,
        per_party=per_party,
        worst_party=worst,
        releases=len(rel),
        rounds=sorted({r.round for r in rel}),
        warnings=list(contents.warnings),
    )


def replay(
    path: str | os.PathLike[str],
    *,
    up_to_round: int | None = None,
    accountant: str | None = None,
    delta: float | None = None,
) -> LedgerReport:
    """Recompute ε from the ledger file alone (see :func:`compute_report`)."""
    contents = read_ledger(path)
    for note in contents.warnings:
        warnings.warn(note, stacklevel=2)
    return compute_report(contents, up_to_round=up_to_round, accountant=accountant, delta=delta)


# --------------------------------------------------------------------------- resume checks


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


# --------------------------------------------------------------------------- the writer


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
        if unit not in _UNITS:
            raise ValueError(f"unit must be one of {_UNITS}, got {unit!r}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        make_accountant(accountant)
        self.path = Path(path)
        self.contents = LedgerContents(unit=unit, delta=float(delta), accountant=accountant)
        if self.path.exists() and self.path.stat().st_size > 0:
            self._resume()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append([_header(unit, float(delta), accountant)])

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
        self._append(_release_lines(release, secrets.token_hex(8)))
        self.contents.releases.append(release)

    def report(self, *, up_to_round: int | None = None, worst_only: bool = False) -> LedgerReport:
        """ε of everything recorded so far (same computation as :func:`replay`)."""
        return compute_report(self.contents, up_to_round=up_to_round, worst_only=worst_only)

    def spent(self, party: str, extra: Iterable[Release] = ()) -> dict[str, float]:
        """``{"total", <group>...}`` ε of ``party``'s recorded releases plus ``extra``."""
        rel = [r for r in self.contents.releases if r.party == party]
        rel += [r for r in extra if r.party == party]
        return _party_epsilons(rel, delta=self.contents.delta, accountant=self.contents.accountant)

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
