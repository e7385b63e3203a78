"""The peer clients against a real HTTP server on 127.0.0.1, so the wire is what is checked."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import logging
import os
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from supervisor.config import Settings
from supervisor.errors import InvalidInput, ObjectNotRenderable, PeerError
from supervisor.keys import final_frame_key, validate_blob_key, validate_extension
from supervisor.peers import (
    UPLOAD_CHUNK_BYTES,
    BlendFileRef,
    BlobClient,
    Peers,
    RetryPolicy,
    make_session,
)

CATALOG = "/api/mongodb-service/blender-objects"
BLEND_NAME = CATALOG + "/get-blend-file-name/"
ADD_IMAGE = CATALOG + "/add-rendered-image"
RETRIEVE_BLEND = "/api/blob-service/retrieve-blend"
RETRIEVE_TEMP = "/api/blob-service/retrieve-temp"
DELETE_TEMP = "/api/blob-service/delete-temp"
STORE_IMAGE = "/api/blob-service/store-image"
SEND = "/api/user-service/user/send-msg-to-user"
SEND_ACK = "/api/user-service/user/send-msg-to-user-with-acknowledgement"
SEND_ACK_MISSPELT = "/api/user-service/user/send-msg-to-user-with-acknowledgment"
NEW_SESSION = "/api/user-manager/session-supervisor/new-session"

RETRIES = 2
FAST = RetryPolicy(retries=RETRIES, backoff_factor=0.001, backoff_max=0.01, backoff_jitter=0.001)


# ---------------------------------------------------------------- test server


@dataclass
class Seen:
    """One request as it arrived on the wire."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    port: int
    body: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, list[str]]:
        return parse_qs(self.query, keep_blank_values=True, strict_parsing=bool(self.query))

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    def __call__(self, handler: _Handler, seen: Seen) -> None:
        if self.delay:
            handler.server.stop.wait(self.delay)
        handler.send_response(self.status)
        for name, value in self.headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(self.body)))
        handler.end_headers()
        handler.wfile.write(self.body)


def json_reply(payload: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})


Responder = Callable[["_Handler", Seen], None]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _PeerServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        path, _, query = self.path.partition("?")
        responder = self.server.next_responder(self.command, path)
        seen = Seen(self.command, path, query, dict(self.headers.items()), self.client_address[1])
        if not getattr(responder, "reads_body", False):
            seen.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append(seen)
        responder(self, seen)


class _PeerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[tuple[str, str], list[Responder]] = {}
        self.seen: list[Seen] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def route(self, method: str, path: str, *responders: Responder) -> None:
        """Answer with each responder in turn; the last one repeats."""
        self.routes[(method, path)] = list(responders)

    def next_responder(self, method: str, path: str) -> Responder:
        with self.lock:
            queue = self.routes.get((method, path))
            if not queue:
                return Reply(418, b"no route")
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up mid-response is expected here; stay quiet."""

    def calls(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path == path]


@pytest.fixture
def server() -> Iterator[_PeerServer]:
    srv = _PeerServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.005})
    thread.start()
    try:
        yield srv
    finally:
        srv.stop.set()
        srv.shutdown()
        thread.join(5)
        srv.server_close()


def make_settings(url: str, timeout: float = 5.0) -> Settings:
    return Settings(
        _env_file=None,
        mongodb_service=url,
        blob_service=url + "/",
        user_service=url,
        user_manager_service=url,
        peer_timeout_seconds=timeout,
        peer_retries=RETRIES,
    )


@pytest.fixture
def peers(server: _PeerServer) -> Iterator[Peers]:
    with Peers.from_settings(make_settings(server.url), policy=FAST) as bundle:
        yield bundle


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_multipart(seen: Seen) -> list[tuple[str, dict[str, str], bytes]]:
    """(name, part headers, content) for each part, straight from the raw body."""
    content_type = seen.headers["Content-Type"]
    prefix = "multipart/form-data; boundary="
    assert content_type.startswith(prefix)
    delimiter = b"--" + content_type[len(prefix) :].encode()
    body = seen.body
    assert body.startswith(delimiter + b"\r\n")
    assert body.endswith(b"\r\n" + delimiter + b"--\r\n")
    inner = body[len(delimiter) + 2 : -(len(delimiter) + 6)]
    parts = []
    for raw in inner.split(b"\r\n" + delimiter + b"\r\n"):
        head, _, content = raw.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        disposition = headers["Content-Disposition"]
        name = disposition.split('name="', 1)[1].split('"', 1)[0]
        parts.append((name, headers, content))
    return parts


# ---------------------------------------------------------------- key validation


@pytest.mark.parametrize(
    "key",
    [
        "",
        "..",
        "a/../b",
        "../a",
        "a/..",
        "./a",
        "a/./b",
        "/abs/key",
        "a//b",
        "a/b/",
        "a\x00b",
        "a\nb",
        "a\x7fb",
        "a\x85b",
        "http://x",
        "a/s3://b",
        "a\\b",
        "a/\ud800",
        "k" * 1025,
        "é" * 513,
    ],
)
def test_bad_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidInput):
        validate_blob_key(key)


@pytest.mark.parametrize(
    "key", ["a", "c/o/f.blend", "c/o/my file+1é.png", "a/.hidden/b", "k" * 1024]
)
def test_good_keys_pass_unchanged(key: str) -> None:
    assert validate_blob_key(key) == key


def test_non_string_key_is_refused() -> None:
    with pytest.raises(InvalidInput):
        validate_blob_key(b"a/b")  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["..", "/abs", "a//b", "a\x00b", "http://x"])
def test_bad_keys_never_reach_the_blob_service(
    server: _PeerServer, peers: Peers, tmp_path: Path, key: str
) -> None:
    blob = peers.blob
    calls: list[Callable[[], object]] = [
        lambda: blob.download_blend(key, tmp_path / "x", max_bytes=10),
        lambda: blob.download_temp(key, tmp_path / "x", max_bytes=10),
        lambda: blob.store_image(key=key, extension="png", source=io.BytesIO(b"x")),
        lambda: blob.delete_temp(key),
        lambda: blob.transfer_temp_to_final(
            temp_key=key, final_key="c/o/001.png", extension="png", max_bytes=10, workdir=tmp_path
        ),
        lambda: blob.transfer_temp_to_final(
            temp_key="t/1.png", final_key=key, extension="png", max_bytes=10, workdir=tmp_path
        ),
        lambda: peers.catalog.add_rendered_image(
            object_id="o", customer_id="c", frame_number=1, image_file_path=key
        ),
    ]
    for call in calls:
        with pytest.raises(InvalidInput):
            call()
    assert server.seen == []
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- final_frame_key


@pytest.mark.parametrize(
    ("frame", "ext", "expected"),
    [
        (7, "png", "cust/obj/007.png"),
        (0, "png", "cust/obj/000.png"),
        (42, "PNG", "cust/obj/042.png"),
        (250, "exr", "cust/obj/250.exr"),
        (1234, "jpg", "cust/obj/1234.jpg"),
        (-7, "png", "cust/obj/-07.png"),
        (-123, "png", "cust/obj/-123.png"),
    ],
)
def test_final_frame_key(frame: int, ext: str, expected: str) -> None:
    assert final_frame_key("cust", "obj", frame, ext) == expected


@pytest.mark.parametrize(
    ("customer", "obj", "frame", "ext"),
    [
        ("cust", "obj", 1, ""),
        ("cust", "obj", 1, ".png"),
        ("cust", "obj", 1, "p.ng"),
        ("cust", "obj", 1, "abcdefghijk"),
        ("cust", "obj", 1, "pñg"),
        ("cust", "obj", True, "png"),
        ("cust", "obj", "7", "png"),
        ("cu/st", "obj", 1, "png"),
        ("cust", "..", 1, "png"),
        ("", "obj", 1, "png"),
    ],
)
def test_final_frame_key_refuses(customer: str, obj: str, frame: Any, ext: str) -> None:
    with pytest.raises(InvalidInput):
        final_frame_key(customer, obj, frame, ext)


def test_validate_extension_lowercases() -> None:
    assert validate_extension("ExR") == "exr"
    assert validate_extension("a" * 10) == "a" * 10


# ---------------------------------------------------------------- catalog


def test_peers_are_reached_directly_whatever_the_proxy_environment(
    server: _PeerServer, peers: Peers, monkeypatch: pytest.MonkeyPatch
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


def test_get_blend_file_sends_exact_request(server: _PeerServer, peers: Peers) -> None:
    object_id, customer_id = "obj 1+é", "cust&1=é"
    blend_path = f"{customer_id}/{object_id}/scene.blend"
    expected_path = BLEND_NAME + "obj%201%2B%C3%A9"
    server.route(
        "GET", expected_path, json_reply({"blendFilePath": blend_path, "blendFileHash": "h1"})
    )

    ref = peers.catalog.get_blend_file(object_id, customer_id)

    assert ref == BlendFileRef(path=blend_path, hash="h1")
    (seen,) = server.seen
    assert seen.path == expected_path
    assert seen.query == "customer_id=cust%261%3D%C3%A9"
    assert seen.params == {"customer_id": [customer_id]}


@pytest.mark.parametrize("status", [404, 400, 403, 410, 302])
def test_catalog_refusal_means_not_renderable(
    server: _PeerServer, peers: Peers, status: int
) -> None:
    server.route("GET", BLEND_NAME + "obj", json_reply({"message": "Object not found"}, status))
    with pytest.raises(ObjectNotRenderable, match="obj"):
        peers.catalog.get_blend_file("obj", "cust")
    assert len(server.seen) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"blendFilePath": "cust/scene.blend", "blendFileHash": "h"},
        {"blendFilePath": "cust/obj/sub/scene.blend", "blendFileHash": "h"},
        {"blendFilePath": "cust/../scene.blend", "blendFileHash": "h"},
        {"blendFilePath": "cust/obj/..", "blendFileHash": "h"},
        {"blendFilePath": "/cust/obj/scene.blend", "blendFileHash": "h"},
        {"blendFilePath": "other/obj/scene.blend", "blendFileHash": "h"},
        {"blendFilePath": "cust/other/scene.blend", "blendFileHash": "h"},
        {"blendFilePath": "cust/obj/scene.txt", "blendFileHash": "h"},
        {"blendFilePath": "cust/obj/.blend", "blendFileHash": "h"},
        {"blendFilePath": "cust\\obj\\scene.blend", "blendFileHash": "h"},
        {"blendFilePath": "http://cust/obj/scene.blend", "blendFileHash": "h"},
        {"blendFilePath": "cust/obj/sc\x00ene.blend", "blendFileHash": "h"},
        {"blendFilePath": "", "blendFileHash": "h"},
        {"blendFilePath": None, "blendFileHash": "h"},
        {"blendFilePath": ["cust", "obj", "scene.blend"], "blendFileHash": "h"},
        {"blendFileHash": "h"},
        {"blendFilePath": "cust/obj/scene.blend"},
        {"blendFilePath": "cust/obj/scene.blend", "blendFileHash": 12},
        ["cust/obj/scene.blend"],
        "cust/obj/scene.blend",
    ],
)
def test_bad_blend_file_path_means_not_renderable(
    server: _PeerServer, peers: Peers, body: Any
) -> None:
    server.route("GET", BLEND_NAME + "obj", json_reply(body))
    with pytest.raises(ObjectNotRenderable):
        peers.catalog.get_blend_file("obj", "cust")


def test_catalog_non_json_means_not_renderable(server: _PeerServer, peers: Peers) -> None:
    server.route("GET", BLEND_NAME + "obj", Reply(200, b"<html>oops</html>"))
    with pytest.raises(ObjectNotRenderable):
        peers.catalog.get_blend_file("obj", "cust")


def test_blend_file_upper_case_extension_is_accepted(server: _PeerServer, peers: Peers) -> None:
    body = {"blendFilePath": "cust/obj/Scene.BLEND", "blendFileHash": "h"}
    server.route("GET", BLEND_NAME + "obj", json_reply(body))
    assert peers.catalog.get_blend_file("obj", "cust").path == "cust/obj/Scene.BLEND"


@pytest.mark.parametrize(
    ("object_id", "customer_id"), [("", "c"), ("o", ""), ("..", "c"), ("a/b", "c")]
)
def test_catalog_refuses_bad_ids_before_sending(
    server: _PeerServer, peers: Peers, object_id: str, customer_id: str
) -> None:
    with pytest.raises(InvalidInput):
        peers.catalog.get_blend_file(object_id, customer_id)
    assert server.seen == []


def test_catalog_503_then_200_is_retried(server: _PeerServer, peers: Peers) -> None:
    good = json_reply({"blendFilePath": "cust/obj/scene.blend", "blendFileHash": "h"})
    server.route("GET", BLEND_NAME + "obj", Reply(503), good)
    assert peers.catalog.get_blend_file("obj", "cust").hash == "h"
    assert len(server.seen) == 2


def test_persistent_500_is_a_transient_peer_error(
    server: _PeerServer, peers: Peers, caplog: pytest.LogCaptureFixture
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


def test_catalog_429_is_transient_not_unrenderable(server: _PeerServer, peers: Peers) -> None:
    server.route("GET", BLEND_NAME + "obj", Reply(429))
    with pytest.raises(PeerError) as info:
        peers.catalog.get_blend_file("obj", "cust")
    assert (info.value.status, info.value.transient) == (429, True)


def test_add_rendered_image_sends_exact_json(server: _PeerServer, peers: Peers) -> None:
    server.route("POST", ADD_IMAGE, json_reply({"message": "ok"}))
    peers.catalog.add_rendered_image(
        object_id="obj", customer_id="cust", frame_number=7, image_file_path="cust/obj/007.png"
    )
    (seen,) = server.seen
    assert seen.headers["Content-Type"] == "application/json"
    assert list(seen.json().items()) == [
        ("objectId", "obj"),
        ("customerId", "cust"),
        ("frameNumber", 7),
        ("imageFilePath", "cust/obj/007.png"),
    ]


def test_add_rendered_image_is_not_retried_after_sending(server: _PeerServer, peers: Peers) -> None:
    server.route("POST", ADD_IMAGE, Reply(503), Reply(200))
    with pytest.raises(PeerError) as info:
        peers.catalog.add_rendered_image(
            object_id="obj", customer_id="cust", frame_number=7, image_file_path="c/o/007.png"
        )
    assert (info.value.status, info.value.transient) == (503, True)
    assert len(server.seen) == 1


def test_add_rendered_image_4xx_is_permanent(server: _PeerServer, peers: Peers) -> None:
    server.route("POST", ADD_IMAGE, json_reply({"message": "bad frame"}, 422))
    with pytest.raises(PeerError) as info:
        peers.catalog.add_rendered_image(
            object_id="obj", customer_id="cust", frame_number=7, image_file_path="c/o/007.png"
        )
    assert (info.value.peer, info.value.status, info.value.transient) == ("catalog", 422, False)


# ---------------------------------------------------------------- blob: downloads


def test_download_blend_exact_request_and_bytes(
    server: _PeerServer, peers: Peers, tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    server.route("GET", RETRIEVE_BLEND, Reply(200, data))
    dest = tmp_path / "scene.blend"

    key = "cust/obj/my scene+1é.blend"
    assert peers.blob.download_blend(key, dest, max_bytes=len(data)) == len(data)

    assert dest.read_bytes() == data
    (seen,) = server.seen
    assert seen.query == "bucket=blend-files&key=cust%2Fobj%2Fmy+scene%2B1%C3%A9.blend"
    assert seen.params == {"bucket": ["blend-files"], "key": [key]}


def test_download_temp_exact_request(server: _PeerServer, peers: Peers, tmp_path: Path) -> None:
    server.route("GET", RETRIEVE_TEMP, Reply(200, b"img"))
    assert peers.blob.download_temp("tmp/u1/7.png", tmp_path / "f", max_bytes=10) == 3
    (seen,) = server.seen
    assert seen.query == "key=tmp%2Fu1%2F7.png"
    assert (tmp_path / "f").read_bytes() == b"img"


def test_download_404_is_permanent_and_leaves_no_file(
    server: _PeerServer, peers: Peers, tmp_path: Path
) -> None:
    server.route("GET", RETRIEVE_BLEND, json_reply({"message": "no such key"}, 404))
    with pytest.raises(PeerError) as info:
        peers.blob.download_blend("c/o/f.blend", tmp_path / "f", max_bytes=10)
    err = info.value
    assert (err.peer, err.operation, err.status, err.transient) == (
        "blob-service",
        "retrieve-blend",
        404,
        False,
    )
    assert not (tmp_path / "f").exists()
    assert len(server.seen) == 1


def test_declared_length_over_limit_aborts_before_reading(
    server: _PeerServer, peers: Peers, tmp_path: Path
) -> None:
    server.route("GET", RETRIEVE_BLEND, Reply(200, b"x" * 101))
    with pytest.raises(PeerError) as info:
        peers.blob.download_blend("c/o/f.blend", tmp_path / "f", max_bytes=100)
    assert info.value.transient is False
    assert "limit" in info.value.detail
    assert not (tmp_path / "f").exists()


def stream_without_length(chunks: list[bytes]) -> Responder:
    def respond(handler: _Handler, seen: Seen) -> None:
        handler.send_response(200)
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        for chunk in chunks:
            handler.wfile.write(chunk)
            handler.wfile.flush()

    return respond


def test_streamed_body_over_limit_aborts_and_removes_file(
    server: _PeerServer, peers: Peers, tmp_path: Path
) -> None:
    server.route("GET", RETRIEVE_TEMP, stream_without_length([b"x" * 60, b"y" * 60]))
    dest = tmp_path / "f"
    with pytest.raises(PeerError) as info:
        peers.blob.download_temp("t/1.png", dest, max_bytes=100)
    assert (info.value.operation, info.value.transient) == ("retrieve-temp", False)
    assert not dest.exists()


def test_body_of_exactly_the_limit_is_fine(
    server: _PeerServer, peers: Peers, tmp_path: Path
) -> None:
    server.route("GET", RETRIEVE_TEMP, stream_without_length([b"x" * 60, b"y" * 40]))
    assert peers.blob.download_temp("t/1.png", tmp_path / "f", max_bytes=100) == 100


def test_truncated_body_is_transient_and_removes_file(
    server: _PeerServer, peers: Peers, tmp_path: Path
) -> None:
    def short(handler: _Handler, seen: Seen) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(b"x" * 10)
        handler.close_connection = True

    server.route("GET", RETRIEVE_TEMP, short)
    dest = tmp_path / "f"
    with pytest.raises(PeerError) as info:
        peers.blob.download_temp("t/1.png", dest, max_bytes=10_000)
    assert info.value.transient is True
    assert not dest.exists()


def test_download_503_then_200_is_retried(
    server: _PeerServer, peers: Peers, tmp_path: Path
) -> None:
    server.route("GET", RETRIEVE_TEMP, Reply(503), Reply(502), Reply(200, b"ok"))
    assert peers.blob.download_temp("t/1.png", tmp_path / "f", max_bytes=10) == 2
    assert len(server.seen) == 3


# ---------------------------------------------------------------- blob: upload, delete


def test_store_image_streams_exact_multipart(
    server: _PeerServer, peers: Peers, tmp_path: Path
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
    server: _PeerServer, peers: Peers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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
    server: _PeerServer, peers: Peers
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
    server: _PeerServer, peers: Peers, tmp_path: Path
) -> None:
    server.route("POST", STORE_IMAGE, Reply(502), Reply(504), Reply(200))
    data = os.urandom(300_000)
    (tmp_path / "f").write_bytes(data)
    peers.blob.store_image(key="c/o/001.png", extension="png", source=tmp_path / "f")
    assert len(server.seen) == 3
    assert [parse_multipart(s)[3][2] for s in server.seen] == [data, data, data]


def test_store_image_500_is_not_retried(server: _PeerServer, peers: Peers) -> None:
    server.route("POST", STORE_IMAGE, Reply(500), Reply(200))
    with pytest.raises(PeerError) as info:
        peers.blob.store_image(key="c/o/001.png", extension="png", source=io.BytesIO(b"x"))
    assert (info.value.operation, info.value.status) == ("store-image", 500)
    assert len(server.seen) == 1


def test_store_image_refuses_unseekable_source(server: _PeerServer, peers: Peers) -> None:
    class Pipe(io.RawIOBase):
        def readable(self) -> bool:
            return True

    with Pipe() as pipe, pytest.raises(InvalidInput):
        peers.blob.store_image(key="c/o/001.png", extension="png", source=pipe)  # type: ignore[arg-type]
    assert server.seen == []


@pytest.mark.parametrize("status", [200, 204, 404])
def test_delete_temp_accepts_done_and_gone(server: _PeerServer, peers: Peers, status: int) -> None:
    server.route("DELETE", DELETE_TEMP, Reply(status))
    peers.blob.delete_temp("tmp/u 1/7.png")
    (seen,) = server.seen
    assert seen.query == "key=tmp%2Fu+1%2F7.png"


def test_delete_temp_500_is_retried_then_fails(server: _PeerServer, peers: Peers) -> None:
    server.route("DELETE", DELETE_TEMP, Reply(500))
    with pytest.raises(PeerError) as info:
        peers.blob.delete_temp("t/1.png")
    assert (info.value.peer, info.value.operation, info.value.status) == (
        "blob-service",
        "delete-temp",
        500,
    )
    assert len(server.seen) == RETRIES + 1


def test_delete_temp_403_is_permanent(server: _PeerServer, peers: Peers) -> None:
    server.route("DELETE", DELETE_TEMP, Reply(403))
    with pytest.raises(PeerError) as info:
        peers.blob.delete_temp("t/1.png")
    assert info.value.transient is False


# ---------------------------------------------------------------- blob: transfer


def test_transfer_temp_to_final_round_trip(
    server: _PeerServer, peers: Peers, tmp_path: Path
) -> None:
    data = os.urandom(5 * 1024 * 1024 + 3)
    server.route("GET", RETRIEVE_TEMP, Reply(200, data))
    server.route("POST", STORE_IMAGE, Reply(200))

    size = peers.blob.transfer_temp_to_final(
        temp_key="tmp/u1/frame-7.png",
        final_key="cust/obj/007.png",
        extension="png",
        max_bytes=len(data),
        workdir=tmp_path,
    )

    assert size == len(data)
    get, post = server.seen
    assert (get.method, get.path, get.params) == (
        "GET",
        RETRIEVE_TEMP,
        {"key": ["tmp/u1/frame-7.png"]},
    )
    assert post.path == STORE_IMAGE
    parts = parse_multipart(post)
    assert parts[1][2] == b"cust/obj/007.png"
    assert parts[3][2] == data
    assert list(tmp_path.iterdir()) == []


def transfer(peers: Peers, workdir: Path, *, max_bytes: int, final_key: str = "c/o/001.png") -> int:
    """The transfer the tests below make: temp key t/1.png, a png, spooling in `workdir`."""
    return peers.blob.transfer_temp_to_final(
        temp_key="t/1.png",
        final_key=final_key,
        extension="png",
        max_bytes=max_bytes,
        workdir=workdir,
    )


def test_transfer_removes_temp_file_on_failure(
    server: _PeerServer, peers: Peers, tmp_path: Path
) -> None:
    server.route("GET", RETRIEVE_TEMP, Reply(200, b"img"))
    server.route("POST", STORE_IMAGE, json_reply({"message": "bucket missing"}, 400))
    with pytest.raises(PeerError) as info:
        transfer(peers, tmp_path, max_bytes=10)
    assert (info.value.operation, info.value.transient) == ("store-image", False)
    assert list(tmp_path.iterdir()) == []


def test_transfer_over_limit_never_uploads(
    server: _PeerServer, peers: Peers, tmp_path: Path
) -> None:
    server.route("GET", RETRIEVE_TEMP, Reply(200, b"x" * 11))
    with pytest.raises(PeerError):
        transfer(peers, tmp_path, max_bytes=10)
    assert server.calls("POST", STORE_IMAGE) == []
    assert list(tmp_path.iterdir()) == []


def hashing_upload_sink(handler: _Handler, seen: Seen) -> None:
    """Stream a multipart body, hashing the image part without keeping it."""
    remaining = int(seen.headers["Content-Length"])
    boundary = seen.headers["Content-Type"].split("boundary=", 1)[1].encode()
    closing = b"\r\n--" + boundary + b"--\r\n"
    head = b""
    while b'name="image"' not in head or b"\r\n\r\n" not in head.split(b'name="image"')[1]:
        block = handler.rfile.read(min(4096, remaining))
        remaining -= len(block)
        head += block
    marker = head.index(b'name="image"')
    start = head.index(b"\r\n\r\n", marker) + 4
    hasher, pending = hashlib.sha256(), head[start:]
    while remaining:
        block = handler.rfile.read(min(256 * 1024, remaining))
        remaining -= len(block)
        pending += block
        if len(pending) > len(closing):
            hasher.update(pending[: -len(closing)])
            pending = pending[-len(closing) :]
    seen.extra["closing_ok"] = pending == closing
    seen.extra["sha256"] = hasher.hexdigest()
    Reply(200)(handler, seen)


hashing_upload_sink.reads_body = True  # type: ignore[attr-defined]


@pytest.mark.parametrize("declared", [True, False], ids=["streamed", "through-temp-file"])
def test_transfer_memory_stays_bounded(
    server: _PeerServer, peers: Peers, tmp_path: Path, declared: bool
) -> None:
    """32 MiB each way through Python allocations that stay a small fraction of it."""
    chunk = os.urandom(1024 * 1024)
    count = 32
    total = len(chunk) * count
    expected = hashlib.sha256(chunk * count).hexdigest()

    def download(handler: _Handler, seen: Seen) -> None:
        handler.send_response(200)
        if declared:
            handler.send_header("Content-Length", str(total))
        else:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        handler.end_headers()
        for _ in range(count):
            handler.wfile.write(chunk)

    server.route("GET", RETRIEVE_TEMP, download)
    server.route("POST", STORE_IMAGE, hashing_upload_sink)

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        size = transfer(peers, tmp_path, max_bytes=total)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert size == total
    post = server.calls("POST", STORE_IMAGE)[0]
    assert post.extra == {"closing_ok": True, "sha256": expected}
    assert peak < 8 * 1024 * 1024, f"peak traced allocation {peak} bytes"
    assert list(tmp_path.iterdir()) == []


def noting_workdir(workdir: Path, then: Responder) -> Responder:
    """A responder that notes what `workdir` holds once the request has arrived."""

    def respond(handler: _Handler, seen: Seen) -> None:
        seen.extra["workdir"] = sorted(path.name for path in workdir.iterdir())
        then(handler, seen)

    return respond


def test_transfer_streams_a_declared_body_straight_into_the_upload(
    server: _PeerServer, peers: Peers, tmp_path: Path
) -> None:
    """Several chunks, no temp file at any point, the same bytes, a plain Content-Length."""
    data = os.urandom(2 * UPLOAD_CHUNK_BYTES + 12_345) + b"\r\n--not-the-boundary--\r\n"
    server.route("GET", RETRIEVE_TEMP, Reply(200, data))
    server.route("POST", STORE_IMAGE, noting_workdir(tmp_path, Reply(200)))

    size = transfer(peers, tmp_path, max_bytes=len(data), final_key="cust/obj/007.png")

    assert size == len(data)
    (post,) = server.calls("POST", STORE_IMAGE)
    assert post.extra["workdir"] == []
    assert int(post.headers["Content-Length"]) == len(post.body)
    assert "Transfer-Encoding" not in post.headers
    parts = parse_multipart(post)
    assert [(name, content) for name, _, content in parts[:3]] == [
        ("bucket", b"rendered-frames"),
        ("key", b"cust/obj/007.png"),
        ("type", b"png"),
    ]
    name, headers, content = parts[3]
    assert (name, headers["Content-Type"]) == ("image", "image/png")
    assert 'filename="007.png"' in headers["Content-Disposition"]
    assert hashlib.sha256(content).digest() == hashlib.sha256(data).digest()
    assert list(tmp_path.iterdir()) == []


def test_transfer_of_an_undeclared_body_goes_through_a_temp_file(
    server: _PeerServer, peers: Peers, tmp_path: Path
) -> None:
    pieces = [os.urandom(700_000) for _ in range(4)]
    data = b"".join(pieces)
    server.route("GET", RETRIEVE_TEMP, stream_without_length(pieces))
    server.route("POST", STORE_IMAGE, noting_workdir(tmp_path, Reply(200)))

    size = transfer(peers, tmp_path, max_bytes=len(data))

    assert size == len(data)
    (post,) = server.calls("POST", STORE_IMAGE)
    (spooled,) = post.extra["workdir"]
    assert spooled.startswith("frame-")
    assert spooled.endswith(".part")
    assert parse_multipart(post)[3][2] == data
    assert list(tmp_path.iterdir()) == []


def test_transfer_refuses_an_undeclared_body_over_the_limit_as_it_arrives(
    server: _PeerServer, peers: Peers, tmp_path: Path
) -> None:
    server.route("GET", RETRIEVE_TEMP, stream_without_length([b"x" * 60, b"y" * 60]))
    with pytest.raises(PeerError) as info:
        transfer(peers, tmp_path, max_bytes=100)
    assert (info.value.operation, info.value.transient) == ("retrieve-temp", False)
    assert "limit" in info.value.detail
    assert server.calls("POST", STORE_IMAGE) == []
    assert list(tmp_path.iterdir()) == []


def test_transfer_retried_upload_fetches_the_temp_blob_again(
    server: _PeerServer, peers: Peers, tmp_path: Path
) -> None:
    data = os.urandom(UPLOAD_CHUNK_BYTES + 999)
    server.route("GET", RETRIEVE_TEMP, Reply(200, data))
    server.route("POST", STORE_IMAGE, Reply(503), Reply(502), Reply(200))

    size = transfer(peers, tmp_path, max_bytes=len(data))

    assert size == len(data)
    posts = server.calls("POST", STORE_IMAGE)
    assert [parse_multipart(post)[3][2] == data for post in posts] == [True, True, True]
    assert len(server.calls("GET", RETRIEVE_TEMP)) == 3
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("again", "status", "transient", "detail"),
    [
        (Reply(200, b"longer than before"), None, True, "length changed"),
        (json_reply({"message": "no such key"}, 404), 404, False, "no such key"),
    ],
    ids=["length-changed", "gone"],
)
def test_transfer_retry_needs_the_same_temp_blob(
    server: _PeerServer,
    peers: Peers,
    tmp_path: Path,
    again: Reply,
    status: int | None,
    transient: bool,
    detail: str,
) -> None:
    server.route("GET", RETRIEVE_TEMP, Reply(200, b"first"), again)
    server.route("POST", STORE_IMAGE, Reply(503), Reply(200))
    with pytest.raises(PeerError) as info:
        transfer(peers, tmp_path, max_bytes=100)
    err = info.value
    assert (err.operation, err.status, err.transient) == ("retrieve-temp", status, transient)
    assert detail in err.detail
    assert len(server.calls("POST", STORE_IMAGE)) == 1


def test_transfer_truncated_download_aborts_the_upload(
    server: _PeerServer, peers: Peers, tmp_path: Path
) -> None:
    """The Blob Service never receives a whole upload, and nothing is retried."""

    def short(handler: _Handler, seen: Seen) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(3 * UPLOAD_CHUNK_BYTES))
        handler.end_headers()
        handler.wfile.write(b"x" * UPLOAD_CHUNK_BYTES)
        handler.close_connection = True

    server.route("GET", RETRIEVE_TEMP, short)
    server.route("POST", STORE_IMAGE, Reply(200))
    with pytest.raises(PeerError) as info:
        transfer(peers, tmp_path, max_bytes=10 * UPLOAD_CHUNK_BYTES)
    assert (info.value.operation, info.value.transient) == ("retrieve-temp", True)
    deadline = time.monotonic() + 5
    while not server.calls("POST", STORE_IMAGE) and time.monotonic() < deadline:
        time.sleep(0.01)
    (post,) = server.calls("POST", STORE_IMAGE)
    assert len(post.body) < int(post.headers["Content-Length"])
    assert len(server.calls("GET", RETRIEVE_TEMP)) == 1


def test_transfers_reuse_their_connections(
    server: _PeerServer, peers: Peers, tmp_path: Path
) -> None:
    data = os.urandom(UPLOAD_CHUNK_BYTES + 1)
    server.route("GET", RETRIEVE_TEMP, Reply(200, data))
    server.route("POST", STORE_IMAGE, Reply(200))
    for _ in range(3):
        transfer(peers, tmp_path, max_bytes=len(data))
    assert len({s.port for s in server.calls("GET", RETRIEVE_TEMP)}) == 1
    assert len({s.port for s in server.calls("POST", STORE_IMAGE)}) == 1


# ---------------------------------------------------------------- transport failures


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


def test_read_timeout_on_get_is_retried_then_transient(server: _PeerServer) -> None:
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


def test_read_timeout_on_message_is_not_retried(server: _PeerServer) -> None:
    server.route("POST", SEND, Reply(200, delay=2.0))
    with (
        Peers.from_settings(make_settings(server.url, timeout=0.2), policy=FAST) as bundle,
        pytest.raises(PeerError) as info,
    ):
        bundle.users.send("u1", "stop-work", {})
    assert (info.value.peer, info.value.transient) == ("user-service", True)
    assert "timed out" in info.value.detail
    assert len(server.seen) == 1


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
    server: _PeerServer, reply: Reply, expected: bool
) -> None:
    server.route("POST", SEND_ACK, reply)
    data = {"frame-number": 3, "blend-file-hash": ""}
    with Peers.from_settings(make_settings(server.url, timeout=0.2), policy=FAST) as bundle:
        assert bundle.users.answers("u1", "retrieve-frame", data) is expected


def test_answers_knows_nothing_when_the_user_service_is_down() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with Peers.from_settings(make_settings(url, timeout=0.2), policy=FAST) as bundle:
        assert bundle.users.answers("u1", "retrieve-frame", {"frame-number": 3}) is None


def test_stalled_download_times_out(server: _PeerServer, tmp_path: Path) -> None:
    def stall(handler: _Handler, seen: Seen) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        handler.wfile.write(b"x" * 10)
        handler.wfile.flush()
        handler.server.stop.wait(2.0)

    server.route("GET", RETRIEVE_TEMP, stall)
    with (
        Peers.from_settings(make_settings(server.url, timeout=0.2), policy=FAST) as bundle,
        pytest.raises(PeerError) as info,
    ):
        bundle.blob.download_temp("t/1", tmp_path / "f", max_bytes=100)
    assert info.value.transient is True
    assert "timed out" in info.value.detail
    assert not (tmp_path / "f").exists()


def test_error_detail_is_clipped(server: _PeerServer, peers: Peers) -> None:
    server.route("POST", SEND, Reply(400, b"secret-ish\n" + b"A" * 100_000))
    with pytest.raises(PeerError) as info:
        peers.users.send("u1", "stop-work", {})
    assert len(info.value.detail) <= 200
    assert "\n" not in info.value.detail


# ---------------------------------------------------------------- user service


def test_send_exact_json(server: _PeerServer, peers: Peers) -> None:
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
def test_send_failures(server: _PeerServer, peers: Peers, status: int, transient: bool) -> None:
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


def test_send_refuses_unserialisable_data(server: _PeerServer, peers: Peers) -> None:
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
    server: _PeerServer, peers: Peers, reply: Reply, expected: bool | None
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


def test_send_with_ack_falls_back_to_the_other_spelling(server: _PeerServer, peers: Peers) -> None:
    """A deployment whose User Service has the route spelled without the e still works."""
    server.route("POST", SEND_ACK, json_reply({"detail": "Not Found"}, 404))
    server.route("POST", SEND_ACK_MISSPELT, json_reply(True))
    data = {"frame-number": 7, "blend-file-hash": ""}
    assert peers.users.send_with_ack("u1", "retrieve-frame", data) is True
    assert [s.path for s in server.seen] == [SEND_ACK, SEND_ACK_MISSPELT]


# ---------------------------------------------------------------- user manager


def test_register_session_exact_form(server: _PeerServer, peers: Peers) -> None:
    server.route("POST", NEW_SESSION, json_reply({"message": "registered"}))
    peers.user_manager.register_session("sess-1 é", 3)
    (seen,) = server.seen
    assert seen.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert seen.body == b"user_count=3&session_supervisor_id=sess-1+%C3%A9"


def test_register_session_502_then_200_is_retried(server: _PeerServer, peers: Peers) -> None:
    server.route("POST", NEW_SESSION, Reply(502), Reply(200))
    peers.user_manager.register_session("s1", 1)
    assert [s.body for s in server.seen] == [b"user_count=1&session_supervisor_id=s1"] * 2


def test_register_session_refuses_bad_count(server: _PeerServer, peers: Peers) -> None:
    for count in (-1, True, "3"):
        with pytest.raises(InvalidInput):
            peers.user_manager.register_session("s1", count)  # type: ignore[arg-type]
    assert server.seen == []


def test_register_session_400_is_permanent(server: _PeerServer, peers: Peers) -> None:
    server.route("POST", NEW_SESSION, Reply(400))
    with pytest.raises(PeerError) as info:
        peers.user_manager.register_session("s1", 1)
    assert (info.value.peer, info.value.operation, info.value.transient) == (
        "user-manager",
        "new-session",
        False,
    )


# ---------------------------------------------------------------- the bundle


def test_bundle_shares_one_session_and_reuses_connections(
    server: _PeerServer, peers: Peers, tmp_path: Path
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


def test_bundle_uses_settings_urls(server: _PeerServer) -> None:
    settings = make_settings(server.url)
    assert settings.blob_service == server.url
    with Peers.from_settings(settings) as bundle:
        server.route("DELETE", DELETE_TEMP, Reply(204))
        bundle.blob.delete_temp("t/1")
    assert server.seen[0].headers["User-Agent"] == "session-supervisor"


def test_client_on_its_own_session(server: _PeerServer, tmp_path: Path) -> None:
    server.route("GET", RETRIEVE_TEMP, Reply(503), Reply(200, b"ok"))
    session = make_session(FAST)
    client = BlobClient(server.url, session, timeout=(1.0, 1.0), policy=FAST)
    try:
        assert client.download_temp("t/1", tmp_path / "f", max_bytes=2) == 2
    finally:
        client.close()
    assert len(server.seen) == 2


def test_redirects_are_not_followed(server: _PeerServer, peers: Peers, tmp_path: Path) -> None:
    server.route("GET", RETRIEVE_TEMP, Reply(302, headers={"Location": server.url + "/elsewhere"}))
    with pytest.raises(PeerError) as info:
        peers.blob.download_temp("t/1", tmp_path / "f", max_bytes=10)
    assert (info.value.status, info.value.transient) == (302, False)
    assert [s.path for s in server.seen] == [RETRIEVE_TEMP]


def test_session_keeps_no_cookies(server: _PeerServer, peers: Peers) -> None:
    server.route("POST", SEND, Reply(200, headers={"Set-Cookie": "sid=abc; Path=/"}))
    peers.users.send("u1", "stop-work", {})
    peers.users.send("u1", "stop-work", {})
    assert ["Cookie" in s.headers for s in server.seen] == [False, False]
