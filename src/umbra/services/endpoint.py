"""The network transport of the encrypted services: a plain HTTP/1.1 endpoint from the
standard library, and the client's transport to it.

Why plain HTTP: a request is one self-contained body (context + ciphertexts, see
`umbra.services.protocol`) and a reply is one body; there is no round state to keep, so
no session, no streaming and no Flower run are needed, and any HTTP client can speak it.
The payloads are ciphertexts under the client's key, so the channel needs no secrecy for
them; in a deployment put the endpoint behind TLS with client authentication anyway
(query budgets should count authenticated organisations, and TLS hides the traffic
pattern's metadata). Tests bind to 127.0.0.1 on a free port.

``POST /v1/infer`` and ``POST /v1/similarity`` take a request body and answer 200 with the
reply body; ``GET /v1/info`` lists the public facts of each service. A body over the
configured size is refused (413; read and discarded in chunks, never stored, so the client
sees the refusal rather than a broken pipe), a bad request is 400 and an exhausted
query budget 429, each with a one-line text message; internal failures are 500 with no
detail (details could carry request data).
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from umbra.services.errors import ServiceError
from umbra.services.inference import InferenceServer
from umbra.services.protocol import (
    DEFAULT_MAX_REQUEST_BYTES,
    INFER_PATH,
    SIMILARITY_PATH,
    Transport,
)
from umbra.services.query_budget import QueryBudgetExhausted
from umbra.services.similarity import SimilarityServer

__all__ = ["ServiceEndpoint", "http_transport", "local_transport"]

log = logging.getLogger(__name__)

#: Most bytes of an oversized body read (and dropped) before answering 413; beyond it the
#: connection is just closed.
_MAX_DISCARD = 1 << 30
#: Seconds a request's socket may stay silent before the server drops it.
_READ_TIMEOUT_S = 120.0
#: Longest error message a client shows from a server reply.
_MAX_ERROR_CHARS = 400


class _Handler(BaseHTTPRequestHandler):
    server: ServiceEndpoint
    protocol_version = "HTTP/1.1"
    #: seconds a socket read may stall (a client that announces more bytes than it sends)
    timeout = _READ_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _reply(self, code: int, body: bytes, kind: str = "application/octet-stream") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, code: int, message: str) -> None:
        self.close_connection = True
        self._reply(code, message.encode("utf-8", "replace"), "text/plain; charset=utf-8")

    def _discard(self, length: int) -> None:
        """Read and drop an oversized body (up to ``_MAX_DISCARD`` bytes) without keeping it."""
        left = min(max(length, 0), _MAX_DISCARD)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)

    def do_GET(self) -> None:
        if self.path != "/v1/info":
            self._error(404, f"no such path {self.path[:80]!r}")
            return
        self._reply(200, json.dumps(self.server.info()).encode(), "application/json")

    def do_POST(self) -> None:
        handler = self.server.routes.get(self.path)
        if handler is None:
            self._error(404, f"no such service {self.path[:80]!r}")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(411, "a request needs a Content-Length")
            return
        if length < 0 or length > self.server.max_request_bytes:
            self._discard(length)
            self._error(
                413, f"request of {length} bytes exceeds the limit of "
                f"{self.server.max_request_bytes} bytes",
            )  # fmt: skip
            return
        try:
            body = self.rfile.read(length)
        except OSError:  # the client stalled or went away: nothing to answer
            self.close_connection = True
            return
        if len(body) != length:
            self._error(400, f"request body ended after {len(body)} of {length} bytes")
            return
        try:
            reply = handler(body, str(self.client_address[0]))
        except QueryBudgetExhausted as err:
            self._error(429, str(err))
        except ServiceError as err:
            self._error(400, str(err))
        except Exception as err:  # never echo internals: they could carry request data
            log.error("service %s failed: %s", self.path, type(err).__name__)
            self._error(500, "internal error")
        else:
            self._reply(200, reply)


class ServiceEndpoint(ThreadingHTTPServer):
    """An HTTP server for an `InferenceServer` and/or a `SimilarityServer`.

    ``port=0`` picks a free port (read it from ``server_address``). Serve with
    ``serve_forever()`` (or `start` for a background thread) and stop with ``shutdown()``.
    """

    daemon_threads = True

    def __init__(
        self,
        *,
        inference: InferenceServer | None = None,
        similarity: SimilarityServer | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        if inference is None and similarity is None:
            raise ValueError("an endpoint needs an inference or a similarity service")
        if max_request_bytes < 1:
            raise ValueError(f"max_request_bytes must be >= 1, got {max_request_bytes}")
        self.inference = inference
        self.similarity = similarity
        self.max_request_bytes = max_request_bytes
        #: path -> handler(body, peer address)
        self.routes: dict[str, Callable[[bytes, str], bytes]] = {}
        if inference is not None:
            self.routes[INFER_PATH] = lambda body, peer: inference.handle(body)
        if similarity is not None:
            self.routes[SIMILARITY_PATH] = lambda body, peer: similarity.handle(body, peer=peer)
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line per broken connection (the default prints a traceback)."""
        log.warning("connection from %s failed", client_address[0] if client_address else "?")

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.inference is not None:
            out["infer"] = self.inference.describe()
        if self.similarity is not None:
            out["similarity"] = self.similarity.describe()
        return out

    def start(self) -> threading.Thread:
        """Serve on a daemon thread (in-process use and tests)."""
        thread = threading.Thread(target=self.serve_forever, daemon=True)
        thread.start()
        return thread


def http_transport(url: str, *, timeout: float = 600.0) -> Transport:
    """POST requests to the endpoint at ``url``; a refusal becomes a one-line ServiceError."""
    base = url.rstrip("/")

    def send(path: str, body: bytes) -> bytes:
        req = urllib.request.Request(
            base + path, data=body, method="POST",
            headers={"Content-Type": "application/octet-stream"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return bytes(resp.read())
        except urllib.error.HTTPError as err:
            text = err.read().decode("utf-8", "replace").strip().splitlines()
            first = text[0][:_MAX_ERROR_CHARS] if text else err.reason
            raise ServiceError(f"the server refused the request ({err.code}): {first}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ServiceError(f"cannot reach the service at {base}: {reason}") from None

    return send


def local_transport(
    *, inference: InferenceServer | None = None, similarity: SimilarityServer | None = None
) -> Transport:
    """Call the servers in-process (benchmarks, tests): same bytes, no network."""
    routes: dict[str, Callable[[bytes], bytes]] = {}
    if inference is not None:
        routes[INFER_PATH] = inference.handle
    if similarity is not None:
        routes[SIMILARITY_PATH] = similarity.handle

    def send(path: str, body: bytes) -> bytes:
        if path not in routes:
            raise ServiceError(f"no such service {path!r}")
        return routes[path](body)

    return send
