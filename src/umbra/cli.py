"""The ``umbra`` command line.

Every user-facing error (bad config, bad data, a run folder that cannot be resumed, a run
whose every round aborted) is a one-line message on stderr and exit code 2, without a
traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from umbra.errors import UmbraError

app = typer.Typer(
    name="umbra",
    help="Privacy-preserving multimodal federated learning on Flower.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _round_line(total: int) -> Any:
    def show(row: dict[str, Any]) -> None:
        acc = row.get("accuracy")
        acc_s = f"acc [bold]{acc:.3f}[/]" if acc is not None else "acc  -   "
        loss = row.get("loss")
        loss_s = f"loss {loss:.3f}" if loss is not None else ""
        eps = row.get("epsilon")
        eps_s = (
            f"  ε {eps['total']:.2f} (model holder)"
            if isinstance(eps, dict) and "total" in eps
            else ""
        )
        abort_s = f"  [red]aborted: {row.get('note', '')}[/]" if row.get("aborted") else ""
        console.print(
            f"[cyan]round {row['round']:>3}/{total}[/]  {acc_s}  {loss_s}  "
            f"↑ {_fmt_bytes(row['bytes_up'])}  ↓ {_fmt_bytes(row['bytes_down'])}  "
            f"{row['clients']} clients  {row['wall_s']:.1f} s{eps_s}{abort_s}",
            highlight=False,
            soft_wrap=True,  # one line per round, also in an 80-column log
        )

    return show


def _final_table(results: dict[str, Any]) -> Table:
    final = results["final"]
    source = results.get("config", {}).get("data", {}).get("source")
    held_out = "Fashion-MNIST t10k records" if source == "fmnist-avt" else f"{source} test records"
    table = Table(title=f"Test accuracy (held-out {held_out})")
    table.add_column("inputs")
    table.add_column("accuracy", justify="right")
    for m, acc in final["per_modality_accuracy"].items():
        if m != "fused":
            table.add_row(f"{m} only", f"{acc:.3f}")
    for subset, acc in final["missing_modality_accuracy"].items():
        table.add_row(subset, f"{acc:.3f}")
    table.add_row("[bold]fused (all)[/]", f"[bold]{final['accuracy']:.3f}[/]")
    table.add_row("macro-F1 (fused)", f"{final['macro_f1']:.3f}")
    return table


@app.command()
def run(
    preset: Annotated[
        str | None, typer.Option(help="preset name: smoke, default, baseline")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="a TOML config file instead of a preset")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override one setting: section.key=value (repeatable)"),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default runs/<preset>)")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="continue the run in this folder after its last round")
    ] = None,
) -> None:
    """Train a multimodal model across simulated organisations on Flower.

    Writes results.json and checkpoints/ into the output folder.
    """
    from umbra.config import load_config, resolve_config

    overrides = set_ or []
    notes: list[str] = []
    if resume is not None:
        requested = None
        if preset or config or overrides:
            requested = load_config(preset or "default", file=config, overrides=overrides)
        from umbra.run.folder import resume_config

        cfg = resume_config(resume, requested)
        run_dir = resume
    else:
        if preset and config:
            raise UmbraError("give either --preset or --config, not both")
        resolved = resolve_config(preset or "default", file=config, overrides=overrides)
        cfg, notes = resolved.config, resolved.notes
        run_dir = out or Path("runs") / (preset or (config.stem if config else "default"))
    from umbra.experiment import run_experiment

    for note in notes:  # defaults chosen for the data, before anything runs
        console.print(note, style="dim", markup=False, highlight=False)
    show = _round_line(cfg.federation.rounds) if cfg.run.progress else None
    results = run_experiment(
        cfg,
        run_dir,
        resume=resume is not None,
        on_round=show,
        on_status=lambda s: console.print(f"[dim]{s}[/]"),
    )
    _print_results(results, run_dir)
    if cfg.audit.enabled:
        _audit(run_dir, [])


def _print_results(results: dict[str, Any], run_dir: Path) -> None:
    """The end of a run: stop reason, final table, ε per observer, where results are."""
    if results.get("stopped"):
        console.print(f"[yellow]stopped early:[/] {results['stopped']}", highlight=False)
    console.print(_final_table(results))
    observers = (results.get("privacy") or {}).get("observers") or {}
    if observers:
        console.print(
            "ε per observer: "
            + "; ".join(
                f"{name.replace('_', ' ')} "
                + (f"{o['epsilon']['total']:.2f}" if o.get("epsilon") else "none holds")
                + ("" if o.get("amplified") or not o.get("epsilon") else " (no amplification)")
                for name, o in observers.items()
            ),
            highlight=False,
        )
    t = results["timing"]
    console.print(
        f"results: {run_dir / 'results.json'}  (data {t['data_s']:.0f} s, "
        f"training {t['train_s']:.0f} s, total {t['total_s']:.0f} s)"
    )


deploy_app = typer.Typer(
    help="Run on Flower's Deployment Engine (SuperLink, SuperNodes, flwr run).",
    no_args_is_help=True,
)
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("local")
def deploy_local(
    nodes: Annotated[
        int | None,
        typer.Option(help="SuperNodes, one per organisation (default: federation.num_clients)"),
    ] = None,
    insecure: Annotated[
        bool, typer.Option(help="no TLS, no SuperNode authentication (testing only)")
    ] = False,
    preset: Annotated[
        str | None, typer.Option(help="preset name: smoke, default, baseline")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override one setting: section.key=value (repeatable)"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="output folder (default runs/deploy-<preset>)")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="continue the deployed run in this folder")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="SuperLink port on 127.0.0.1 (default: a free one)")
    ] = None,
    certificates: Annotated[
        Path | None,
        typer.Option(help="folder with ca.crt, server.crt, server.key (default: throwaway ones)"),
    ] = None,
) -> None:
    """Train as separate parties on this machine (SuperLink, SuperNodes, flwr run).

    One SuperNode per organisation, each reading only its own data folder, over TLS with
    SuperNode authentication. Writes the same run folder as umbra run, plus logs/.
    """
    from umbra.experiment import run_experiment
    from umbra.run.deploy import plan_local

    plan = plan_local(preset=preset, overrides=set_ or [], nodes=nodes, out=out, resume=resume,
                      insecure=insecure, port=port, certificates=certificates)  # fmt: skip
    cfg = plan.cfg
    console.print(
        f"[dim]deployment: SuperLink + {plan.runner.nodes} SuperNodes on 127.0.0.1"
        f"{' (insecure)' if insecure else ', TLS and SuperNode authentication'}; "
        f"logs in {plan.run_dir / 'logs'}[/]",
        highlight=False,
    )
    show = _round_line(cfg.federation.rounds) if cfg.run.progress else None
    results = run_experiment(
        cfg,
        plan.run_dir,
        resume=resume is not None,
        on_round=show,
        on_status=lambda s: console.print(f"[dim]{s}[/]"),
        runner=plan.runner,
    )
    _print_results(results, plan.run_dir)
    if cfg.audit.enabled:
        _audit(plan.run_dir, [])


privacy_app = typer.Typer(help="Inspect the privacy ledger of a run.", no_args_is_help=True)
app.add_typer(privacy_app, name="privacy")


@privacy_app.command("ledger")
def privacy_ledger(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (or a ledger.jsonl file)")],
) -> None:
    """Summarise ledger.jsonl and recompute ε from it alone (dp-accounting)."""
    import json

    from umbra.privacy.ledger import read_ledger, replay

    path = run_dir / "ledger.jsonl" if run_dir.is_dir() else run_dir
    if not path.exists():
        raise UmbraError(f"no privacy ledger at {path} (was differential privacy on?)")
    contents = read_ledger(path)
    report = replay(path)
    console.print(
        f"ledger {path}: unit [bold]{report.unit}[/], δ = {report.delta:g}, accountant "
        f"{report.accountant}, {report.releases} releases over rounds "
        f"{report.rounds[0] if report.rounds else '-'}..{report.rounds[-1] if report.rounds else '-'}",
        highlight=False,
    )
    groups = sorted({g for r in contents.releases for g in r.noise_multipliers}
                    | {r.group for r in contents.label_releases})  # fmt: skip
    table = Table(
        title="ε recomputed from the ledger, per party (worst first), for observers who do "
        "not see the sample"
    )
    table.add_column("party")
    table.add_column("releases", justify="right")
    for g in groups:
        table.add_column(f"ε {g}", justify="right")
    table.add_column("ε total", justify="right")
    parties = sorted(report.per_party, key=lambda p: -report.per_party[p]["total"])
    for party in parties:
        eps = report.per_party[party]
        n = sum(1 for r in contents.releases if r.party == party)
        n += sum(1 for r in contents.label_releases if r.party == party)
        table.add_row(
            party, str(n), *(f"{eps.get(g, 0.0):.3f}" for g in groups), f"{eps['total']:.3f}"
        )
    console.print(table)
    console.print(
        f"reported ε (worst party {report.worst_party}; for observers who do not see the "
        "sample): " + ", ".join(f"{k} = {v:.3f}" for k, v in report.epsilon.items()),
        highlight=False,
    )
    results = run_dir / "results.json" if run_dir.is_dir() else None
    _print_observers(contents, results)
    if results is not None and results.exists():
        claimed = (json.loads(results.read_text()).get("privacy") or {}).get("epsilon") or {}
        if claimed:
            # client-level DP has one group ("all") that results.json reports per modality
            keys = [k for k in report.epsilon if k in claimed] if "total" in claimed else []
            same = bool(keys) and all(
                abs(claimed[k] - report.epsilon[k]) <= 1e-9 * max(1.0, report.epsilon[k])
                for k in keys
            )
            verdict = "[green]matches[/]" if same else "[red]DIFFERS FROM[/]"
            console.print(f"ledger ε {verdict} results.json")
    for note in report.warnings:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


def _print_observers(contents: Any, results: Path | None) -> None:
    """ε of the ledger for each observer (server, other organisations, model holder)."""
    import json

    from umbra.privacy.observers import observer_epsilons, observer_views

    cfg: dict[str, Any] = {}
    if results is not None and results.exists():
        obj = json.loads(results.read_text())
        if "vertical" in obj:  # a vertical run's observers (docs/vertical.md)
            from umbra.vertical.observers import observer_rows

            table = Table(title="ε per observer (recomputed from the ledger)")
            for col in ("observer", "ε label", "ε features", "ε record", "what it sees"):
                table.add_column(col)
            for row in observer_rows(contents, obj["vertical"]):
                table.add_row(*row)
            console.print(table)
            return
        cfg = obj.get("config") or {}
    noise = (cfg.get("privacy") or {}).get("noise")
    secure = (cfg.get("secure") or {}).get("aggregation")
    views = observer_views(
        unit=contents.unit, noise=noise or "distributed", secure=secure or "secagg+"
    )
    table = Table(title="ε per observer (recomputed from the ledger)")
    for col in ("observer", "ε total", "amplified", "what it sees"):
        table.add_column(col, justify="right" if col == "ε total" else "left")
    for name, o in observer_epsilons(contents, views).items():
        eps = o["epsilon"]
        table.add_row(
            name.replace("_", " "),
            f"{eps['total']:.3f}" if eps is not None else "none holds",
            "yes" if o["amplified"] else "no",
            o["why"],
        )
    console.print(table)
    if noise is None and contents.unit == "client":
        console.print(
            "[yellow]note:[/] no results.json beside the ledger: the table assumes the noise "
            "was shared out under secure aggregation; if the server added it, no ε holds "
            "against the server",
            highlight=False,
        )


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run folder holding results.json")],
) -> None:
    """Re-render report.html of a run from its results.json (and ledger.jsonl)."""
    from umbra.report import render_report

    if not (run_dir / "results.json").exists():
        raise UmbraError(f"{run_dir} holds no results.json")
    console.print(f"wrote {render_report(run_dir)}")


@app.command()
def audit(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override one audit setting: audit.key=value (repeatable)"),
    ] = None,
) -> None:
    """Attack a finished run: membership inference on its final model, as whoever holds it;
    with --set audit.reconstruction=true also a curious server's reconstruction of one
    organisation's records from its update.

    Adds audit.membership (and audit.reconstruction) to results.json (all else kept) and
    an Attacks section to report.html; see docs/audit.md.
    """
    _audit(run_dir, set_ or [])


def _audit(run_dir: Path, overrides: list[str]) -> None:
    """Run the audit of ``run_dir`` and print its figures."""
    from umbra.audit import audit_run

    membership = audit_run(
        run_dir, overrides, on_status=lambda s: console.print(f"[dim]{s}[/]", highlight=False)
    )
    table = Table(
        title=f"Membership inference against the final model ({membership['members']['count']} "
        f"members, {membership['non_members']['count']} non-members)"
    )
    table.add_column("attack")
    table.add_column("AUC", justify="right")
    fprs = list(next(iter(membership["attacks"].values()))["tpr_at_fpr"])
    for f in fprs:
        table.add_column(f"TPR at FPR {float(f):.2%}", justify="right")
    names = {
        "loss": "loss threshold",
        "lira": f"offline LiRA ({membership['shadows']['count']} shadows)",
    }
    for name, att in membership["attacks"].items():
        se = att["auc_standard_error"]
        table.add_row(
            names.get(name, name),
            f"{att['auc']:.3f} ± {se:.3f}",
            *(f"{att['tpr_at_fpr'][f]:.2%}" for f in fprs),
        )
    dp = membership.get("dp")
    if dp:
        table.add_row(
            f"DP ceiling (ε {dp['epsilon']:.2f}, δ {dp['delta']:g})",
            "",
            *(f"{dp['ceiling_at_fpr'][f]:.2%}" for f in fprs),
        )
    console.print(table)
    written = "audit.membership"
    recon = _saved_audit(run_dir).get("reconstruction")
    if isinstance(recon, dict) and isinstance(recon.get("views"), dict):
        console.print(_reconstruction_table(recon))
        written += ", audit.reconstruction"
    console.print(
        f"results: {run_dir / 'results.json'} ({written}), report: "
        f"{run_dir / 'report.html'}  ({membership['seconds']:.0f} s)",
        highlight=False,
    )


def _saved_audit(run_dir: Path) -> dict[str, Any]:
    """The ``audit`` object of ``run_dir``'s results.json ({} if none or unreadable)."""
    import json

    try:
        found = json.loads((run_dir / "results.json").read_text()).get("audit")
    except (OSError, ValueError, AttributeError):
        return {}
    return found if isinstance(found, dict) else {}


def _reconstruction_table(recon: dict[str, Any]) -> Table:
    """The reconstruction audit as a table (`umbra.report.audit.reconstruction_rows`)."""
    from umbra.report.audit import reconstruction_rows

    header, rows = reconstruction_rows(recon)
    table = Table(title=f"Reconstruction from organisation {recon.get('organisation')}'s update "
                        "(exact / records, feature cosine)")  # fmt: skip
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*row)
    return table


data_app = typer.Typer(help="Inspect bring-your-own data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("prepare")
def data_prepare(
    preset: Annotated[str, typer.Option(help="preset whose data to prepare")] = "default",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override one setting: section.key=value")
    ] = None,
) -> None:
    """Build (or check) the cached features of a preset's data set, without training."""
    import time

    from umbra.config import load_config
    from umbra.run.prepare import prepare_data

    cfg = load_config(preset, overrides=set_ or [])
    t0 = time.perf_counter()
    prep = prepare_data(cfg)
    images = ""
    if "image" in prep.train.modalities:
        shape = "x".join(str(s) for s in prep.train.feature_shapes()["image"])
        images = f", images as {cfg.data.image_features} ({shape})"
    console.print(
        f"{cfg.data.source}: {len(prep.train)} training records over {len(prep.parts)} clients, "
        f"{len(prep.test)} test records, modalities {', '.join(prep.train.modalities)}{images} "
        f"({time.perf_counter() - t0:.1f} s)",
        highlight=False,
    )


@data_app.command("inspect")
def data_inspect(
    manifest: Annotated[Path, typer.Argument(help="a CSV or Parquet manifest")],
) -> None:
    """Records per client, per label, per modality, and the missing-modality pattern."""
    from umbra.data.manifest import inspect_manifest

    console.print(inspect_manifest(manifest))


@data_app.command("schema")
def data_schema(
    manifest: Annotated[Path, typer.Argument(help="a CSV or Parquet manifest")],
) -> None:
    """The data schema a coordinator publishes for this manifest: the --set assignments
    (labels, modalities, tab: columns) every organisation's node resolves the same model
    from (docs/deployment.md)."""
    from umbra.data.manifest import DataSchema

    for line in DataSchema.of_manifest(manifest).overrides():
        console.print(f"--set '{line}'", highlight=False, soft_wrap=True)


@app.command()
def presets() -> None:
    """List the built-in presets."""
    from umbra.config import available_presets

    for name in available_presets():
        console.print(name)


def _infer_app() -> typer.Typer:
    from umbra.services.commands import infer_app

    return infer_app


app.add_typer(_infer_app(), name="infer")


def _psi_app() -> typer.Typer:
    from umbra.services.psi_cli import psi_app

    return psi_app


app.add_typer(_psi_app(), name="psi")


def _synth_command() -> Any:
    from umbra.synth.command import synth_command

    return synth_command


app.command("synth")(_synth_command())


@app.command()
def hetero(
    preset: Annotated[
        str | None, typer.Option(help="preset name: smoke, default, baseline")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="a TOML config file instead of a preset")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override one setting: section.key=value (repeatable)"),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default runs/hetero)")] = None,
) -> None:
    """Organisations with their own architectures (hetero.organisations), joined by
    averaging what matches and ensemble distillation; writes hetero.json
    (docs/heterogeneous.md)."""
    from umbra.config import resolve_config
    from umbra.federation.hetero.command import RESULT_FILE, hetero_run

    if preset and config:
        raise UmbraError("give either --preset or --config, not both")
    cfg = resolve_config(preset or "default", file=config, overrides=set_ or []).config
    run_dir = out or Path("runs") / "hetero"
    result = hetero_run(cfg, run_dir, say=lambda s: console.print(f"[dim]{s}[/]"))
    for arch in result.architectures:
        console.print(f"architecture {arch['architecture']} (organisations "
                      f"{arch['organisations']}, encoders {arch['encoders']}, hidden "
                      f"{arch['hidden']}): accuracy "
                      f"{arch['accuracy']:.4f}", highlight=False)  # fmt: skip
    console.print(f"global (ensemble) accuracy {result.global_model['accuracy']:.4f}; "
                  f"{run_dir / RESULT_FILE}", highlight=False)  # fmt: skip


def main() -> None:
    """Console entry point: user errors become one line and exit code 2."""
    try:
        app(standalone_mode=False)
    except UmbraError as err:
        err_console.print(f"[red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except Exception as err:  # click usage errors carry exit_code 2
        code = getattr(err, "exit_code", None)
        if code is not None:
            show = getattr(err, "show", None)
            if show is not None:
                show()
            sys.exit(code)
        raise


if __name__ == "__main__":
    main()
