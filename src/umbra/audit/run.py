"""``umbra audit DIR``: attack the final model of a finished run folder and add the
figures to its results.json (``audit.membership``, ``audit.reconstruction``) and
report.html.

The run folder is only read, except results.json, rewritten atomically with every old
field kept, and report.html, re-rendered from it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from umbra.config import Config, apply_override, validate_config
from umbra.errors import ConfigError, DataError, UmbraError

if TYPE_CHECKING:
    from umbra.models import ModelSpec, MultimodalNet
    from umbra.run.prepare import PreparedData

__all__ = [
    "ACCURACY_TOLERANCE",
    "FinishedModel",
    "audit_run",
    "load_final_model",
    "load_finished_run",
]

#: How far the checkpoint's test accuracy may lie from results.json's before the audit
#: refuses the model as not the run's (thread counts may flip a rare near-tie).
ACCURACY_TOLERANCE = 0.005


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path.parent} holds no finished run (no {path.name})") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable {what} ({err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: {what} must be a JSON object")
    return data


def load_finished_run(
    run_dir: Path, overrides: Sequence[str] = ()
) -> tuple[Config, dict[str, Any]]:
    """The run's config (with the ``audit.*`` ``overrides`` applied) and its results.json.

    Raises a one-line UmbraError when ``run_dir`` holds no finished run (results.json with
    final metrics, config.json, a checkpoint), when config.json and results.json describe
    different runs, or when an override is not an ``audit.*`` setting or out of range.
    """
    from umbra.run.folder import CONFIG_FILE

    if not run_dir.is_dir():
        raise DataError(f"{run_dir} is not a folder")
    results = _read_json(run_dir / "results.json", "results")
    if not isinstance(results.get("final"), dict):
        raise DataError(f"{run_dir}/results.json holds no final metrics: the run did not finish")
    raw = _read_json(run_dir / CONFIG_FILE, "config")
    saved = validate_config(raw)
    if not isinstance(results.get("config"), dict):
        raise DataError(f"{run_dir}/results.json holds no config")
    claimed = validate_config(results["config"])
    same = {k: v for k, v in saved.model_dump(mode="json").items() if k != "audit"} == {
        k: v for k, v in claimed.model_dump(mode="json").items() if k != "audit"
    }
    if not same:
        raise DataError(f"{run_dir}: config.json and results.json describe different runs")
    for o in overrides:
        if not o.strip().startswith("audit."):
            raise ConfigError(f"--set {o!r}: umbra audit changes only audit.* settings")
        apply_override(raw, o)
    return validate_config(raw), results


@dataclass(frozen=True)
class FinishedModel:
    """The final model of a finished run, with what it was trained and tested on.

    ``where``: the checkpoint folder it came from, relative to the run folder.
    """

    config: Config
    results: dict[str, Any]
    spec: ModelSpec
    model: MultimodalNet
    data: PreparedData
    where: str


def load_final_model(
    run_dir: Path,
    overrides: Sequence[str] = (),
    *,
    on_status: Callable[[str], None] | None = None,
) -> FinishedModel:
    """Load the newest checkpoint of the finished run in ``run_dir`` into its model, with
    the run's data prepared as the run did (``overrides`` as for `load_finished_run`).

    Raises a one-line UmbraError when the folder holds no finished run or checkpoint, when
    the checkpoint does not fit the config, or when its test accuracy is not results.json's
    (within ``ACCURACY_TOLERANCE``): then it is not the run's final model.
    """
    import torch

    from umbra.federation.checkpoint import load_latest
    from umbra.federation.train import Batchable, evaluate, set_arrays
    from umbra.models import ModelSpec, MultimodalNet
    from umbra.run.prepare import model_spec_for, prepare_data

    say = on_status or (lambda s: None)
    cfg, results = load_finished_run(run_dir, overrides)
    torch.set_num_threads(cfg.run.threads)  # as the centralized baseline and each client
    latest = load_latest(run_dir / "checkpoints")
    if latest is None:
        raise DataError(f"{run_dir} holds no checkpoint of the final model")
    say(f"preparing the run's data ({cfg.data.source}) as the run did")
    prep = prepare_data(cfg)
    spec = ModelSpec.from_dict(model_spec_for(cfg, prep.train))
    model = MultimodalNet(spec)
    where = f"checkpoints/round_{latest.round:04d}"
    try:
        set_arrays(model, latest.arrays)
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{run_dir}/{where} does not match the run's config: {first}") from None
    claimed = results["final"].get("accuracy")
    if isinstance(claimed, int | float):
        got = evaluate(model, Batchable.from_data(prep.test), subsets=[])["accuracy"]
        acc = float(got) if isinstance(got, int | float) else float("nan")
        if not abs(acc - claimed) <= ACCURACY_TOLERANCE:
            raise DataError(
                f"{run_dir}/{where} is not the run's final model: its test accuracy is "
                f"{acc:.4f}, results.json says {claimed:.4f}"
            )
    return FinishedModel(cfg, results, spec, model, prep, where)


def audit_run(
    run_dir: Path,
    overrides: Sequence[str] = (),
    *,
    on_status: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Audit the finished run in ``run_dir``; returns the ``audit.membership`` object
    written into its results.json (beside ``audit.reconstruction`` when
    ``audit.reconstruction`` is on; report.html re-rendered)."""
    from umbra.audit.membership_audit import membership_audit
    from umbra.federation.checkpoint import atomic_write_text
    from umbra.report import render_report
    from umbra.run.simulation import train_settings

    say = on_status or (lambda s: None)
    final = load_final_model(run_dir, overrides, on_status=say)
    cfg, results, model, spec, prep, where = (
        final.config, final.results, final.model, final.spec, final.data, final.where,
    )  # fmt: skip
    membership = membership_audit(
        model, spec, prep, cfg, train_settings(cfg), privacy=results.get("privacy"),
        on_status=say,
    )  # fmt: skip
    membership = {"model": where, **membership}
    found: dict[str, Any] = {"membership": membership}
    if cfg.audit.reconstruction:
        from umbra.audit.reconstruction_audit import reconstruction_audit

        recon = reconstruction_audit(
            model, prep, cfg, train_settings(cfg), run_dir=run_dir,
            privacy=results.get("privacy"), on_status=say,
        )  # fmt: skip
        found["reconstruction"] = {"model": where, **recon}
    current = _read_json(run_dir / "results.json", "results")  # as it is now: keep it all
    old = current.get("audit")
    current["audit"] = {**(old if isinstance(old, dict) else {}), **found}
    atomic_write_text(run_dir / "results.json", json.dumps(current, indent=2))
    try:
        render_report(run_dir)
    except UmbraError as err:
        raise DataError(f"audit written to results.json, but report.html failed: {err}") from None
    return membership
