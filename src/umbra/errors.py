"""Errors that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations

__all__ = [
    "AllRoundsAborted",
    "BudgetExhausted",
    "ConfigError",
    "DataError",
    "ResumeError",
    "UmbraError",
]


class UmbraError(Exception):
    """Base class for user-facing errors: the message is shown as is, without traceback."""


class ConfigError(UmbraError, ValueError):
    """A configuration value is malformed, unknown or out of range."""


class DataError(UmbraError, ValueError):
    """Input data is missing, malformed or inconsistent with the configuration."""


class ResumeError(UmbraError):
    """A run folder cannot be resumed (missing checkpoint, different configuration)."""


class BudgetExhausted(UmbraError):
    """The next privacy-consuming release would exceed the configured budget."""


class AllRoundsAborted(UmbraError):
    """Every round of a run aborted (e.g. too few secure-aggregation survivors): nothing was
    learned. results.json is written first, each round's row saying why."""
