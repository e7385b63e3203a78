"""The transfer benchmark's minimal Blob Service: it must store exactly what it is sent."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.transfer import COPY_CHUNK, FINAL_KEY, TEMP_KEY, MinimalBlobServer
from supervisor.peers import BlobClient, RetryPolicy, make_session


@pytest.fixture
def minimal(tmp_path: Path) -> Iterator[MinimalBlobServer]:
    with MinimalBlobServer(tmp_path / "blobs") as server:
        yield server


def test_a_transfer_through_the_minimal_server_keeps_every_byte(
    minimal: MinimalBlobServer, tmp_path: Path
) -> None:
    data = os.urandom(5 * COPY_CHUNK + 7) + b"\r\n--looks-like-a-boundary--\r\n"
    minimal.temp_path(TEMP_KEY).write_bytes(data)
    policy = RetryPolicy(retries=0)
    client = BlobClient(minimal.base_url, make_session(policy), timeout=5.0, policy=policy)
    try:
        size = client.transfer_temp_to_final(
            temp_key=TEMP_KEY,
            final_key=FINAL_KEY,
            extension="png",
            max_bytes=len(data),
            workdir=tmp_path,
        )
    finally:
        client.close()
    assert size == len(data)
    stored = minimal.final_path(FINAL_KEY).read_bytes()
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()
    assert [p.name for p in minimal.final_path(FINAL_KEY).parent.iterdir()] == [
        minimal.final_path(FINAL_KEY).name
    ]


def test_an_upload_cut_short_stores_nothing(minimal: MinimalBlobServer) -> None:
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="key"\r\n\r\n{FINAL_KEY}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="001.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    port = int(minimal.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/blob-service/store-image HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=" + boundary.encode() + b"\r\n"
            b"Content-Length: "
            + str(len(head) + 3 * COPY_CHUNK).encode()
            + b"\r\n\r\n"
            + head
            + b"x" * COPY_CHUNK
        )
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1024) == b""
    assert list(minimal.final_path(FINAL_KEY).parent.iterdir()) == []
