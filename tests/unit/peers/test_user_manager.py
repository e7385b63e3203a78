"""The User Manager's HTTP client: supervisor registration."""

from __future__ import annotations

import pytest

from supervisor.errors import InvalidInput, PeerError
from supervisor.peers import Peers
from tests.unit.peers.server import NEW_SESSION, PeerServer, Reply, json_reply


def test_register_session_exact_form(server: PeerServer, peers: Peers) -> None:
    server.route("POST", NEW_SESSION, json_reply({"message": "registered"}))
    peers.user_manager.register_session("sess-1 é", 3)
    (seen,) = server.seen
    assert seen.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert seen.body == b"user_count=3&session_supervisor_id=sess-1+%C3%A9"


def test_register_session_502_then_200_is_retried(server: PeerServer, peers: Peers) -> None:
    server.route("POST", NEW_SESSION, Reply(502), Reply(200))
    peers.user_manager.register_session("s1", 1)
    assert [s.body for s in server.seen] == [b"user_count=1&session_supervisor_id=s1"] * 2


def test_register_session_refuses_bad_count(server: PeerServer, peers: Peers) -> None:
    for count in (-1, True, "3"):
        with pytest.raises(InvalidInput):
            peers.user_manager.register_session("s1", count)  # type: ignore[arg-type]
    assert server.seen == []


def test_register_session_400_is_permanent(server: PeerServer, peers: Peers) -> None:
    server.route("POST", NEW_SESSION, Reply(400))
    with pytest.raises(PeerError) as info:
        peers.user_manager.register_session("s1", 1)
    assert (info.value.peer, info.value.operation, info.value.transient) == (
        "user-manager",
        "new-session",
        False,
    )
