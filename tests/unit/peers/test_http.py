"""The shared HTTP machinery: session, retries, error mapping, transport failures."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor.errors import PeerError
from supervisor.peers import BlobClient, Peers, make_session
from tests.unit.peers.server import (
    BLEND_NAME,
    FAST,
    RETRIES,
    RETRIEVE_TEMP,
    SEND,
    PeerServer,
    Reply,
    closed_port,
    json_reply,
    make_settings,
)


def test_peers_are_reached_directly_whatever_the_proxy_environment(
    server: PeerServer, peers: Peers, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{closed_port()}")
    server.route(
        "GET",
        BLEND_NAME + "obj",
        json_reply({"blendFilePath": "cust/obj/s.blend", "blendFileHash": "h"}),
    )

    ref = peers.catalog.get_blend_file("obj", "cust")

    assert ref.path == "cust/obj/s.blend"
    assert len(server.seen) == 1


def test_persistent_500_is_a_transient_peer_error(
    server: PeerServer, peers: Peers, caplog: pytest.LogCaptureFixture
) -> None:
    server.route("GET", BLEND_NAME + "obj", json_reply({"message": "db down"}, 500))
    with (
        caplog.at_level(logging.WARNING, logger="supervisor.peers"),
        pytest.raises(PeerError) as info,
    ):
        peers.catalog.get_blend_file("obj", "cust")
    err = info.value
    assert (err.peer, err.operation, err.status, err.transient) == (
        "catalog",
        "get-blend-file-name",
        500,
        True,
    )
    assert "db down" in err.detail
    assert len(server.seen) == RETRIES + 1
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert (record.peer, record.peer_operation, record.peer_status) == (
        "catalog",
        "get-blend-file-name",
        500,
    )


def test_connection_refused_is_transient(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with Peers.from_settings(make_settings(url), policy=FAST) as bundle:
        calls: list[tuple[str, Callable[[], object]]] = [
            ("catalog", lambda: bundle.catalog.get_blend_file("o", "c")),
            ("blob-service", lambda: bundle.blob.download_temp("t/1", tmp_path / "f", max_bytes=1)),
            ("user-service", lambda: bundle.users.send("u1", "stop-work", {})),
            ("user-manager", lambda: bundle.user_manager.register_session("s1", 2)),
        ]
        for peer, call in calls:
            with pytest.raises(PeerError) as info:
                call()
            err = info.value
            assert (err.peer, err.status, err.transient) == (peer, None, True)
            assert "connection failed" in err.detail
            assert "Connection refused" in err.detail


def test_read_timeout_on_get_is_retried_then_transient(server: PeerServer) -> None:
    server.route("GET", BLEND_NAME + "obj", Reply(200, b"{}", delay=2.0))
    with Peers.from_settings(make_settings(server.url, timeout=0.2), policy=FAST) as bundle:
        started = time.monotonic()
        with pytest.raises(PeerError) as info:
            bundle.catalog.get_blend_file("obj", "cust")
        elapsed = time.monotonic() - started
    assert info.value.transient is True
    assert info.value.status is None
    assert "timed out" in info.value.detail
    assert len(server.seen) == RETRIES + 1
    assert elapsed < 1.9


def test_read_timeout_on_message_is_not_retried(server: PeerServer) -> None:
    server.route("POST", SEND, Reply(200, delay=2.0))
    with (
        Peers.from_settings(make_settings(server.url, timeout=0.2), policy=FAST) as bundle,
        pytest.raises(PeerError) as info,
    ):
        bundle.users.send("u1", "stop-work", {})
    assert (info.value.peer, info.value.transient) == ("user-service", True)
    assert "timed out" in info.value.detail
    assert len(server.seen) == 1


def test_error_detail_is_clipped(server: PeerServer, peers: Peers) -> None:
    server.route("POST", SEND, Reply(400, b"secret-ish\n" + b"A" * 100_000))
    with pytest.raises(PeerError) as info:
        peers.users.send("u1", "stop-work", {})
    assert len(info.value.detail) <= 200
    assert "\n" not in info.value.detail


def test_redirects_are_not_followed(server: PeerServer, peers: Peers, tmp_path: Path) -> None:
    server.route("GET", RETRIEVE_TEMP, Reply(302, headers={"Location": server.url + "/elsewhere"}))
    with pytest.raises(PeerError) as info:
        peers.blob.download_temp("t/1", tmp_path / "f", max_bytes=10)
    assert (info.value.status, info.value.transient) == (302, False)
    assert [s.path for s in server.seen] == [RETRIEVE_TEMP]


def test_session_keeps_no_cookies(server: PeerServer, peers: Peers) -> None:
    server.route("POST", SEND, Reply(200, headers={"Set-Cookie": "sid=abc; Path=/"}))
    peers.users.send("u1", "stop-work", {})
    peers.users.send("u1", "stop-work", {})
    assert ["Cookie" in s.headers for s in server.seen] == [False, False]


def test_client_on_its_own_session(server: PeerServer, tmp_path: Path) -> None:
    server.route("GET", RETRIEVE_TEMP, Reply(503), Reply(200, b"ok"))
    session = make_session(FAST)
    client = BlobClient(server.url, session, timeout=(1.0, 1.0), policy=FAST)
    try:
        assert client.download_temp("t/1", tmp_path / "f", max_bytes=2) == 2
    finally:
        client.close()
    assert len(server.seen) == 2
