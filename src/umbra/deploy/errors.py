"""Errors of a local deployment: each is shown as one line, exit code 2 at the CLI."""

from __future__ import annotations

from umbra.errors import UmbraError

__all__ = ["CertificateError", "DeployError", "PortInUseError"]


class DeployError(UmbraError):
    """A deployment process could not start, did not become ready, or a run failed to
    launch; the message names the process and its log file."""


class PortInUseError(DeployError, ValueError):
    """A loopback port the deployment needs is already taken by another program."""


class CertificateError(UmbraError, ValueError):
    """A certificate or key file is missing, unreadable, outside its validity period,
    not signed by the expected CA, or does not match its counterpart."""
