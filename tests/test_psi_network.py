"""``umbra psi serve`` / ``join``: the two roles across two processes on loopback, the
framing's checks, and a peer that sends malformed or unexpected messages."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from umbra.services import (
    ChainPartyResult,
    IdSet,
    PsiConfig,
    PsiError,
    PsiProtocolError,
    chain_party,
    join,
    serve,
)
from umbra.services.psi_wire import HEADER, Hello, MessageType, frame, payload_limit, read_frame

UMBRA = [sys.executable, "-m", "umbra.cli", "psi"]
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


def test_serve_and_join_in_two_processes(tmp_path: Path) -> None:
    left = {f"patient-{i}" for i in range(0, 300)}
    right = {f"patient-{i}" for i in range(200, 450)}
    (tmp_path / "left.txt").write_text("\n".join(sorted(left)) + "\n")
    (tmp_path / "right.txt").write_text("\n".join(sorted(right)) + "\n")
    server = subprocess.Popen(
        [*UMBRA, "serve", "left.txt", "--port", "0", "--out", "server_out.txt", "--timeout", "60"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert first.startswith("listening on 127.0.0.1:"), first
        port = first.strip().rsplit(":", 1)[1]
        client = subprocess.run(
            [
                *UMBRA,
                "join",
                "right.txt",
                "--port",
                port,
                "--share-result",
                "--out",
                "client_out.txt",
            ],
            cwd=tmp_path,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        out, err = server.communicate(timeout=60)
    finally:
        server.kill()
    expected = left & right
    assert client.returncode == 0, client.stderr
    assert server.returncode == 0, err
    assert client.stdout.strip().splitlines()[-1] == str(len(expected))
    assert out.strip().splitlines()[-1] == str(len(expected))
    client_rows = (tmp_path / "client_out.txt").read_text().splitlines()
    server_rows = (tmp_path / "server_out.txt").read_text().splitlines()
    assert set(client_rows) == expected
    assert client_rows == server_rows  # the same records in the same order on both sides


def _serve_in_thread(ids: IdSet, config: PsiConfig) -> tuple[int, dict[str, Any], threading.Thread]:
    ready = threading.Event()
    box: dict[str, Any] = {}

    def listening(_host: str, port: int) -> None:
        box["port"] = port
        ready.set()

    def run() -> None:
        try:
            box["result"] = serve(ids, config, port=0, timeout_s=20, on_listening=listening)
        except Exception as err:  # the test inspects it
            box["error"] = err
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(20)
    return int(box["port"]), box, thread


def test_join_in_process_both_learn() -> None:
    server_ids = IdSet.from_ids(["a", "b", "c", "d"])
    port, box, thread = _serve_in_thread(server_ids, PsiConfig())
    result = join(
        IdSet.from_ids(["c", "x", "a"]), PsiConfig(), host="127.0.0.1", port=port, share_result=True
    )
    thread.join(20)
    assert set(result.shared or ()) == {"a", "c"}
    served = box["result"]
    assert set(served.shared) == {"a", "c"}
    assert served.client_size == 3
    assert served.bytes_received == result.bytes_sent
    assert served.bytes_sent == result.bytes_received


def _raw_client(port: int, *frames: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        for f in frames:
            sock.sendall(f)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _last_error(data: bytes) -> str:
    """The text of the ERROR message at the end of what the server sent."""
    pos = 0
    text = ""
    while pos < len(data):
        _, _, kind, length = HEADER.unpack_from(data, pos)
        payload = data[pos + HEADER.size : pos + HEADER.size + length]
        if kind == MessageType.ERROR:
            text = payload.decode()
        pos += HEADER.size + length
    return text


@pytest.mark.parametrize(
    ("frames", "needle"),
    [
        ([frame(MessageType.HELLO, b"\x00")], "malformed hello"),
        ([b"XX" + b"\x01\x01" + b"\x00\x00\x00\x09" + bytes(9)], "bad magic"),
        ([frame(MessageType.REQUEST, b"")], "expected a HELLO message, got REQUEST"),
        ([frame(MessageType.HELLO, Hello(True, False, False, 2).encode())], "mode mismatch"),
        ([frame(MessageType.HELLO, Hello(False, False, False, 10**9).encode())], "accepts at most"),
        (
            [
                frame(MessageType.HELLO, Hello(False, False, False, 2).encode()),
                frame(MessageType.REQUEST, b"\xff\xff\xff"),
            ],
            "malformed request message",
        ),
        (
            [
                frame(MessageType.HELLO, Hello(False, False, False, 2).encode()),
                HEADER.pack(b"UP", 1, MessageType.REQUEST, 2**31),
            ],
            "exceeds the limit",
        ),
        (
            [frame(MessageType.HELLO, Hello(False, False, False, 2).encode())[:9]],
            "closed the connection",
        ),
    ],
)
def test_server_refuses_bad_client(frames: list[bytes], needle: str) -> None:
    port, box, thread = _serve_in_thread(IdSet.from_ids(["a", "b"]), PsiConfig(max_ids=1000))
    received = _raw_client(port, *frames)
    thread.join(20)
    assert isinstance(box.get("error"), PsiProtocolError)
    assert needle in str(box["error"])
    assert "\n" not in str(box["error"])
    assert needle in _last_error(received)  # the client is told why


def test_server_refuses_result_it_does_not_hold() -> None:
    port, box, thread = _serve_in_thread(IdSet.from_ids(["a", "b"]), PsiConfig())
    # a client that claims a shared id the server does not hold: run the protocol, then lie
    client_ids = IdSet.from_ids(["a", "z"])
    from umbra.services.psi import PsiClient

    client = PsiClient(client_ids, PsiConfig())
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        stream = sock.makefile("rb")
        sock.sendall(frame(MessageType.HELLO, Hello(False, False, True, 2).encode()))
        setup = read_frame(stream, MessageType.SETUP, max_ids=10)
        sock.sendall(frame(MessageType.REQUEST, client.request()))
        response = read_frame(stream, MessageType.RESPONSE, max_ids=10)
        assert client.finish(setup, response)[0] == 1
        fake = sorted(client_ids.digests)
        sock.sendall(frame(MessageType.RESULT, b"".join(fake)))
        thread.join(20)
    assert "names an id this party does not hold" in str(box["error"])


def test_wire_reader() -> None:
    hello = Hello(True, True, False, 12345)
    assert Hello.decode(hello.encode()) == hello
    with pytest.raises(PsiProtocolError, match="unknown flags"):
        Hello.decode(b"\x80" + bytes(8))
    good = frame(MessageType.SETUP, b"abc")
    assert read_frame(io.BytesIO(good), MessageType.SETUP, max_ids=1) == b"abc"
    with pytest.raises(PsiProtocolError, match="protocol version 9"):
        read_frame(io.BytesIO(b"UP\x09" + good[3:]), MessageType.SETUP, max_ids=1)
    with pytest.raises(PsiProtocolError, match="during the SETUP message"):
        read_frame(io.BytesIO(good[:-1]), MessageType.SETUP, max_ids=1)
    with pytest.raises(PsiProtocolError, match="the peer stopped: nope"):
        read_frame(
            io.BytesIO(frame(MessageType.ERROR, b"nope\nmore")), MessageType.SETUP, max_ids=1
        )
    big = HEADER.pack(b"UP", 1, MessageType.RESULT, payload_limit(MessageType.RESULT, 10) + 1)
    with pytest.raises(
        PsiProtocolError, match="RESULT message of 321 bytes exceeds the limit of 320"
    ):
        read_frame(io.BytesIO(big), MessageType.RESULT, max_ids=10)


def test_join_refuses_without_server() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: nobody serves here
        with pytest.raises(PsiError, match=r"cannot connect to 127\.0\.0\.1"):
            join(IdSet.from_ids(["a"]), PsiConfig(), host="127.0.0.1", port=port, timeout_s=0.5)


def _chain_in_threads(
    sets: list[IdSet], configs: list[PsiConfig] | None = None
) -> list[ChainPartyResult | BaseException]:
    """Party i serves on its own port and joins party i-1; started last-first, so every
    join waits for its upstream to listen."""
    k = len(sets)
    ports: list[int] = []
    for _ in range(k - 1):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    out: list[ChainPartyResult | BaseException] = [RuntimeError("did not finish")] * k

    def run(i: int) -> None:
        try:
            out[i] = chain_party(
                sets[i],
                (configs or [PsiConfig()] * k)[i],
                upstream=("127.0.0.1", ports[i - 1]) if i > 0 else None,
                listen_on=("127.0.0.1", ports[i]) if i < k - 1 else None,
                timeout_s=20,
            )
        except BaseException as err:  # the test inspects it
            out[i] = err

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in reversed(range(k))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_chain_across_connections_equals_set_intersection() -> None:
    raw = [
        {f"id{i}" for i in range(0, 80)},
        {f"id{i}" for i in range(20, 120)},
        {f"id{i}" for i in range(0, 200, 3)},
        {f"id{i}" for i in range(10, 70)},
    ]
    sets = [IdSet.from_ids(sorted(r)) for r in raw]
    results = _chain_in_threads(sets)
    expected = set.intersection(*raw)
    rows = []
    for i, (ids, res) in enumerate(zip(sets, results, strict=True)):
        assert isinstance(res, ChainPartyResult), res
        assert set(res.shared) == expected
        assert [ids.ids[p] for p in res.positions] == list(res.shared)
        rows.append(res.shared)
        prefix = set.intersection(*raw[: i + 1])
        assert res.running_size == (None if i == 0 else len(prefix))
    assert all(r == rows[0] for r in rows)  # same records, same order, at every party


def test_chain_mismatch_stops_every_party() -> None:
    sets = [
        IdSet.from_ids(["a", "b"]),
        IdSet.from_ids(["a"], ignore_case=True),
        IdSet.from_ids(["a"]),
    ]
    results = _chain_in_threads(sets)
    assert all(isinstance(r, PsiError) for r in results), results
    assert "id policy mismatch" in str(results[0])
    assert "id policy mismatch" in str(results[1])
