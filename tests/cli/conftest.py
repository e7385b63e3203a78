"""Fixtures of the CLI tests: the canned API (tests/cli/helpers.py) and a helper to run the
CLI against it."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

from supervisor_cli.__main__ import main
from tests.cli.helpers import FakeApi, Result


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own API URL, token or proxy must not leak into these tests."""
    for name in (
        "SESSION_SUPERVISOR_API",
        "ADMIN_TOKEN",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm")


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
    assert fake.faults() == [], "the fake API failed while answering"


@pytest.fixture
def cli(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run `session-supervisor --api <fake> ARGS...` in-process; return code and output."""

    def run(*args: str) -> Result:
        code = main(["--api", api.url, *args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def closed_port_url() -> str:
    """A URL on which nothing listens: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
