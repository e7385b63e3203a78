"""A real HTTP server on 127.0.0.1 standing in for every peer, so the peer clients' tests
check what goes over the wire."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from supervisor.config import Settings
from supervisor.peers import RetryPolicy

CATALOG = "/api/mongodb-service/blender-objects"
BLEND_NAME = CATALOG + "/get-blend-file-name/"
ADD_IMAGE = CATALOG + "/add-rendered-image"
RETRIEVE_BLEND = "/api/blob-service/retrieve-blend"
RETRIEVE_TEMP = "/api/blob-service/retrieve-temp"
DELETE_TEMP = "/api/blob-service/delete-temp"
STORE_IMAGE = "/api/blob-service/store-image"
SEND = "/api/user-service/user/send-msg-to-user"
SEND_ACK = "/api/user-service/user/send-msg-to-user-with-acknowledgement"
SEND_ACK_MISSPELT = "/api/user-service/user/send-msg-to-user-with-acknowledgment"
NEW_SESSION = "/api/user-manager/session-supervisor/new-session"

RETRIES = 2
FAST = RetryPolicy(retries=RETRIES, backoff_factor=0.001, backoff_max=0.01, backoff_jitter=0.001)


# ---------------------------------------------------------------- test server


@dataclass
class Seen:
    """One request as it arrived on the wire."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    port: int
    body: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, list[str]]:
        return parse_qs(self.query, keep_blank_values=True, strict_parsing=bool(self.query))

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    def __call__(self, handler: Handler, seen: Seen) -> None:
        if self.delay:
            handler.server.stop.wait(self.delay)
        handler.send_response(self.status)
        for name, value in self.headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(self.body)))
        handler.end_headers()
        handler.wfile.write(self.body)


def json_reply(payload: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})


Responder = Callable[["Handler", Seen], None]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: PeerServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        path, _, query = self.path.partition("?")
        responder = self.server.next_responder(self.command, path)
        seen = Seen(self.command, path, query, dict(self.headers.items()), self.client_address[1])
        if not getattr(responder, "reads_body", False):
            seen.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append(seen)
        responder(self, seen)


class PeerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes: dict[tuple[str, str], list[Responder]] = {}
        self.seen: list[Seen] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def route(self, method: str, path: str, *responders: Responder) -> None:
        """Answer with each responder in turn; the last one repeats."""
        self.routes[(method, path)] = list(responders)

    def next_responder(self, method: str, path: str) -> Responder:
        with self.lock:
            queue = self.routes.get((method, path))
            if not queue:
                return Reply(418, b"no route")
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up mid-response is expected here; stay quiet."""

    def calls(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path == path]


def stream_without_length(chunks: list[bytes]) -> Responder:
    def respond(handler: Handler, seen: Seen) -> None:
        handler.send_response(200)
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        for chunk in chunks:
            handler.wfile.write(chunk)
            handler.wfile.flush()

    return respond


# ---------------------------------------------------------------- helpers


def make_settings(url: str, timeout: float = 5.0) -> Settings:
    return Settings(
        _env_file=None,
        mongodb_service=url,
        blob_service=url + "/",
        user_service=url,
        user_manager_service=url,
        peer_timeout_seconds=timeout,
        peer_retries=RETRIES,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_multipart(seen: Seen) -> list[tuple[str, dict[str, str], bytes]]:
    """(name, part headers, content) for each part, straight from the raw body."""
    content_type = seen.headers["Content-Type"]
    prefix = "multipart/form-data; boundary="
    assert content_type.startswith(prefix)
    delimiter = b"--" + content_type[len(prefix) :].encode()
    body = seen.body
    assert body.startswith(delimiter + b"\r\n")
    assert body.endswith(b"\r\n" + delimiter + b"--\r\n")
    inner = body[len(delimiter) + 2 : -(len(delimiter) + 6)]
    parts = []
    for raw in inner.split(b"\r\n" + delimiter + b"\r\n"):
        head, _, content = raw.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        disposition = headers["Content-Disposition"]
        name = disposition.split('name="', 1)[1].split('"', 1)[0]
        parts.append((name, headers, content))
    return parts
