"""The run report: ``results.json`` -> a self-contained ``report.html`` with plots and a
plain-language privacy statement.

* :mod:`~umbra.report.html`: the page and :func:`render_report`;
* :mod:`~umbra.report.plots`: matplotlib figures as PNG bytes;
* :mod:`~umbra.report.statement`: the privacy statement, one part per topic;
* :mod:`~umbra.report.facts`: what ``results.json`` says, read leniently;
* :mod:`~umbra.report.audit`: attack results named and phrased;
* :mod:`~umbra.report.ledger_summary`: the ledger's figures and ε recomputed from it;
* :mod:`~umbra.report.format`: number formatting for prose and tables.
"""

from __future__ import annotations

from umbra.report.html import REPORT_FILE, build_report, render_report
from umbra.report.ledger_summary import LedgerSummary, summarize_ledger
from umbra.report.statement import StatementPart, privacy_statement

__all__ = [
    "REPORT_FILE",
    "LedgerSummary",
    "StatementPart",
    "build_report",
    "privacy_statement",
    "render_report",
    "summarize_ledger",
]
