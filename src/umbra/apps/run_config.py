"""The Flower run config of Umbra's app, and how it maps onto Umbra's `Config`.

``flwr run`` hands every ServerApp and ClientApp of a run the same flat run config (the
defaults under ``[tool.flwr.app.config]`` in the app's ``pyproject.toml``, overridden by
``--run-config``). Umbra reads four keys from it:

``preset``     a built-in preset name (``umbra presets``), as ``umbra run --preset``;
``overrides``  space-separated ``section.key=value`` assignments, each parsed exactly like
               one ``--set`` (quote a value holding spaces: ``data.manifest="/a b.csv"``);
``out``        the run folder on the server's machine (absolute path);
``test-dir``   the server's folder holding the held-out test set (absolute path);
``roster``     (optional) the server's copy of the identity roster file (absolute path:
               partition id -> the node's public key, `umbra.secure.identity.read_roster`),
               for the signing transports; the nodes never take it from here, each reads
               its own copy named in its node config;
``vertical-labels`` (vertical runs) the label holder's own folder of ids and labels
               (absolute, `umbra.vertical.party_folder`): the ServerApp runs at the label
               holder, and reads no party's features.

Both sides resolve the same config from them, so the organisations train with the
settings the server plans with. Where each organisation's records are is not in the run
config: every SuperNode names its own in its ``--node-config``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from umbra.config import Config, load_config
from umbra.errors import ConfigError

__all__ = [
    "RUN_CONFIG_DEFAULTS",
    "AppRunConfig",
    "config_from_run_config",
    "join_overrides",
    "parse_overrides",
]

#: The run config keys and their defaults (the same as ``[tool.flwr.app.config]``).
RUN_CONFIG_DEFAULTS: dict[str, str] = {
    "preset": "smoke",
    "overrides": "",
    "out": "",
    "test-dir": "",
    "roster": "",
    "vertical-labels": "",
}


def join_overrides(assignments: Sequence[str]) -> str:
    """The ``overrides`` text that `parse_overrides` splits back into ``assignments``.

    Spaces, quotes and backslashes inside an assignment are escaped with a backslash, so
    the text holds no quote characters beyond the assignments' own: Flower's
    ``--run-config`` splitter cuts a quoted value at the next quote of the same kind, so
    the assignments together may use one kind of quote only.
    """
    if any(not a for a in assignments):
        raise ConfigError("an override is empty: expected section.key=value")
    text = " ".join(re.sub(r"""([\s'"\\])""", r"\\\1", a) for a in assignments)
    if "'" in text and '"' in text:
        raise ConfigError(
            f"the overrides use both quote characters, which Flower's run config cannot carry: "
            f"{' '.join(assignments)!r}"
        )
    return text


def parse_overrides(text: str) -> list[str]:
    """The ``section.key=value`` assignments of ``overrides`` (shell-style splitting)."""
    try:
        return shlex.split(text)
    except ValueError as err:
        raise ConfigError(f"run config overrides: {err} in {text!r}") from None


def _string(run_config: Mapping[str, Any], key: str) -> str:
    value = run_config.get(key, RUN_CONFIG_DEFAULTS[key])
    if not isinstance(value, str):
        raise ConfigError(f"run config {key} must be a string, got {value!r}")
    return value


def config_from_run_config(run_config: Mapping[str, Any]) -> Config:
    """The validated `Config` a run config names; `ConfigError` (one line) for unknown
    keys, a non-string value, an unknown preset or a bad override."""
    unknown = sorted(set(run_config) - set(RUN_CONFIG_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"unknown run config key(s) {unknown}; known: {sorted(RUN_CONFIG_DEFAULTS)}"
        )
    preset = _string(run_config, "preset")
    if not preset:
        raise ConfigError("run config preset is empty: name a preset (umbra presets)")
    return load_config(preset, overrides=parse_overrides(_string(run_config, "overrides")))


def _folder(run_config: Mapping[str, Any], key: str, what: str) -> Path:
    text = _string(run_config, key)
    if not text:
        raise ConfigError(f"run config {key} is empty: give the absolute path of {what}")
    path = Path(text)
    if not path.is_absolute():
        raise ConfigError(f"run config {key} = {text!r} must be an absolute path ({what})")
    return path


@dataclass(frozen=True)
class AppRunConfig:
    """What the ServerApp reads from the run config: the config, its run folder, the
    held-out test set's folder (which must exist), the identity roster file (None: the
    run has no node identities) and, for a vertical run, the label holder's folder."""

    cfg: Config
    out: Path
    test_dir: Path
    roster: Path | None = None
    labels: Path | None = None

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> AppRunConfig:
        cfg = config_from_run_config(run_config)
        out = _folder(run_config, "out", "the run folder")
        test_dir = _folder(run_config, "test-dir", "the held-out test set's folder")
        if not (test_dir / "meta.json").is_file():
            raise ConfigError(f"run config test-dir = {str(test_dir)!r} holds no test set")
        roster = (
            _folder(run_config, "roster", "the roster file") if run_config.get("roster") else None
        )
        labels = None
        if run_config.get("vertical-labels"):
            labels = _folder(run_config, "vertical-labels", "the label holder's folder")
        return cls(cfg=cfg, out=out, test_dir=test_dir, roster=roster, labels=labels)
