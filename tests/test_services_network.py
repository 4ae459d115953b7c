"""The encrypted services across two processes over HTTP, the endpoint's limits, and the
``umbra infer`` commands' bad-input exits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from umbra.services.endpoint import ServiceEndpoint, http_transport
from umbra.services.errors import ServiceError
from umbra.services.inference_client import InferenceClient
from umbra.services.poly_head import PolyHead
from umbra.services.protocol import INFER_PATH
from umbra.services.similarity import SimilarityServer
from umbra.services.similarity_client import SimilarityClient

M, D, H, C = 2, 4, 3, 3
SRC = Path(__file__).resolve().parents[1] / "src"

# The server process: builds the same head and gallery from the same seed, serves them.
SERVER = """
import sys
import numpy as np
from umbra.services.endpoint import ServiceEndpoint
from umbra.services.inference import InferenceServer
from umbra.services.similarity import SimilarityServer
sys.path.insert(0, sys.argv[2])
from test_services_network import make_head, make_gallery
endpoint = ServiceEndpoint(
    inference=InferenceServer(make_head().folded(), modalities=("image", "text")),
    similarity=SimilarityServer(make_gallery()),
)
open(sys.argv[1] + ".tmp", "w").write(str(endpoint.server_address[1]))
import os; os.replace(sys.argv[1] + ".tmp", sys.argv[1])
endpoint.serve_forever()
"""


def make_head() -> PolyHead:
    rng = np.random.default_rng(11)
    return PolyHead(
        rng.normal(size=(H, D)), rng.normal(size=H) * 0.1,
        np.tile([0.2, 0.5, 0.1], (H, 1)), rng.normal(size=(C, H)), rng.normal(size=C) * 0.1,
    )  # fmt: skip


def make_gallery() -> np.ndarray:
    return np.random.default_rng(12).normal(size=(3000, D))


def test_two_processes_over_http(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *sys.path])}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port_file), str(Path(__file__).parent)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start: {proc.communicate()[1][-2000:]!r}")
            time.sleep(0.1)
        transport = http_transport(f"http://127.0.0.1:{port_file.read_text()}")
        rng = np.random.default_rng(13)
        emb, mask = (
            rng.normal(size=(5, M, D)),
            np.array([[1, 1], [1, 0], [0, 1], [1, 1], [0, 1]], bool),
        )
        logits = InferenceClient().predict(transport, emb, mask)
        fused = (emb * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
        np.testing.assert_allclose(logits, make_head().logits(fused), atol=1e-4)
        q = rng.normal(size=D)
        result = SimilarityClient().search(transport, q)
        g = make_gallery()
        ref = (g / np.linalg.norm(g, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
        np.testing.assert_allclose(result.scores, ref, atol=1e-4)
        with pytest.raises(ServiceError, match=r"refused the request \(400\): not an Umbra"):
            transport(INFER_PATH, b"garbage")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_oversized_request_is_refused_before_it_is_read() -> None:
    endpoint = ServiceEndpoint(similarity=SimilarityServer(make_gallery()), max_request_bytes=1000)
    endpoint.start()
    try:
        transport = http_transport(endpoint.url)
        with pytest.raises(
            ServiceError, match=r"\(413\): request of \d+ bytes exceeds the limit of 1000"
        ):
            SimilarityClient().search(transport, np.ones(D))
        with pytest.raises(ServiceError, match=r"\(404\): no such service"):
            transport("/v1/nothing", b"")
    finally:
        endpoint.shutdown()
        endpoint.server_close()
    with pytest.raises(ServiceError, match="cannot reach the service"):
        http_transport(endpoint.url, timeout=5)(INFER_PATH, b"x")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "umbra.cli", "infer", *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    out = _cli("predict", str(tmp_path / "none"), "--url", "http://127.0.0.1:9")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "is not a folder" in out.stderr
    out = _cli("search", str(tmp_path), "--url", "http://127.0.0.1:9", "--k", "0")
    assert out.returncode == 2


def test_short_body_and_info() -> None:
    import json
    import socket
    import urllib.request

    endpoint = ServiceEndpoint(similarity=SimilarityServer(make_gallery(), max_queries=5))
    endpoint.start()
    try:
        with urllib.request.urlopen(endpoint.url + "/v1/info", timeout=30) as resp:
            info = json.loads(resp.read())
        assert info["similarity"]["dim"] == D and info["similarity"]["max_queries"] == 5
        assert "128-bit" in info["similarity"]["params"]
        host, port = endpoint.server_address[:2]
        with socket.create_connection((str(host), int(port)), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/similarity HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                + b"x" * 10
            )
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(4096):  # the server closes after an error reply
                chunks.append(chunk)
            reply = b"".join(chunks).decode()
        assert reply.startswith("HTTP/1.1 400") and "ended after 10 of 100 bytes" in reply
    finally:
        endpoint.shutdown()
        endpoint.server_close()
