"""Umbra's ServerApp for Flower's Deployment Engine (``flwr run``).

A module-level `ServerApp` (``umbra.apps:server_app`` in the app's ``pyproject.toml``):
at run time it resolves the config from the run config (:mod:`umbra.apps.run_config`),
reads the held-out test set from ``test-dir`` (the only records the server holds), sizes
the model from it, builds the `ServerSpec` as the simulation does and runs the same round
loop (`run_rounds`); a vertical run (``federation.layout = 'vertical'``) runs the label
holder's split-learning loop instead (`umbra.vertical.deployed_run`). Rounds are appended to ``progress.jsonl`` and printed to the run's
log; the final `RunResult` goes into the run folder (:mod:`umbra.apps.outcome`).

A bad run config, a config the run folder does not match, or a failure of the round loop
is one line ``umbra error: ...`` in the run's log and a failed run.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from umbra.apps.outcome import append_progress, write_outcome
from umbra.apps.run_config import AppRunConfig
from umbra.config import config_fingerprint, validate_config
from umbra.errors import ConfigError, ResumeError, UmbraError
from umbra.federation.checkpoint import atomic_write_text
from umbra.federation.client_data import load_client_data
from umbra.federation.common import SecureSettings
from umbra.federation.server_app import (
    RoundReport,
    RunResult,
    ServerSpec,
    check_some_round_completed,
    run_rounds,
)
from umbra.run.folder import CONFIG_FILE
from umbra.run.prepare import model_spec_for
from umbra.run.simulation import secure_transport
from umbra.secure.identity import read_roster

__all__ = ["ERROR_PREFIX", "server_app", "server_spec"]

#: How the ServerApp's one-line errors start in the run's log.
ERROR_PREFIX = "umbra error: "

server_app = ServerApp()


def _check_run_folder(run: AppRunConfig) -> None:
    """Save the config into a new run folder; refuse one made with another config."""
    run.out.mkdir(parents=True, exist_ok=True)
    path = run.out / CONFIG_FILE
    if not path.exists():
        atomic_write_text(path, json.dumps(run.cfg.model_dump(mode="json"), indent=2))
        return
    saved = validate_config(json.loads(path.read_text()))
    if config_fingerprint(saved) != config_fingerprint(run.cfg):
        raise ResumeError(f"{run.out} holds a run made with another config")


def _round_printer(run: AppRunConfig) -> Callable[[RoundReport], None]:
    """Append each round's row to ``progress.jsonl`` and print it to the run's log."""
    rounds = run.cfg.federation.rounds

    def on_round(row: RoundReport) -> None:
        append_progress(run.out, row)
        acc = row.get("accuracy")
        print(
            f"umbra round {row['round']}/{rounds}: "
            f"accuracy {'-' if acc is None else f'{acc:.3f}'}, {row['clients']} clients, "
            f"{row['wall_s']:.1f} s" + (" (aborted)" if row.get("aborted") else ""),
            flush=True,
        )

    return on_round


def server_spec(run: AppRunConfig) -> ServerSpec:
    """The ServerSpec of a deployed run (as `ServerSpec.from_config`, with the model sized
    from the test set and the public identity roster from the run config's ``roster``
    file: the server verifies and relays signatures, it holds no identity key)."""
    cfg = run.cfg
    transport = secure_transport(cfg)
    roster: dict[int, bytes] = {}
    if transport is not None and transport.signed and run.roster is not None:
        roster = read_roster(run.roster)
    if transport is not None and transport.identity_required and not roster:
        raise ConfigError(
            f"secure.aggregation = {cfg.secure.aggregation!r} needs node identity keys and "
            "their roster (run config roster); a deployment without node keys cannot run it"
        )
    secure = SecureSettings.from_section(cfg.secure, roster=roster, rounds=cfg.federation.rounds)
    test = load_client_data(str(run.test_dir), 0)
    out = run.out
    on_round = _round_printer(run)

    def on_finish(result: RunResult) -> None:
        write_outcome(out, result)

    return ServerSpec.from_config(
        cfg,
        run_dir=str(out),
        test_dir=str(run.test_dir),
        model_spec=model_spec_for(cfg, test),
        secure=secure,
        transport=transport,
        on_round=on_round,
        on_finish=on_finish,
    )


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Resolve the run config and run the rounds; errors are one line in the log."""
    try:
        run = AppRunConfig.from_run_config(context.run_config)
        _check_run_folder(run)
        if run.cfg.federation.layout == "vertical":  # split learning (docs/vertical.md)
            from umbra.vertical.deployed_run import run_deployed_vertical

            run_deployed_vertical(grid, run, _round_printer(run))
            return
        spec = server_spec(run)
        result = run_rounds(spec, grid)
        if spec.on_finish is not None:
            spec.on_finish(result)
        check_some_round_completed(result.history)
    except UmbraError as err:
        print(f"{ERROR_PREFIX}{err}", flush=True)
        raise
