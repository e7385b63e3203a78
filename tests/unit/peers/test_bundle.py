"""`Peers`, the bundle of the four clients built from the settings."""

from __future__ import annotations

from pathlib import Path

from supervisor.peers import Peers
from tests.unit.peers.server import (
    DELETE_TEMP,
    RETRIEVE_TEMP,
    SEND,
    PeerServer,
    Reply,
    make_settings,
)


def test_bundle_shares_one_session_and_reuses_connections(
    server: PeerServer, peers: Peers, tmp_path: Path
) -> None:
    server.route("POST", SEND, Reply(200))
    server.route("GET", RETRIEVE_TEMP, Reply(200, b"x"))
    peers.users.send("u1", "stop-work", {})
    peers.blob.download_temp("t/1", tmp_path / "f", max_bytes=1)
    peers.users.send("u1", "stop-work", {})
    assert len({s.port for s in server.seen}) == 1
    sessions = {
        id(c._session) for c in (peers.catalog, peers.blob, peers.users, peers.user_manager)
    }
    assert len(sessions) == 1


def test_bundle_uses_settings_urls(server: PeerServer) -> None:
    settings = make_settings(server.url)
    assert settings.blob_service == server.url
    with Peers.from_settings(settings) as bundle:
        server.route("DELETE", DELETE_TEMP, Reply(204))
        bundle.blob.delete_temp("t/1")
    assert server.seen[0].headers["User-Agent"] == "session-supervisor"
