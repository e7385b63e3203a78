"""A streaming multipart/form-data parser (RFC 7578) for the Blob Service's uploads.

werkzeug's decoder compiles two regular expressions per boundary, and every upload from the
supervisor has a fresh boundary, so Python's pattern cache never hits: compiling them took
an eighth of the simulator's CPU in a run of 4 KiB uploads. This parser looks for the delimiter
`CRLF--boundary` with `bytes.find`, reading the body `read_bytes` at a time and carrying
over the few bytes at the end of a read that could begin a delimiter, so a part of any size
goes to its file with about two reads in memory.

Lenient where werkzeug is: a preamble and an epilogue are ignored, whitespace may follow a
delimiter, a part's header lines may be folded. Line breaks are CRLF only, as RFC 7578
requires and every client of the simulator sends (werkzeug also takes a bare CR or LF).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from werkzeug.datastructures import Headers
from werkzeug.http import parse_options_header

READ_BYTES = 1024 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_PADDING_BYTES = 64  # whitespace allowed between a delimiter and its line break
_FIELD_CHARSETS = frozenset({"ascii", "us-ascii", "utf-8", "iso-8859-1"})


class MultipartError(ValueError):
    """The body is not a well-formed multipart/form-data body."""


class FormTooLarge(MultipartError):
    """A field held in memory, or the number of parts, is over its limit."""


@dataclass(frozen=True)
class FilePart:
    """A part with a filename, its content written to `stream` (rewound to its start)."""

    name: str
    filename: str
    headers: Headers
    stream: IO[bytes]


@dataclass
class Form:
    """The parts in body order: fields as (name, text), files as they were written."""

    fields: list[tuple[str, str]]
    files: list[FilePart]


OpenFile = Callable[[str, str, Headers], IO[bytes]]


class _Body:
    """The unconsumed bytes of the body: `buf[pos:]`, refilled from `read`."""

    def __init__(self, read: Callable[[int], bytes], read_bytes: int) -> None:
        self._read = read
        self._read_bytes = read_bytes
        self.buf = b""
        self.pos = 0

    def fill(self) -> bool:
        """Append one read to what is left (positions restart at 0); False at the end."""
        chunk = self._read(self._read_bytes)
        if not chunk:
            return False
        self.buf = self.buf[self.pos :] + chunk
        self.pos = 0
        return True


def parse_form(
    read: Callable[[int], bytes],
    boundary: bytes,
    open_file: OpenFile,
    *,
    read_bytes: int = READ_BYTES,
    max_field_bytes: int | None = None,
    max_parts: int | None = None,
) -> Form:
    """Parse a multipart/form-data body read with `read(n)` (b"" at its end).

    Parts without a filename are fields, decoded as text; each part with one (even empty) is
    written to a stream from `open_file(name, filename, headers)`. Raises MultipartError on a
    malformed body, FormTooLarge past `max_field_bytes` in one field or `max_parts` parts;
    the streams opened so far are the caller's to close either way.
    """
    if not boundary:
        raise MultipartError("the Content-Type has no boundary")
    body = _Body(read, read_bytes)
    delimiter = b"\r\n--" + boundary
    form = Form([], [])
    # As werkzeug, the preamble ends at the boundary even without a line break before it:
    # a body opens with its first delimiter, which has none.
    closing = _skip_to_delimiter(body, b"--" + boundary, None)
    parts = 0
    while not closing:
        parts += 1
        if max_parts is not None and parts > max_parts:
            raise FormTooLarge(f"more than {max_parts} parts")
        headers = _read_headers(body)
        disposition = headers.get("content-disposition")
        if disposition is None:
            raise MultipartError("a part has no Content-Disposition header")
        _, options = parse_options_header(disposition)
        name, filename = options.get("name", ""), options.get("filename")
        if filename is None:
            chunks: list[bytes] = []
            sink = _field_sink(chunks, max_field_bytes)
            closing = _skip_to_delimiter(body, delimiter, sink, lead=2)
            value = b"".join(chunks).decode(_charset(headers), "replace")
            form.fields.append((name, value))
        else:
            stream = open_file(name, filename, headers)
            closing = _skip_to_delimiter(body, delimiter, stream.write, lead=2)
            stream.seek(0)
            form.files.append(FilePart(name, filename, headers, stream))
    return form


def _field_sink(
    chunks: list[bytes], max_bytes: int | None
) -> Callable[[bytes | memoryview], object]:
    size = 0

    def sink(data: bytes | memoryview) -> None:
        nonlocal size
        size += len(data)
        if max_bytes is not None and size > max_bytes:
            raise FormTooLarge(f"a field is over {max_bytes} bytes")
        chunks.append(bytes(data))

    return sink


def _charset(headers: Headers) -> str:
    """As werkzeug decodes a field: its declared charset if one of a safe few, else UTF-8."""
    content_type = headers.get("content-type")
    if content_type:
        charset = parse_options_header(content_type)[1].get("charset", "").lower()
        if charset in _FIELD_CHARSETS:
            return charset
    return "utf-8"


def _skip_to_delimiter(
    body: _Body,
    delimiter: bytes,
    sink: Callable[[bytes | memoryview], object] | None,
    *,
    lead: int = 0,
) -> bool:
    """Pass the bytes before the next delimiter line to `sink` (None drops them), all but
    the `lead` first ones, and consume the line; True when it is the closing delimiter.

    A part's content starts after the CRLF that ends its headers, yet that CRLF can also
    begin the delimiter of an empty part (RFC 2046: the CRLF before a boundary is the
    delimiter's), so the search starts on it, `lead=2`. A delimiter look-alike that is not
    followed by `--` or a line break is content."""
    keep = len(delimiter) - 1

    def emit(end: int) -> None:
        nonlocal lead
        start = body.pos + lead
        if sink is not None and end > start:
            sink(memoryview(body.buf)[start:end])
        lead = max(0, start - end)
        body.pos = end

    search = body.pos
    while True:
        buf = body.buf
        at = buf.find(delimiter, search)
        if at < 0:
            # The last `keep` bytes may begin a delimiter that the next read completes.
            emit(max(body.pos, len(buf) - keep))
        else:
            end = _delimiter_line_end(buf, at + len(delimiter))
            if end == 0:
                search = at + 1
                continue
            emit(at)
            if end is not None:
                body.pos = end
                return buf[at + len(delimiter) : at + len(delimiter) + 2] == b"--"
            # Kept from `at` until the next read tells whether this is a delimiter.
        if not body.fill():
            raise MultipartError("the body ends before its closing delimiter")
        search = 0


def _delimiter_line_end(buf: bytes, after: int) -> int | None:
    """Where the delimiter line whose boundary ends at `after` ends: past `--` (closing) or
    past optional whitespace and CRLF; 0 when the bytes there make it no delimiter, None
    when more bytes are needed to tell."""
    if buf[after : after + 2] == b"--":
        return after + 2
    end = after
    limit = min(len(buf), after + MAX_PADDING_BYTES)
    while end < limit and buf[end] in b" \t":
        end += 1
    if end + 2 > len(buf):
        return None if end < after + MAX_PADDING_BYTES else 0
    return end + 2 if buf[end : end + 2] == b"\r\n" else 0


def _read_headers(body: _Body) -> Headers:
    """The header block of a part, consumed up to the CRLF that ends the blank line after
    it, which is left for `_skip_to_delimiter` (`lead=2`)."""
    while len(body.buf) - body.pos < 2:
        if not body.fill():
            raise MultipartError("the body ends inside a part's headers")
    if body.buf[body.pos : body.pos + 2] == b"\r\n":
        return Headers()
    while (end := body.buf.find(b"\r\n\r\n", body.pos)) < 0:
        if len(body.buf) - body.pos > MAX_HEADER_BYTES:
            raise MultipartError(f"a part's headers are over {MAX_HEADER_BYTES} bytes")
        if not body.fill():
            raise MultipartError("the body ends inside a part's headers")
    block = body.buf[body.pos : end]
    body.pos = end + 2
    if len(block) > MAX_HEADER_BYTES:
        raise MultipartError(f"a part's headers are over {MAX_HEADER_BYTES} bytes")
    # Line by line as werkzeug reads them: folded lines joined, blank ones skipped, a line
    # without a colon a header without a value.
    lines: list[bytes] = []
    for line in block.splitlines():
        if line[:1] in (b" ", b"\t") and lines:
            lines[-1] += b" " + line.strip(b" \t")
        elif line.strip(b" \t"):
            lines.append(line.strip(b" \t"))
    headers = Headers()
    try:
        for line in lines:
            name, _, value = line.decode("utf-8").partition(":")
            headers.add(name.strip(" \t"), value.strip(" \t"))
    except ValueError as exc:  # not UTF-8, or a character no header value may hold
        raise MultipartError(f"a part's headers are malformed: {exc}") from exc
    return headers
