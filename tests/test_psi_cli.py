"""``umbra psi``: the local run prints the intersection size on its last line and writes
the shared ids; bad input is one line on stderr naming the problem, exit code 2, no
traceback."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from umbra import cli
from umbra.services.psi_wire import HEADER, MessageType, frame

UMBRA = [sys.executable, "-m", "umbra.cli", "psi"]
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


def _main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["umbra", "psi", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_local_two_and_three_parties(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, c = (tmp_path / n for n in ("a.txt", "b.txt", "c.txt"))
    a.write_text("".join(f"id{i}\n" for i in range(0, 60)))
    b.write_text("".join(f" id{i} \r\n" for i in range(40, 100)))  # trimmed, CRLF
    c.write_text("".join(f"id{i}\n" for i in range(50, 55)) + "ID41\n")  # case-sensitive
    code, out, err = _main(monkeypatch, capsys, str(a), str(b), "--out", str(tmp_path / "o.txt"))
    assert code == 0, err
    assert out.strip().splitlines()[-1] == "20"
    assert set((tmp_path / "o.txt").read_text().splitlines()) == {f"id{i}" for i in range(40, 60)}
    assert "bytes" in out
    code, out, err = _main(monkeypatch, capsys, str(a), str(b), str(c), "--data-structure", "raw")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == "5"
    code, out, _ = _main(
        monkeypatch, capsys, "local", str(a), str(c), "--ignore-case", "--cardinality-only"
    )
    assert out.strip().splitlines()[-1] == "6"


@pytest.mark.parametrize(
    ("contents", "extra", "needles"),
    [
        ({"a": b"x\ny\n\xff\xfe\n", "b": b"x\n"}, [], ["a line 3", "not valid UTF-8", "0xff"]),
        ({"a": b"x\ny\n x\n", "b": b"x\n"}, [], ["a line 3: duplicate id (same as line 1"]),
        (
            {"a": b"x\nX\n", "b": b"x\n"},
            ["--ignore-case"],
            ["a line 2: duplicate id", "case folding"],
        ),
        ({"a": b"\n  \n", "b": b"x\n"}, [], ["a: no ids"]),
        ({"a": b"x\n"}, [], ["at least two files"]),
        (
            {"a": b"x\n", "b": b"x\n"},
            ["--cardinality-only", "--out", "o"],
            ["--out needs the shared ids"],
        ),
        ({"a": b"x\n", "b": b"x\n"}, ["--fpr", "0.5"], ["fpr must be in [1e-30, 0.01], got 0.5"]),
        (
            {"a": b"x\n", "b": b"x\n", "c": b"y\n"},
            ["--max-ids", "0"],
            ["max_ids must be at least 1"],
        ),
    ],
)
def test_bad_input(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    contents: dict[str, bytes],
    extra: list[str],
    needles: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    code, _, err = _main(monkeypatch, capsys, *contents, *extra)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--join", "nohost"], "--join wants HOST:PORT, got 'nohost'"),
        (["--join", "h:99999"], "--join wants HOST:PORT"),
        ([], "joins the previous party, serves the next, or both"),
    ],
)
def test_chain_bad_input(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    needle: str,
) -> None:
    (tmp_path / "a").write_text("x\n")
    code, _, err = _main(monkeypatch, capsys, "chain", str(tmp_path / "a"), *extra)
    assert code == 2, err
    assert err.count("\n") == 1 and needle in err, err


def test_missing_file_through_the_entry_point(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x\n")
    proc = subprocess.run(
        [*UMBRA, "a.txt", "missing.txt"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: missing.txt: no such file"


def test_join_against_a_malformed_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A peer answering the hello with a garbage setup: one line, exit 2, and the peer is
    told why."""
    (tmp_path / "ids.txt").write_text("a\nb\n")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    told: list[bytes] = []

    def fake_server() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(HEADER.size + 9)  # the hello
            conn.sendall(frame(MessageType.SETUP, b"\x0a\x05garbage"))
            conn.sendall(frame(MessageType.RESPONSE, b""))
            conn.settimeout(10)
            with contextlib.suppress(OSError):
                while chunk := conn.recv(65536):
                    told.append(chunk)

    thread = threading.Thread(target=fake_server, daemon=True)
    thread.start()
    code, _, err = _main(
        monkeypatch,
        capsys,
        "join",
        str(tmp_path / "ids.txt"),
        "--port",
        str(port),
        "--timeout",
        "10",
    )
    thread.join(20)
    listener.close()
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "malformed setup message" in err, err
    assert b"malformed setup message" in b"".join(told)
