"""The privacy ledger: an append-only JSON-lines record of every privacy-consuming release.

* :mod:`~umbra.privacy.ledger.release`: :class:`Release` and :class:`GroupRelease`, what one
  release spent; :class:`LabelRelease`, randomised response on labels;
* :mod:`~umbra.privacy.ledger.jsonl`: the ``ledger.jsonl`` format and :func:`read_ledger`;
* :mod:`~umbra.privacy.ledger.replay`: ε recomputed from the lines alone (:func:`replay`,
  :func:`compute_report`);
* :mod:`~umbra.privacy.ledger.coverage`: the checks a resumed run must pass
  (:func:`ledger_digest`, :func:`check_coverage`);
* :mod:`~umbra.privacy.ledger.writer`: :class:`PrivacyLedger`, which fsyncs every release
  before it happens (write-ahead).
"""

from umbra.privacy.ledger.coverage import check_coverage, ledger_digest
from umbra.privacy.ledger.jsonl import LEDGER_VERSION, LedgerContents, read_ledger
from umbra.privacy.ledger.release import GroupRelease, LabelRelease, Release
from umbra.privacy.ledger.replay import LedgerReport, compute_report, dominant_parties, replay
from umbra.privacy.ledger.writer import PrivacyLedger

__all__ = [
    "LEDGER_VERSION",
    "GroupRelease",
    "LabelRelease",
    "LedgerContents",
    "LedgerReport",
    "PrivacyLedger",
    "Release",
    "check_coverage",
    "compute_report",
    "dominant_parties",
    "ledger_digest",
    "read_ledger",
    "replay",
]
