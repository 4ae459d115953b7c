"""The ledger file format (``ledger.jsonl``): header and release lines, and their parser.

One JSON object per line:

* line 1, the header: ``{"type": "header", "version": 1, "unit": "example"|"client",
  "delta": δ, "accountant": "pld"|"rdp", "adjacency": ...}`` (the neighbouring relation,
  see :data:`umbra.privacy.accounting.ADJACENCY`);
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
* a label release (randomised response on every label a party holds, applied once; see
  :class:`~umbra.privacy.ledger.release.LabelRelease`) is one line with its own mechanism
  and neighbouring relation::

    {"type": "release", "release": "4be1...", "round": 0, "party": "party-2",
     "group": "label", "mechanism": "randomized_response", "adjacency": "replace-one",
     "epsilon": 2.0, "num_classes": 10, "noise_parameter": 0.6240}

  (``noise_parameter``, dp-accounting's ``p``, is derived from ε and K and checked on
  reading).

A crash during a write can leave a truncated last line; :func:`read_ledger` ignores it only
when it is not valid JSON (and says so in :attr:`LedgerContents.warnings`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from umbra.errors import DataError
from umbra.privacy.accounting import ADJACENCY, LABEL_ADJACENCY
from umbra.privacy.ledger.release import GroupRelease, LabelRelease, Release

__all__ = [
    "LABEL_MECHANISM",
    "LEDGER_VERSION",
    "MECHANISM",
    "UNITS",
    "LedgerContents",
    "Unit",
    "header_line",
    "label_release_line",
    "read_ledger",
    "release_lines",
]

LEDGER_VERSION = 1
Unit = Literal["example", "client"]
UNITS = ("example", "client")
#: The only mechanism the accountant side knows: Gaussian noise on a Poisson sample.
MECHANISM = "poisson_gaussian"
#: Randomised response on labels (:class:`LabelRelease`).
LABEL_MECHANISM = "randomized_response"


@dataclass
class LedgerContents:
    """Parsed ledger: header fields, releases in file order, and reading notes.

    ``releases`` are the Gaussian releases, ``label_releases`` the randomised-response ones.
    """

    unit: Unit
    delta: float
    accountant: str
    releases: list[Release] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    truncated_tail: bool = False
    label_releases: list[LabelRelease] = field(default_factory=list)


def header_line(unit: str, delta: float, accountant: str) -> dict[str, Any]:
    """The header object of a ledger with these parameters (the file's first line)."""
    return {
        "type": "header",
        "version": LEDGER_VERSION,
        "unit": unit,
        "delta": delta,
        "accountant": accountant,
        "adjacency": ADJACENCY,
    }


def release_lines(release: Release, release_id: str) -> list[dict[str, Any]]:
    """The line objects of ``release``, one per group, all carrying ``release_id``."""
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


def label_release_line(release: LabelRelease, release_id: str) -> dict[str, Any]:
    """The line object of a label release."""
    return {
        "type": "release",
        "release": release_id,
        "round": release.round,
        "party": release.party,
        "group": release.group,
        "mechanism": LABEL_MECHANISM,
        "adjacency": LABEL_ADJACENCY,
        "epsilon": release.epsilon,
        "num_classes": release.num_classes,
        "noise_parameter": release.noise_parameter,
    }


def _label_release(lineno: int, obj: dict[str, Any]) -> LabelRelease:
    try:
        rel = LabelRelease(
            round=int(obj["round"]),
            party=str(obj["party"]),
            epsilon=float(obj["epsilon"]),
            num_classes=int(obj["num_classes"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"ledger line {lineno}: bad label release: {err}") from None
    if obj.get("adjacency") != LABEL_ADJACENCY or obj.get("group") != rel.group:
        raise DataError(
            f"ledger line {lineno}: a label release must have adjacency {LABEL_ADJACENCY!r} "
            f"and group {rel.group!r}"
        )
    if abs(float(obj.get("noise_parameter", -1.0)) - rel.noise_parameter) > 1e-12:
        raise DataError(
            f"ledger line {lineno}: label release with noise_parameter "
            f"{obj.get('noise_parameter')!r}, which does not match epsilon {rel.epsilon} and "
            f"num_classes {rel.num_classes}"
        )
    return rel


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
    if head.get("version") != LEDGER_VERSION or head.get("unit") not in UNITS:
        raise DataError(f"{p}: unsupported ledger header {head}")
    release_lines = []
    labels = []
    for lineno, obj in parsed[1:]:
        if obj.get("type") != "release":
            raise DataError(f"{p}: line {lineno} has unknown type {obj.get('type')!r}")
        if obj.get("mechanism") == LABEL_MECHANISM:
            labels.append(_label_release(lineno, obj))
        else:
            release_lines.append((lineno, obj))
    return LedgerContents(
        unit=head["unit"],
        delta=float(head["delta"]),
        accountant=str(head["accountant"]),
        releases=_releases_from_lines(release_lines),
        warnings=notes,
        truncated_tail=truncated,
        label_releases=labels,
    )
