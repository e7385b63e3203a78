"""A multipart/form-data upload body whose file part streams from its source, so an upload
of any size holds about two chunks in memory and reaches the socket in large pieces."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from urllib3.fields import RequestField

# One read-then-send step of an upload: a GiB is 512 steps, so per-step Python and
# syscall costs vanish (1, 2 and 4 MiB measured alike), and two steps' worth is the
# memory an upload holds.
UPLOAD_CHUNK_BYTES = 2 * 1024 * 1024


def _multipart_frame(
    fields: list[tuple[str, str]],
    *,
    file_field: str,
    filename: str,
    content_type: str,
    boundary: str,
) -> tuple[bytes, bytes]:
    """What goes before and after the file part of a multipart/form-data body.

    The text fields come first and the file last, each part's headers rendered by
    urllib3's `RequestField`, byte for byte what requests_toolbelt's MultipartEncoder
    sends, so the body can be streamed without an encoder in the way.
    """
    delimiter = f"--{boundary}\r\n".encode("ascii")
    head = bytearray()
    for name, value in fields:
        part = RequestField(name=name, data=value)
        part.make_multipart()
        head += delimiter + part.render_headers().encode("utf-8") + value.encode("utf-8")
        head += b"\r\n"
    part = RequestField(name=file_field, data=b"", filename=filename)
    part.make_multipart(content_type=content_type)
    head += delimiter + part.render_headers().encode("utf-8")
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")
    return bytes(head), tail


class PartSource(Protocol):
    """The content of a multipart file part: its exact size, its chunks, a way back."""

    size: int

    def chunks(self) -> Iterator[bytes | memoryview]:
        """The content from where the last rewind left it, `size` bytes in all."""
        ...

    def rewind(self) -> None:
        """Make `chunks` start again from the beginning (the upload is being retried)."""
        ...


class FilePart:
    """The rest of a seekable binary file from its current offset, read into one buffer."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._fileobj = fileobj
        self._start = fileobj.tell()
        self.size = fileobj.seek(0, os.SEEK_END) - self._start
        fileobj.seek(self._start)

    def chunks(self) -> Iterator[memoryview]:
        """Each chunk is a view of the same buffer, sent before the next one is read."""
        view = memoryview(bytearray(max(1, min(UPLOAD_CHUNK_BYTES, self.size))))
        left = self.size
        while left:
            read = self._fileobj.readinto(view[: min(left, len(view))])
            if not read:
                raise OSError("the upload source shrank while being sent")
            left -= read
            yield view[:read]

    def rewind(self) -> None:
        self._fileobj.seek(self._start)


class MultipartBody:
    """A multipart/form-data body whose last part streams from a `PartSource`.

    It is iterated, not read: given a `read` method urllib3 would pull 16 KiB at a time,
    this way each chunk of the source goes to the socket as it is. `len` gives requests
    the Content-Length (the body is never sent chunked); `tell` and `seek(0)` let urllib3
    rewind it to resend it whole on a retry, the source starting over.
    """

    def __init__(
        self,
        fields: list[tuple[str, str]],
        *,
        file_field: str,
        filename: str,
        content_type: str,
        source: PartSource,
    ) -> None:
        self._boundary = uuid.uuid4().hex
        self._head, self._tail = _multipart_frame(
            fields,
            file_field=file_field,
            filename=filename,
            content_type=content_type,
            boundary=self._boundary,
        )
        self._source = source
        self.len = len(self._head) + source.size + len(self._tail)
        self._pos = 0

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self._boundary}"

    def __iter__(self) -> Iterator[bytes | memoryview]:
        self._pos += len(self._head)
        yield self._head
        for chunk in self._source.chunks():
            self._pos += len(chunk)
            yield chunk
        self._pos += len(self._tail)
        yield self._tail

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset != 0 or whence != 0:
            raise OSError("the upload can only be rewound to its start")
        self._source.rewind()
        self._pos = 0
        return 0
