"""The run folder: its saved config, what a resume must find there, and where the
simulated organisations keep their own state (never inside it)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from umbra.config import Config, config_fingerprint, validate_config
from umbra.errors import ConfigError, ResumeError
from umbra.federation.checkpoint import load_latest

__all__ = ["CONFIG_FILE", "check_ledger", "client_state_root", "resume_config"]

CONFIG_FILE = "config.json"


def resume_config(run_dir: Path, requested: Config | None) -> Config:
    """The config of ``run_dir``; a ``requested`` one must match it (rounds may grow)."""
    path = run_dir / CONFIG_FILE
    if not path.exists():
        raise ResumeError(f"{run_dir} is not an Umbra run folder (no {CONFIG_FILE})")
    try:
        saved = validate_config(json.loads(path.read_text()))
    except (json.JSONDecodeError, ConfigError) as err:
        raise ResumeError(f"{path}: unreadable config ({err})") from None
    latest = load_latest(run_dir / "checkpoints")
    if latest is None:
        raise ResumeError(f"{run_dir} has no completed round to resume from")
    check_ledger(run_dir, saved)
    if requested is None:
        return saved
    if config_fingerprint(requested) != config_fingerprint(saved):
        raise ResumeError(
            f"{run_dir} was made with another config; resume it without --preset/--set, "
            "or start a new --out folder"
        )
    if requested.federation.rounds < saved.federation.rounds:
        raise ResumeError(
            f"federation.rounds = {requested.federation.rounds} is fewer than the run's "
            f"{saved.federation.rounds}"
        )
    return requested


def check_ledger(run_dir: Path, cfg: Config) -> None:
    """Refuse to resume a DP run whose ledger does not cover its checkpoint's rounds."""
    latest = load_latest(run_dir / "checkpoints")
    if cfg.privacy.mode == "none" or latest is None:
        return
    from umbra.privacy.ledger import check_coverage

    p = cfg.privacy
    header = {"unit": "example" if p.mode == "example" else "client", "delta": p.delta,
              "accountant": p.accountant}  # fmt: skip
    check_coverage(run_dir / "ledger.jsonl", through_round=latest.round,
                   digest=latest.state.get("ledger"), header=header)  # fmt: skip


def client_state_root(run_dir: Path) -> Path:
    """Where simulated organisations keep their own state (SCAFFOLD's c_i): a client-side
    folder keyed by the run, never inside the server's run folder.

    ``$UMBRA_CLIENT_STATE`` or ``~/.local/state/umbra/clients``, then a hash of the run
    folder's path (so a resumed run finds its clients' state again). On the Deployment
    Engine each SuperNode names its own folder with the node config key ``state-dir``.
    """
    root = os.environ.get("UMBRA_CLIENT_STATE") or str(
        Path.home() / ".local" / "state" / "umbra" / "clients"
    )
    key = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
    out = Path(root).resolve() / key
    if out.is_relative_to(run_dir.resolve()):
        raise ConfigError(f"client state {out} would sit inside the run folder {run_dir}")
    return out
