"""The run report: ``results.json`` -> a self-contained ``report.html`` with plots and a
plain-language privacy statement."""

from __future__ import annotations

from umbra.report.html import REPORT_FILE, build_report, render_report
from umbra.report.statement import (
    LedgerSummary,
    StatementPart,
    privacy_statement,
    summarize_ledger,
)

__all__ = [
    "REPORT_FILE",
    "LedgerSummary",
    "StatementPart",
    "build_report",
    "privacy_statement",
    "render_report",
    "summarize_ledger",
]
