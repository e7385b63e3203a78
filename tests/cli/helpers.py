"""A canned Session Supervisor API on a real 127.0.0.1 port, and what the CLI gave back."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from supervisor_cli.client import PREFIX


@dataclass
class Seen:
    """One request as the server got it."""

    method: str
    path: str  # below the API prefix
    full_path: str
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]


# A reply is (status, body): a dict or list goes out as JSON, a str as text/html.
Reply = tuple[int, Any]
Responder = Callable[[Seen], Reply]


class _Server(ThreadingHTTPServer):
    """Keeps what went wrong while answering in `errors` instead of printing it: the
    server's threads share stderr with the CLI under test, whose output the tests read (a
    client hanging up before a body was written printed a BrokenPipeError traceback there)."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.errors: list[BaseException] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if error is not None:
            self.errors.append(error)


class FakeApi:
    """Routes under the API prefix answered from `replies`; every request kept in `seen`."""

    def __init__(self) -> None:
        self.replies: dict[tuple[str, str], Responder] = {}
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.server = _Server(self._handler_class())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def reply(self, method: str, path: str, status: int, body: Any) -> None:
        self.replies[(method, path)] = lambda _seen: (status, body)

    def respond(self, method: str, path: str, responder: Responder) -> None:
        self.replies[(method, path)] = responder

    def only(self) -> Seen:
        assert len(self.seen) == 1, self.seen
        return self.seen[0]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def faults(self) -> list[BaseException]:
        """What failed while answering, but a client that hung up first (the CLI may)."""
        return [e for e in self.server.errors if not isinstance(e, ConnectionError)]

    def _answer(self, seen: Seen) -> Reply:
        with self.lock:
            self.seen.append(seen)
            responder = self.replies.get((seen.method, seen.path))
        if responder is None or not seen.full_path.startswith(PREFIX):
            return 404, {"message": "Not Found", "details": f"no canned reply for {seen.path}"}
        return responder(seen)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode() if length else ""
                path = parts.path
                seen = Seen(
                    method=self.command,
                    path=path.removeprefix(PREFIX),
                    full_path=path,
                    query={k: v[0] for k, v in parse_qs(parts.query).items()},
                    form={k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()},
                    headers={k.lower(): v for k, v in self.headers.items()},
                )
                status, body = api._answer(seen)
                if isinstance(body, str):
                    payload, kind = body.encode(), "text/html"
                else:
                    payload, kind = json.dumps(body).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _handle
            do_POST = _handle

            def log_message(self, format: str, *args: Any) -> None:
                """Keep the test output quiet."""

        return Handler


@dataclass
class Result:
    code: int
    out: str
    err: str
