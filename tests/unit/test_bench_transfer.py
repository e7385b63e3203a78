"""The transfer benchmark's minimal Blob Service (it must store exactly what it is sent), its
frames (valid images, passing the check they are measured with) and its measured child."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from bench.harness import MiB
from bench.transfer import (
    COPY_CHUNK,
    FINAL_KEY,
    FRAME_TEMP_KEY,
    TEMP_KEY,
    MinimalBlobServer,
    child,
    render_like_frame,
    sha256_of,
    write_png,
)
from supervisor.frames.validation import Expectation, FrameCheck, InvalidFrame
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
        transferred = client.transfer_temp_to_final(
            temp_key=TEMP_KEY,
            final_key=FINAL_KEY,
            extension="png",
            max_bytes=len(data),
            workdir=tmp_path,
        )
    finally:
        client.close()
    assert transferred.size == len(data)
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


def test_the_bench_png_is_a_valid_image_of_about_the_size_asked(tmp_path: Path) -> None:
    path = tmp_path / "frame.png"
    width, height = write_png(path, 3 * MiB, width=512)
    assert 3 * MiB - 2 * 1539 < path.stat().st_size < 3 * MiB + 64 * 1024
    with Image.open(path) as image:
        assert image.size == (width, height) == (512, 3 * MiB // 1537)
        image.load()
    frame = FrameCheck(Expectation("PNG", width, height, 0))
    with path.open("rb") as source:
        while block := source.read(100_000):
            frame.feed(block)
    report = frame.finish()
    assert (report.problem, report.sha256) == (None, sha256_of(path))


def test_the_render_like_frame_passes_the_content_check() -> None:
    data = render_like_frame(192, 108)
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (192, 108)
    frame = FrameCheck(Expectation("PNG", 192, 108, len(data)))
    frame.feed(data)
    report = frame.finish()
    assert (report.problem, report.content_skipped) == (None, None)


@pytest.mark.parametrize("checked", [False, True], ids=["unchecked", "validated"])
def test_the_child_moves_the_big_frame(
    minimal: MinimalBlobServer, tmp_path: Path, checked: bool
) -> None:
    width, height = write_png(minimal.temp_path(TEMP_KEY), MiB, width=256)
    expect = {"width": width, "height": height, "content_max_bytes": 0} if checked else None
    result = child({"base_url": minimal.base_url, "workdir": str(tmp_path), "check": expect})
    assert result["bytes"] == minimal.final_path(FINAL_KEY).stat().st_size
    digest = sha256_of(minimal.temp_path(TEMP_KEY))
    assert sha256_of(minimal.final_path(FINAL_KEY)) == digest
    assert result["sha256"] == (digest if checked else None)


@pytest.fixture(scope="module")
def frame_1080p() -> bytes:
    return render_like_frame(1920, 1080)


@pytest.mark.parametrize("content_max_bytes", [None, 0, 64 * MiB])
def test_the_child_moves_frames_one_after_the_other(
    minimal: MinimalBlobServer, tmp_path: Path, content_max_bytes: int | None, frame_1080p: bytes
) -> None:
    data = frame_1080p
    minimal.temp_path(FRAME_TEMP_KEY).write_bytes(data)
    args = {
        "base_url": minimal.base_url,
        "workdir": str(tmp_path),
        "frames": 3,
        "content_max_bytes": content_max_bytes,
    }
    result = child(args)
    assert result["bytes"] == len(data)
    assert minimal.final_path(FINAL_KEY).read_bytes() == data


def test_a_refused_transfer_stores_nothing_in_the_minimal_server(
    minimal: MinimalBlobServer, tmp_path: Path
) -> None:
    """Refused at its end, after three chunks went out: the upload is cut short."""
    source = minimal.temp_path(TEMP_KEY)
    width, height = write_png(source, 7 * MiB, width=1024)
    source.write_bytes(source.read_bytes()[:-1])
    policy = RetryPolicy(retries=0)
    client = BlobClient(minimal.base_url, make_session(policy), timeout=5.0, policy=policy)
    try:
        with pytest.raises(InvalidFrame, match="truncated"):
            client.transfer_temp_to_final(
                temp_key=TEMP_KEY,
                final_key=FINAL_KEY,
                extension="png",
                max_bytes=8 * MiB,
                workdir=tmp_path,
                check=lambda: FrameCheck(Expectation("PNG", width, height, 0)),
            )
    finally:
        client.close()
    final = minimal.final_path(FINAL_KEY)
    deadline = time.monotonic() + 5
    while any(final.parent.iterdir()) and time.monotonic() < deadline:
        assert not final.exists()
        time.sleep(0.01)  # the server thread is still dropping its spool file
    assert list(final.parent.iterdir()) == []
