"""Uploads: the exact multipart body, streamed in large pieces and resent whole on a retry."""

from __future__ import annotations

import http.client
import io
import os
from pathlib import Path
from typing import Any

import pytest

from supervisor.peers import UPLOAD_CHUNK_BYTES, Peers
from tests.unit.peers.server import (
    RETRIEVE_TEMP,
    STORE_IMAGE,
    PeerServer,
    Reply,
    json_reply,
    parse_multipart,
)


def test_store_image_streams_exact_multipart(
    server: PeerServer, peers: Peers, tmp_path: Path
) -> None:
    server.route("POST", STORE_IMAGE, json_reply({"message": "stored"}))
    data = os.urandom(2 * 1024 * 1024) + b"\r\n--tail"
    source = tmp_path / "frame.png"
    source.write_bytes(data)

    peers.blob.store_image(key="cust/obj/007.png", extension="PNG", source=source)

    (seen,) = server.seen
    assert int(seen.headers["Content-Length"]) == len(seen.body)
    assert "Transfer-Encoding" not in seen.headers
    parts = parse_multipart(seen)
    assert [(name, content) for name, _, content in parts[:3]] == [
        ("bucket", b"rendered-frames"),
        ("key", b"cust/obj/007.png"),
        ("type", b"png"),
    ]
    name, headers, content = parts[3]
    assert name == "image"
    assert 'filename="007.png"' in headers["Content-Disposition"]
    assert headers["Content-Type"] == "image/png"
    assert content == data
    assert len(parts) == 4


def test_uploads_reach_the_socket_in_large_pieces(
    server: PeerServer, peers: Peers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not the 16 KiB urllib3 reads from a file-like body: per-piece costs add up per GiB."""
    sent: list[int] = []
    send = http.client.HTTPConnection.send

    def recording_send(self: http.client.HTTPConnection, data: Any) -> None:
        sent.append(len(data))
        send(self, data)

    monkeypatch.setattr(http.client.HTTPConnection, "send", recording_send)
    data = os.urandom(3 * UPLOAD_CHUNK_BYTES)
    (tmp_path / "f").write_bytes(data)
    server.route("GET", RETRIEVE_TEMP, Reply(200, data))
    server.route("POST", STORE_IMAGE, Reply(200))

    peers.blob.store_image(key="c/o/001.png", extension="png", source=tmp_path / "f")
    peers.blob.transfer_temp_to_final(
        temp_key="t/1.png", final_key="c/o/001.png", extension="png", max_bytes=len(data)
    )

    large = [size for size in sent if size >= UPLOAD_CHUNK_BYTES // 2]
    assert sum(large) >= 2 * len(data) - 2 * UPLOAD_CHUNK_BYTES, sent


def test_store_image_from_file_object_starts_at_its_position(
    server: PeerServer, peers: Peers
) -> None:
    server.route("POST", STORE_IMAGE, Reply(503), Reply(200))
    source = io.BytesIO(b"skip" + b"payload")
    source.seek(4)
    peers.blob.store_image(key="c/o/001.exr", extension="exr", source=source)
    assert len(server.seen) == 2
    for seen in server.seen:
        name, headers, content = parse_multipart(seen)[3]
        assert (name, content) == ("image", b"payload")
        assert headers["Content-Type"] == "image/x-exr"


def test_store_image_is_retried_with_the_whole_body(
    server: PeerServer, peers: Peers, tmp_path: Path
) -> None:
    server.route("POST", STORE_IMAGE, Reply(502), Reply(504), Reply(200))
    data = os.urandom(300_000)
    (tmp_path / "f").write_bytes(data)
    peers.blob.store_image(key="c/o/001.png", extension="png", source=tmp_path / "f")
    assert len(server.seen) == 3
    assert [parse_multipart(s)[3][2] for s in server.seen] == [data, data, data]
