"""The test peer server and a `Peers` bundle pointed at it."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from supervisor.peers import Peers
from tests.unit.peers.server import FAST, PeerServer, make_settings


@pytest.fixture
def server() -> Iterator[PeerServer]:
    srv = PeerServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.005})
    thread.start()
    try:
        yield srv
    finally:
        srv.stop.set()
        srv.shutdown()
        thread.join(5)
        srv.server_close()


@pytest.fixture
def peers(server: PeerServer) -> Iterator[Peers]:
    with Peers.from_settings(make_settings(server.url), policy=FAST) as bundle:
        yield bundle
