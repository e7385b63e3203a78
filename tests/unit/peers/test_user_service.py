"""The User Service client: plain and acknowledged messages to one render node."""

from __future__ import annotations

import pytest

from supervisor.errors import InvalidInput, PeerError
from supervisor.peers import Peers
from tests.unit.peers.server import (
    FAST,
    SEND,
    SEND_ACK,
    SEND_ACK_MISSPELT,
    PeerServer,
    Reply,
    closed_port,
    json_reply,
    make_settings,
)


def test_send_exact_json(server: PeerServer, peers: Peers) -> None:
    server.route("POST", SEND, Reply(200))
    data = {"blend_file_hash": "h", "frame_list": [1, 2, 3]}
    peers.users.send("user-1", "start-rendering", data)
    (seen,) = server.seen
    assert seen.headers["Content-Type"] == "application/json"
    assert list(seen.json().items()) == [
        ("user_id", "user-1"),
        ("topic", "start-rendering"),
        ("data", data),
    ]


@pytest.mark.parametrize(("status", "transient"), [(404, False), (503, True), (429, True)])
def test_send_failures(server: PeerServer, peers: Peers, status: int, transient: bool) -> None:
    server.route("POST", SEND, Reply(status), Reply(200))
    with pytest.raises(PeerError) as info:
        peers.users.send("u1", "stop-work", {})
    assert (info.value.peer, info.value.operation, info.value.status, info.value.transient) == (
        "user-service",
        "send-msg-to-user",
        status,
        transient,
    )
    assert len(server.seen) == 1


def test_send_refuses_unserialisable_data(server: PeerServer, peers: Peers) -> None:
    with pytest.raises(InvalidInput):
        peers.users.send("u1", "start-rendering", {"frames": {1, 2}})
    with pytest.raises(InvalidInput):
        peers.users.send("u1", "start-rendering", {"x": float("nan")})
    with pytest.raises(InvalidInput):
        peers.users.send("", "start-rendering", {})
    assert server.seen == []


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (json_reply({"acknowledged": True}), True),
        (json_reply({"acknowledged": False}), False),
        (json_reply({"acknowledged": "true"}), True),
        (json_reply({"acknowledgment": True}), True),
        (json_reply({"ack": 1}), True),
        (json_reply({"success": True, "message": "User acknowledged"}), True),
        (json_reply({"success": False, "message": "User did not acknowledge"}), False),
        (json_reply({"acknowledged": False, "status": "ok"}), False),
        (json_reply({"status": "ok"}), True),
        (json_reply({"status": "error"}), False),
        (json_reply({"message": "sent", "data": {"ack": True}}), True),
        (json_reply({"message": "sent", "data": "no such frame"}), False),
        (json_reply({"message": "sent"}), False),
        (json_reply(True), True),
        (json_reply(False), False),
        (json_reply([True]), False),
        (Reply(200, b"true"), True),
        (Reply(200, b"OK"), True),
        (Reply(200, b"nope"), False),
        (Reply(200), False),
        (Reply(204), False),
        (json_reply({"message": "User not connected"}, 404), False),
        (Reply(400), False),
        (Reply(408), None),
        (Reply(429), None),
        (Reply(500), None),
        (Reply(503), None),
    ],
)
def test_send_with_ack(
    server: PeerServer, peers: Peers, reply: Reply, expected: bool | None
) -> None:
    server.route("POST", SEND_ACK, reply)
    data = {"frame-number": 7, "blend-file-hash": "h"}
    if expected is None:
        with pytest.raises(PeerError) as info:
            peers.users.send_with_ack("u1", "retrieve-frame", data)
        assert (info.value.operation, info.value.transient) == (
            "send-msg-to-user-with-acknowledgement",
            True,
        )
    else:
        assert peers.users.send_with_ack("u1", "retrieve-frame", data) is expected
    seen = server.seen[0]
    assert seen.path == SEND_ACK
    assert list(seen.json().items()) == [
        ("user_id", "u1"),
        ("topic", "retrieve-frame"),
        ("data", data),
    ]
    if reply.status == 404:
        assert [s.path for s in server.seen] == [SEND_ACK, SEND_ACK_MISSPELT]
    else:
        assert len(server.seen) == 1


def test_send_with_ack_falls_back_to_the_other_spelling(server: PeerServer, peers: Peers) -> None:
    """A deployment whose User Service has the route spelled without the e still works."""
    server.route("POST", SEND_ACK, json_reply({"detail": "Not Found"}, 404))
    server.route("POST", SEND_ACK_MISSPELT, json_reply(True))
    data = {"frame-number": 7, "blend-file-hash": ""}
    assert peers.users.send_with_ack("u1", "retrieve-frame", data) is True
    assert [s.path for s in server.seen] == [SEND_ACK, SEND_ACK_MISSPELT]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (json_reply(False), True),
        (json_reply(True), True),
        (Reply(500), False),
        (Reply(200, b"true", delay=2.0), False),
    ],
    ids=["answers-no", "answers-yes", "cannot-reach-the-node", "node-never-answers"],
)
def test_answers_tells_a_live_node_from_one_the_user_service_cannot_reach(
    server: PeerServer, reply: Reply, expected: bool
) -> None:
    server.route("POST", SEND_ACK, reply)
    data = {"frame-number": 3, "blend-file-hash": ""}
    with Peers.from_settings(make_settings(server.url, timeout=0.2), policy=FAST) as bundle:
        assert bundle.users.answers("u1", "retrieve-frame", data) is expected


def test_answers_knows_nothing_when_the_user_service_is_down() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with Peers.from_settings(make_settings(url, timeout=0.2), policy=FAST) as bundle:
        assert bundle.users.answers("u1", "retrieve-frame", {"frame-number": 3}) is None
