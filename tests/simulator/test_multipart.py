"""The simulator's streaming multipart/form-data parser (simulator/multipart.py), fed by
`read(n)` functions that cut the body into pieces of any size."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
from collections.abc import Callable, Iterator
from typing import IO

import pytest
from werkzeug.datastructures import Headers

from simulator.multipart import Form, FormTooLarge, MultipartError, parse_form
from supervisor.peers.multipart import _multipart_frame

BOUNDARY = b"b0undary"
MIB = 1024 * 1024
FIELDS = [("bucket", "rendered-frames"), ("key", "c/o/007.png"), ("type", "png")]


def upload_body(image: bytes, boundary: bytes = BOUNDARY) -> bytes:
    """A store-image body as the supervisor sends it."""
    head, tail = _multipart_frame(
        FIELDS,
        file_field="image",
        filename="007.png",
        content_type="image/png",
        boundary=boundary.decode(),
    )
    return head + image + tail


def reader(body: bytes, piece: int | None = None) -> Callable[[int], bytes]:
    """`read(n)` over `body`, giving at most `piece` bytes a call when set."""
    stream = io.BytesIO(body)
    return lambda n: stream.read(n if piece is None else min(n, piece))


def in_memory(name: str, filename: str, headers: Headers) -> IO[bytes]:
    return io.BytesIO()


def parse(body: bytes, *, piece: int | None = None, read_bytes: int = MIB, **limits: int) -> Form:
    return parse_form(reader(body, piece), BOUNDARY, in_memory, read_bytes=read_bytes, **limits)


def contents(form: Form) -> list[tuple[str, str, bytes]]:
    return [(part.name, part.filename, part.stream.read()) for part in form.files]


def test_fields_and_file_of_an_upload() -> None:
    image = b"\x89PNG\r\n\x1a\n" + os.urandom(4096)
    form = parse(upload_body(image))
    assert form.fields == FIELDS
    assert contents(form) == [("image", "007.png", image)]
    assert form.files[0].headers["Content-Type"] == "image/png"


@pytest.mark.parametrize("read_bytes", [1, 2, 3, 5, 7, 11, 64, 4099])
def test_the_body_read_in_pieces_of_any_size_parses_the_same(read_bytes: int) -> None:
    """Delimiters, header blocks and their line breaks fall across reads everywhere."""
    image = b"\r\n" + os.urandom(3000) + b"\r\n--b0undar\r"
    form = parse(upload_body(image), read_bytes=read_bytes)
    assert form.fields == FIELDS
    assert contents(form) == [("image", "007.png", image)]


def test_short_reads_parse_the_same() -> None:
    image = os.urandom(10_000)
    form = parse(upload_body(image), piece=13)
    assert (form.fields, contents(form)) == (FIELDS, [("image", "007.png", image)])


@pytest.mark.parametrize(
    "look_alike",
    [
        b"\r\n--b0undaryX\r\n",  # the boundary, then more of a name
        b"\r\n--b0undar\r\n",  # part of the boundary
        b"--b0undary\r\n",  # no line break before it
        b"\n--b0undary\r\n",  # a bare LF before it
        b"\r\n--b0undary \tX\r\n",  # whitespace, then not a line break
        b"\r\n--b0undary\n",  # a bare LF after it
        b"\r\n--b0undary-\r\n",  # one dash is not the closing delimiter
        b"\r\n-- b0undary\r\n",
    ],
)
@pytest.mark.parametrize("read_bytes", [3, 7, 1024])
def test_boundary_look_alikes_in_the_content_are_content(
    look_alike: bytes, read_bytes: int
) -> None:
    image = b"abc".join([b""] + [look_alike] * 50)
    form = parse(upload_body(image), read_bytes=read_bytes)
    assert contents(form) == [("image", "007.png", image)]


@pytest.mark.parametrize(
    "image", [b"", b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"x\r\n", b"--", b"\r\n--"]
)
def test_line_breaks_at_the_edges_of_the_content_are_kept(image: bytes) -> None:
    """Only the CRLF of the delimiter after a part is not the part's."""
    for read_bytes in (1, 2, 1024):
        form = parse(upload_body(image), read_bytes=read_bytes)
        assert contents(form) == [("image", "007.png", image)]


def test_preamble_epilogue_padding_and_a_closing_delimiter_without_crlf() -> None:
    body = (
        b"a preamble\r\n--b0undary \t\r\n"
        b'Content-Disposition: form-data; name="key"\r\n\r\n'
        b"c/o/001.png\r\n--b0undary\r\n"
        b'Content-Disposition: form-data; name="image"; filename=""\r\n\r\n'
        b"img\r\n--b0undary--"
    )
    for epilogue in (b"", b"\r\n", b"\r\nthe epilogue\r\n--b0undary\r\n"):
        form = parse(body + epilogue)
        assert form.fields == [("key", "c/o/001.png")]
        assert contents(form) == [("image", "", b"img")]


def test_a_delimiter_right_after_the_headers_ends_an_empty_part() -> None:
    """The CRLF that ends a part's headers is also the CRLF of a delimiter that follows it at
    once (RFC 2046), so the content is empty either way."""
    body = (
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="a"\r\n\r\n'
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="b"\r\n\r\n'
        b"\r\n--b0undary\r\n"
        b'Content-Disposition: form-data; name="c"; filename="c"\r\n\r\n'
        b"--b0undary--"
    )
    for read_bytes in (1, 2, 3, 1024):
        form = parse(body, read_bytes=read_bytes)
        assert form.fields == [("a", ""), ("b", "")]
        assert contents(form) == [("c", "c", b"")]


def test_an_empty_form_and_a_part_without_headers() -> None:
    assert parse(b"--b0undary--\r\n") == Form([], [])
    with pytest.raises(MultipartError, match="no Content-Disposition"):
        parse(b"--b0undary\r\n\r\nvalue\r\n--b0undary--\r\n")


def test_folded_headers_and_field_charsets() -> None:
    body = (
        b"--b0undary\r\n"
        b'Content-Disposition: form-data;\r\n\tname="caf\xc3\xa9"\r\n\r\n'
        b"d\xc3\xa9j\xc3\xa0\r\n--b0undary\r\n"
        b'Content-Disposition: form-data; name="latin"\r\n'
        b"Content-Type: text/plain; charset=ISO-8859-1\r\n\r\n"
        b"d\xe9j\xe0\r\n--b0undary\r\n"
        b'Content-Disposition: form-data; name="bad"\r\n\r\n'
        b"\xff\r\n--b0undary--\r\n"
    )
    assert parse(body).fields == [("café", "déjà"), ("latin", "déjà"), ("bad", "\ufffd")]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (upload_body(b"img")[:-4], "ends before its closing delimiter"),
        (upload_body(b"img")[:-8], "ends before its closing delimiter"),
        (upload_body(b"img").replace(b"--b0undary--\r\n", b"--b0undary\r\n"), "ends inside"),
        (upload_body(b"img").rpartition(b"\r\n--")[0], "ends before its closing delimiter"),
        (upload_body(b"img").replace(b"--b0undary", b"--other"), "ends before its closing"),
        (b"", "ends before its closing delimiter"),
        (b"--b0undary\r\nContent-Disposition: form-data", "ends inside a part's headers"),
        (b"--b0undary\r\nX: \xff\r\n\r\nx\r\n--b0undary--", "headers are malformed"),
        (b"--b0undary\r\nX: a\rb\r\n\r\nx\r\n--b0undary--", "no Content-Disposition"),
    ],
)
def test_malformed_bodies_are_refused(body: bytes, message: str) -> None:
    for read_bytes in (1, 1024):
        with pytest.raises(MultipartError, match=message):
            parse(body, read_bytes=read_bytes)


def test_limits() -> None:
    body = upload_body(b"img")
    assert parse(body, max_field_bytes=15, max_parts=4).fields == FIELDS
    with pytest.raises(FormTooLarge, match="over 14 bytes"):
        parse(body, max_field_bytes=14)
    with pytest.raises(FormTooLarge, match="more than 3 parts"):
        parse(body, max_parts=3)
    endless = b"--b0undary\r\n" + b"X-Pad: " + b"x" * 20_000
    with pytest.raises(MultipartError, match="headers are over"):
        parse(endless + b"\r\n\r\n", read_bytes=1000)
    with pytest.raises(MultipartError, match="headers are over"):
        parse(endless + b"\r\n\r\n", read_bytes=MIB)
    with pytest.raises(MultipartError, match="no boundary"):
        parse_form(reader(body), b"", in_memory)


class _Digest(io.RawIOBase):
    """A file part's sink that keeps only the digest and size of what it was given."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | memoryview) -> int:  # type: ignore[override]
        self.hash.update(data)
        self.size += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0


def test_a_20_mib_part_streams_through_with_little_memory() -> None:
    block = os.urandom(MIB - 3) + b"\r\n-"  # a delimiter's start at the end of each read
    blocks = 20
    head, tail = upload_body(b"").split(b"\r\n--b0undary--")
    tail = b"\r\n--b0undary--" + tail
    expected = hashlib.sha256(block * blocks).hexdigest()

    def pieces() -> Iterator[bytes]:
        yield head
        for _ in range(blocks):
            yield block
        yield tail

    source = pieces()

    def read(n: int) -> bytes:
        return next(source, b"")

    sinks: list[_Digest] = []

    def open_file(name: str, filename: str, headers: Headers) -> IO[bytes]:
        sinks.append(_Digest())
        return sinks[-1]  # type: ignore[return-value]

    tracemalloc.start()
    try:
        form = parse_form(read, BOUNDARY, open_file)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert form.fields == FIELDS
    assert [(s.size, s.hash.hexdigest()) for s in sinks] == [(blocks * len(block), expected)]
    # each read (1 MiB, made by the source) and the carried tail joined to it; never the part
    assert peak < 3 * MIB, f"peak {peak / MIB:.1f} MiB"
