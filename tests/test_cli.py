"""CLI: bad input gets one line on stderr naming the problem, exit code 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
import typer.main
from typer.testing import CliRunner

from umbra.cli import app
from umbra.config import Config, load_config
from umbra.errors import UmbraError
from umbra.federation.checkpoint import save_checkpoint

UMBRA = [sys.executable, "-m", "umbra.cli"]


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [*UMBRA, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


def _assert_user_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--preset", "nope"], ["unknown preset 'nope'"]),
        (["--set", "data.alpha=0"], ["data.alpha", "greater than 0"]),
        (["--set", "data.alpha=-2"], ["data.alpha"]),
        (["--set", "data.missing.audio=1.2"], ["data.missing.audio", "[0, 1]"]),
        (["--set", "data.missing.audio=-0.1"], ["data.missing.audio"]),
        (["--set", "data.missing.audio=1"], ["removes audio from every record"]),
        (["--set", "data.colour=1"], ["unknown key 'data.colour'", "valid keys"]),
        (["--set", "federation.num_clients=5000"], ["federation.num_clients"]),
        (["--set", "data.n_train=20", "--set", "federation.num_clients=8"],
         ["federation.num_clients = 8 needs at least 80 records"]),
        (["--preset", "smoke", "--set", "federation.num_clients=2",
          "--set", 'data.absent={"0"=["audio"], "1"=["audio"]}'],
         ["removes ['audio'] at every client"]),
        (["--preset", "smoke", "--set", "model.encoders.audio=spectrogram"],
         ["model.encoders", "audio -> spectrogram", "spectral-stats"]),
        (["--preset", "smoke", "--set", "model.encoders.video=spectral-stats"],
         ["model.encoders", "lacks: ['video']"]),
    ],
)  # fmt: skip
def test_config_errors(args: list[str], needles: list[str], tmp_path: Path) -> None:
    _assert_user_error(_run("run", *args, "--out", str(tmp_path / "r")), *needles)


@pytest.mark.parametrize(
    ("extra", "audio", "note"),
    [
        ([], "audio", True),
        (["--set", "model.encoders.audio=spectral-stats"], "spectral-stats", False),
    ],
)
def test_run_says_which_audio_encoder_a_manifest_gets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, extra: list[str], audio: str, note: bool
) -> None:
    """The first status line names the encoder chosen for the manifest; an explicit one wins."""
    seen: list[Config] = []

    def stop(cfg: Config, run_dir: Path, **kwargs: object) -> None:
        seen.append(cfg)
        raise UmbraError("stopped before training")

    monkeypatch.setattr("umbra.experiment.run_experiment", stop)
    args = ["run", "--preset", "default", "--set", f"data.manifest={tmp_path / 'm.csv'}"]
    result = CliRunner().invoke(app, [*args, *extra, "--out", str(tmp_path / "r")])
    assert isinstance(result.exception, UmbraError)
    assert [c.model.encoders["audio"] for c in seen] == [audio]
    first = result.output.splitlines()[0] if result.output else ""
    assert first.startswith("model.encoders.audio = 'audio' for your manifest") == note, first


def test_malformed_toml(tmp_path: Path) -> None:
    bad = tmp_path / "x.toml"
    bad.write_text("[federation]\nrounds = = 3\n")
    _assert_user_error(_run("run", "--config", str(bad)), "malformed TOML")


def _fake_run(folder: Path, overrides: list[str]) -> None:
    cfg = load_config("smoke", overrides=overrides)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    save_checkpoint(folder / "checkpoints", server_round=1,
                    arrays={"w": np.zeros(2, np.float32)}, strategy={},
                    state={"history": []})  # fmt: skip


def test_resume_from_another_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _fake_run(run, [])
    proc = _run("run", "--preset", "smoke", "--set", "data.alpha=0.9", "--resume", str(run))
    _assert_user_error(proc, "made with another config")


def test_resume_folder_that_is_not_a_run(tmp_path: Path) -> None:
    _assert_user_error(_run("run", "--resume", str(tmp_path)), "not an Umbra run folder")


def test_out_folder_holding_a_run_is_not_overwritten(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _fake_run(run, [])
    _assert_user_error(_run("run", "--preset", "smoke", "--out", str(run)), "--resume")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--set", "federation.colour=1"], ["unknown key 'federation.colour'"]),
        (
            ["--insecure", "--set", "secure.aggregation=ckks"],
            ["'ckks' needs node keys", "--insecure"],
        ),
        (["--nodes", "0"], ["--nodes 0"]),
        (["--set", "federation.mode=centralized"], ["umbra run"]),
    ],
)
def test_deploy_local_bad_input_starts_nothing(
    args: list[str], needles: list[str], tmp_path: Path
) -> None:
    """Checked before data or processes: the run folder is never made (no logs/)."""
    out = tmp_path / "r"
    _assert_user_error(_run("deploy", "local", "--preset", "smoke", *args, "--out", str(out)),
                       *needles)  # fmt: skip
    assert not out.exists()


def test_deploy_local_port_in_use(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run("deploy", "local", "--preset", "smoke", "--port", str(port),
                    "--out", str(tmp_path / "r"))  # fmt: skip
    _assert_user_error(proc, str(port))
    assert not (tmp_path / "r").exists()


def test_deploy_local_certificate_not_signed_by_the_ca(tmp_path: Path) -> None:
    from umbra.deploy.pki import generate_server_credentials

    first = generate_server_credentials(tmp_path / "a")
    other = generate_server_credentials(tmp_path / "b")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for src, name in ((other.ca_cert, "ca.crt"), (first.cert, "server.crt"),
                      (first.key, "server.key")):  # fmt: skip
        (mixed / name).write_bytes(src.read_bytes())
    proc = _run("deploy", "local", "--preset", "smoke", "--certificates", str(mixed),
                "--out", str(tmp_path / "r"))  # fmt: skip
    _assert_user_error(proc, "not signed by CA")
    assert not (tmp_path / "r").exists()


def test_deploy_local_resume_of_a_folder_it_did_not_make(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _fake_run(run, [])
    _assert_user_error(_run("deploy", "local", "--resume", str(run)), "not made by umbra deploy")


def _registered(group: click.Group) -> dict[str, str]:
    """Command name -> the first paragraph of the help typer registered for it."""
    return {n: " ".join((c.help or "").split("\n\n")[0].split()) for n, c in group.commands.items()}


def _listed(help_text: str) -> tuple[list[str], str]:
    """The command names in the Commands panel of ``--help``, and the panel as one line."""
    panel = help_text.split("Commands")[1].split("╰")[0]
    names = [ln[2:].split()[0] for ln in panel.splitlines() if ln.startswith("│ ") and ln[2] != " "]
    return names, " ".join(panel.replace("│", " ").split())


@pytest.mark.parametrize(
    "sub",
    [(), ("privacy",), ("data",), ("deploy",), ("psi",)],
    ids=["umbra", "privacy", "data", "deploy", "psi"],
)
def test_help_lists_every_command_with_its_help(sub: tuple[str, ...]) -> None:
    group = typer.main.get_command(app)
    for name in sub:
        group = group.commands[name]  # type: ignore[attr-defined]
    assert isinstance(group, click.Group)
    want = _registered(group)
    assert want and all(want.values())  # every command has a one-line help
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "100", "NO_COLOR": "1"}
    proc = subprocess.run([*UMBRA, *sub, "--help"], capture_output=True, text=True, timeout=120,
                          env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    names, panel = _listed(proc.stdout)
    assert sorted(names) == sorted(want)
    for name, line in want.items():
        assert f"{name} {line}" in panel, (name, line)
