"""Hostile HTTP against the served stack: the Procfile's `web` process, started as a host
starts it, on a throwaway database and a private Redis (tests/stack.py).

What the Flask app decides on its own (nested JSON, redirects, chunked bodies) is tested
in-process in tests/unit/app/; here are the same probes through gunicorn, and those only
gunicorn answers: connections that send their headers slowly, and requests it refuses before
the app sees them.

The slow-header test doubles as the measurement of docs/RELIABILITY.md ("Hostile traffic"):
SLOW_HEADER_CONNECTIONS sets how many connections (100), WEB_EXTRA_ARGS adds gunicorn options
after the Procfile's (the last one given wins), e.g. to compare with the old worker:

    WEB_EXTRA_ARGS="--worker-class gthread" .venv/bin/python -m pytest -s \\
        tests/e2e/test_hostile_http.py -k slowly
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from tests.processes import ProcfileProcess
from tests.stack import PREFIX, Stack, platform

SLOW_CONNECTIONS = int(os.environ.get("SLOW_HEADER_CONNECTIONS", "100"))
WEB_EXTRA_ARGS = os.environ.get("WEB_EXTRA_ARGS", "")
SLOW_HEADER_EVERY = 5.0
STATUS_DEADLINE = 1.0
CHUNKED_FORM_BYTES = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with platform(tmp_path_factory.mktemp("hostile"), embedded_broker=True) as running:
        web = ProcfileProcess("web", running.env, running.log_dir)
        if WEB_EXTRA_ARGS:
            web.command = f"{web.command} {WEB_EXTRA_ARGS}"
        running.processes["web"] = web
        running.start("web")
        yield running


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict[str, object]:
        return json.loads(self.body)


def port(stack: Stack) -> int:
    return int(stack.env["PORT"])


def exchange(stack: Stack, raw: bytes, timeout: float = 10.0) -> Answer:
    """Send `raw` as it is and read one HTTP answer."""
    with socket.create_connection(("127.0.0.1", port(stack)), timeout=timeout) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return Answer(response.status, response.msg, response.read())


def assert_contract_error(answer: Answer, status: int) -> None:
    """The contract's error shape (app/errors.py): a JSON object with a `message`."""
    assert answer.status == status, answer.body[:300]
    assert answer.headers.get_content_type() == "application/json", answer.body[:300]
    body = answer.json()
    assert isinstance(body.get("message"), str), body
    assert body["message"], body
    assert set(body) <= {"message", "details"}, body


class SlowHeaders:
    """Connections that each send a request line at once, then one header line every
    `every` seconds, never finishing their headers (a slowloris)."""

    def __init__(self, address: tuple[str, int], count: int, every: float) -> None:
        self.address = address
        self.count = count
        self.every = every
        self.sockets: list[socket.socket] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._drip, daemon=True)

    def __enter__(self) -> SlowHeaders:
        request_line = f"GET {PREFIX}/get-workload-status?customer_id=slow HTTP/1.1\r\n"
        for _ in range(self.count):
            sock = socket.create_connection(self.address, timeout=5)
            sock.sendall(request_line.encode() + b"Host: 127.0.0.1\r\n")
            self.sockets.append(sock)
        self.thread.start()
        return self

    def _drip(self) -> None:
        line = 0
        while not self.stopped.wait(self.every):
            line += 1
            for sock in self.sockets:
                with contextlib.suppress(OSError):  # the server gave up on it
                    sock.sendall(f"X-Slow-{line}: {line}\r\n".encode())

    def __exit__(self, *_exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)
        for sock in self.sockets:
            sock.close()


def timed_status(stack: Stack) -> float:
    """Seconds a status request took to answer; the 5 s timeout if it did not."""
    started = time.monotonic()
    try:
        response = requests.get(
            f"{stack.api}/get-workload-status", params={"customer_id": "probe"}, timeout=5
        )
    except requests.RequestException:
        return 5.0
    assert response.status_code in {200, 404}, response.text
    return time.monotonic() - started


def test_status_answers_at_once_while_100_connections_send_headers_slowly(stack: Stack) -> None:
    with SlowHeaders(("127.0.0.1", port(stack)), SLOW_CONNECTIONS, SLOW_HEADER_EVERY):
        # Past the first drip, and past gunicorn's 5 s wait for a connection's first bytes.
        time.sleep(SLOW_HEADER_EVERY + 1)
        took = []
        for _ in range(12):
            took.append(timed_status(stack))
            time.sleep(1.0)
    print(
        f"\n{SLOW_CONNECTIONS} slow connections, web: {stack.processes['web'].command}\n"
        f"status: n={len(took)} median={statistics.median(took) * 1000:.0f} ms "
        f"max={max(took) * 1000:.0f} ms, >= 1 s: {sum(t >= STATUS_DEADLINE for t in took)}"
    )
    slow = [round(seconds, 2) for seconds in took if seconds >= STATUS_DEADLINE]
    assert not slow, f"{len(slow)} of {len(took)} status requests took >= 1 s: {slow}"


def test_a_chunked_form_larger_than_the_limit_gets_413(stack: Stack) -> None:
    head = (
        f"POST {PREFIX}/start-workload HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"customer_id=" + b"a" * (64 * 1024 - 12)
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    with socket.create_connection(("127.0.0.1", port(stack)), timeout=30) as sock:
        sock.sendall(head)

        def send_body() -> None:
            try:
                for _ in range(CHUNKED_FORM_BYTES // len(chunk)):
                    sock.sendall(framed)
                sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the server answered and closed before the end of the body

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        response = http.client.HTTPResponse(sock)
        response.begin()
        answer = Answer(response.status, response.msg, response.read())
        sender.join(timeout=30)
    assert_contract_error(answer, 413)


def test_a_redirect_never_names_the_host_header(stack: Stack) -> None:
    answer = exchange(
        stack,
        b"GET /api//session-supervisor-service//get-workload-status?customer_id=c HTTP/1.1\r\n"
        b"Host: evil.example\r\nConnection: close\r\n\r\n",
    )
    assert answer.status == 308, answer.body[:300]
    assert answer.headers["Location"] == f"{PREFIX}/get-workload-status?customer_id=c"


GUNICORN_REFUSALS = {
    "bad Content-Length": (
        f"POST {PREFIX}/ HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n".encode(),
        400,
        "Invalid Content-Length value",
    ),
    "over-long URL": (
        f"GET {PREFIX}/get-workload-status?customer_id={'a' * 9000} HTTP/1.1\r\n"
        "Host: x\r\n\r\n".encode(),
        414,
        "Request line is too large",
    ),
    "too many headers": (
        f"GET {PREFIX}/ HTTP/1.1\r\nHost: x\r\n".encode()
        + b"".join(f"X-H{n}: {n}\r\n".encode() for n in range(150))
        + b"\r\n",
        431,
        "Too many headers",
    ),
    "an over-long header": (
        f"GET {PREFIX}/ HTTP/1.1\r\nHost: x\r\nX-Big: {'b' * 9000}\r\n\r\n".encode(),
        431,
        "Request header field is too large",
    ),
}


@pytest.mark.parametrize("probe", list(GUNICORN_REFUSALS))
def test_requests_gunicorn_refuses_get_their_status_and_a_one_line_reason(
    stack: Stack, probe: str
) -> None:
    """gunicorn answers these before the app is called, and offers no setting for the body:
    not the contract's JSON, but no HTML page either (docs/RELIABILITY.md, "Hostile
    traffic", says why)."""
    raw, status, reason = GUNICORN_REFUSALS[probe]
    answer = exchange(stack, raw)
    assert answer.status == status, answer.body[:300]
    assert answer.headers.get_content_type() == "text/plain", answer.body[:300]
    assert answer.body.decode() == reason
