"""Record ids as private set intersection compares them: normalised, checked and hashed.

Every party must normalise the same way or equal records will not match, so the policy is
fixed and small:

* a line (or an id given to the API) is decoded as UTF-8 (strictly: an undecodable line is
  an error naming its line number), put in Unicode normal form NFC and trimmed of leading
  and trailing whitespace; blank lines are skipped;
* ids are **case-sensitive** by default (``AB12`` and ``ab12`` are different records);
  ``ignore_case=True`` (``--ignore-case``) compares them after Unicode case folding, which
  suits e-mail addresses and similar. Both parties must choose the same: the network
  protocol carries the policy and refuses a mismatch;
* a duplicate (after normalisation) is an error naming both line numbers: a set has no
  duplicates, and a silently dropped one usually means a malformed export.

Each normalised id is then hashed with SHA-256 under a domain tag (``ID_DOMAIN``): the
protocol sees fixed-length digests, never the ids themselves, and the digest doubles as the
canonical sort key that gives every party the same row order for aligned records.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from umbra.services.psi_errors import PsiInputError, PsiProtocolError

__all__ = ["ID_DOMAIN", "IdSet", "id_digest", "normalise_id"]

ID_DOMAIN = b"umbra-psi-id-v1\x00"


def normalise_id(raw: str, *, ignore_case: bool = False) -> str:
    """The id as compared: NFC, trimmed, and case-folded when ``ignore_case``."""
    text = unicodedata.normalize("NFC", raw).strip()
    return text.casefold() if ignore_case else text


def id_digest(normalised: str) -> bytes:
    """SHA-256 of a normalised id under ``ID_DOMAIN`` (32 bytes)."""
    return hashlib.sha256(ID_DOMAIN + normalised.encode("utf-8")).digest()


@dataclass(frozen=True)
class IdSet:
    """One party's ids, normalised and deduplicated-checked, in their input order.

    ``ids[i]`` is the i-th normalised id and ``digests[i]`` its SHA-256 digest; ``index``
    maps a digest back to its position.
    """

    ids: tuple[str, ...]
    digests: tuple[bytes, ...]
    ignore_case: bool = False
    index: dict[bytes, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {d: i for i, d in enumerate(self.digests)})

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def hex_digests(self) -> list[str]:
        """The digests as hex strings: what goes into openmined-psi."""
        return [d.hex() for d in self.digests]

    @classmethod
    def from_ids(
        cls, raw_ids: Iterable[str], *, ignore_case: bool = False, source: str = "ids"
    ) -> IdSet:
        """Normalise ``raw_ids``; blank ids are skipped, a duplicate raises ``PsiInputError``."""
        return cls._build(((i + 1, r) for i, r in enumerate(raw_ids)), ignore_case, source, "id")

    @classmethod
    def from_file(cls, path: Path, *, ignore_case: bool = False) -> IdSet:
        """Read one id per line from ``path`` (UTF-8; ``\\n`` or ``\\r\\n`` line ends)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise PsiInputError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise PsiInputError(f"{path}: is a directory, not a file of ids") from None
        except OSError as err:
            raise PsiInputError(f"{path}: cannot be read ({err.strerror})") from None
        return cls._build(_decoded_lines(path, data), ignore_case, str(path), "line")

    @classmethod
    def _build(
        cls, numbered: Iterable[tuple[int, str]], ignore_case: bool, source: str, unit: str
    ) -> IdSet:
        ids: list[str] = []
        first_seen: dict[str, int] = {}
        for number, raw in numbered:
            if not isinstance(raw, str):
                raise PsiInputError(f"{source} {unit} {number}: an id must be a str")
            norm = normalise_id(raw, ignore_case=ignore_case)
            if not norm:
                continue
            if norm in first_seen:
                policy = "trimming and case folding" if ignore_case else "trimming"
                raise PsiInputError(
                    f"{source} {unit} {number}: duplicate id (same as {unit} "
                    f"{first_seen[norm]} after {policy})"
                )
            first_seen[norm] = number
            ids.append(norm)
        return cls(tuple(ids), tuple(id_digest(i) for i in ids), ignore_case)

    def subset(self, positions: Iterable[int]) -> IdSet:
        """The ids at ``positions``, as a set of their own (same case policy)."""
        pos = list(positions)
        return IdSet(
            tuple(self.ids[p] for p in pos), tuple(self.digests[p] for p in pos), self.ignore_case
        )

    def canonical(self, positions: Iterable[int]) -> tuple[int, ...]:
        """``positions`` reordered by ascending id digest: the order every party shares, so
        that the j-th shared record of one party is the j-th of every other."""
        return tuple(sorted(positions, key=self.digests.__getitem__))

    def positions_of(self, digests: Sequence[bytes]) -> list[int]:
        """Positions of ``digests`` in this set; a digest not in it raises ``PsiProtocolError``
        (a peer claimed a shared id this party does not hold)."""
        out: list[int] = []
        for d in digests:
            pos = self.index.get(d)
            if pos is None:
                raise PsiProtocolError("the peer's result names an id this party does not hold")
            out.append(pos)
        return out


def _decoded_lines(path: Path, data: bytes) -> Iterable[tuple[int, str]]:
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark is not part of an id
    for number, line in enumerate(data.split(b"\n"), start=1):
        try:
            yield number, line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise PsiInputError(
                f"{path} line {number}: not valid UTF-8 (byte 0x{line[err.start]:02x} at "
                f"column {err.start + 1})"
            ) from None
