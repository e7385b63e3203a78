"""The schemathesis CLI, every check, against the API served over HTTP.

`create_app` runs in a local threaded server (on the suite's throwaway Postgres, with the
simulator's peers); the CLI reads the served document and sends its examples, coverage cases
and random requests, valid and invalid, over TCP. Any failure of any check (a 5xx, an
undocumented status, content type or body, invalid input accepted, valid input refused, a
wrong token accepted), or a warning that the document and the server disagree, fails the test
with the CLI's report.

The CLI connects from 127.0.0.1, so here that is not a privileged address: the admin routes
ask it for the token, as they ask any other caller. The catalog knows every object the
document allows, and a started workload is stopped at once (tests/hostile/schemathesis_hooks.py),
so every valid start-workload starts one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.serving import make_server

from app.openapi import PREFIX
from supervisor.config import Settings
from tests.helpers import ROOT, make_settings
from tests.hostile.catalog import know_every_object
from tests.peers import Peers

# The server's threads need a database of their own: the API commits for real here.
pytestmark = [pytest.mark.integration, pytest.mark.commits]

HERE = Path(__file__).parent
CONFIG = HERE / "schemathesis.toml"
HOOKS = HERE / "schemathesis_hooks.py"
ADMIN_TOKEN = "hostile-admin-token"  # as in schemathesis.toml
MAX_EXAMPLES = 25


@pytest.fixture(name="settings")
def stranger_settings(database_url: str, redis_url: str, peers: Peers) -> Settings:
    return make_settings(
        database_url,
        redis_url,
        peers.base_url,
        admin_token=ADMIN_TOKEN,
        privileged_ips="192.0.2.1/32",
    )


@pytest.fixture
def served(app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="api-under-test", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def schemathesis_run(document_url: str, *extra: str) -> list[str]:
    """The command line this test runs (printed by the failure message, to rerun by hand)."""
    cli = str(Path(sys.executable).with_name("schemathesis"))
    return [
        cli,
        "--config-file",
        str(CONFIG),
        "run",
        document_url,
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--workers",
        "1",
        "--no-shrink",
        *extra,
    ]


def test_schemathesis_finds_nothing_against_the_served_api(served: str, peers: Peers) -> None:
    know_every_object(peers)
    command = schemathesis_run(f"{served}{PREFIX}/openapi.json")
    result = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS), "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    report = result.stdout[-12_000:] + result.stderr[-4_000:]
    assert result.returncode == 0, f"{' '.join(command)}\n{report}"
