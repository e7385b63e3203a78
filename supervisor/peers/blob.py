"""The Blob Service of CONTRACT.md §3: .blend files, users' temporary uploads, final frames,
and the copy of a temporary upload to its final key, checked on the way
(supervisor/frames/validation.py) when the caller asks."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO

import requests
from urllib3.exceptions import HTTPError as Urllib3Error

from supervisor.errors import InvalidInput
from supervisor.keys import check_int, validate_blob_key, validate_extension
from supervisor.peers.http import PeerClient, declared_length, describe_exception
from supervisor.peers.multipart import UPLOAD_CHUNK_BYTES, FilePart, MultipartBody, PartSource

if TYPE_CHECKING:
    from supervisor.frames.validation import FrameCheck, FrameReport

CHUNK_BYTES = 1024 * 1024
# What a checked transfer reads before it opens the upload while its check cannot yet
# judge the frame's header (a JPEG's size may follow large metadata segments).
READ_AHEAD_BYTES = UPLOAD_CHUNK_BYTES
RETRIEVE_TEMP = "retrieve-temp"
_CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "exr": "image/x-exr",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    "bmp": "image/bmp",
    "webp": "image/webp",
    "tga": "image/x-tga",
    "hdr": "image/vnd.radiance",
}


@dataclass(frozen=True)
class Transferred:
    """A copy temp -> final that was stored: its size, and what its check found (None when
    it was not checked; a problem in it only when the check did not enforce)."""

    size: int
    report: FrameReport | None


class BlobClient(PeerClient):
    """The Blob Service: .blend files, temporary uploads from users, final frames."""

    peer = "blob-service"
    _prefix = "/api/blob-service"
    idempotent_posts = ("/api/blob-service/store-image",)

    def download_blend(self, key: str, dest: Path, *, max_bytes: int) -> int:
        """Stream a .blend file to `dest`; return its size."""
        params = {"bucket": "blend-files", "key": validate_blob_key(key)}
        return self._download("retrieve-blend", "/retrieve-blend", params, dest, max_bytes)

    def download_temp(self, key: str, dest: Path, *, max_bytes: int) -> int:
        """Stream a user's temporary upload to `dest`; return its size."""
        params = {"key": validate_blob_key(key)}
        return self._download(RETRIEVE_TEMP, "/retrieve-temp", params, dest, max_bytes)

    def download_final(self, key: str, dest: Path, *, max_bytes: int) -> int:
        """Stream a stored frame (`rendered-frames`, the key store-image was given) to
        `dest`; return its size. The real service's retrieve-image appends `.<type>` to a
        key without it, so the key's own extension is sent as the type."""
        key = validate_blob_key(key)
        extension = validate_extension(PurePosixPath(key).suffix.lstrip(".") or "png")
        params = {"bucket": "rendered-frames", "key": key, "type": extension}
        return self._download("retrieve-image", "/retrieve-image", params, dest, max_bytes)

    def open_temp(
        self, key: str, max_bytes: int
    ) -> AbstractContextManager[tuple[requests.Response, int | None]]:
        """GET a user's temporary upload: the 200 response and the length it declares (see
        `_get`); the body is the caller's to read, within the `with` block."""
        params = {"key": validate_blob_key(key)}
        return self._get(RETRIEVE_TEMP, "/retrieve-temp", params, max_bytes)

    def _download(
        self, operation: str, path: str, params: Mapping[str, str], dest: Path, max_bytes: int
    ) -> int:
        check_int("max_bytes", max_bytes, minimum=0)
        dest = Path(dest)
        with self._get(operation, path, params, max_bytes) as (resp, _declared):
            try:
                return self._stream_to(resp, operation, dest, max_bytes)
            except BaseException:
                dest.unlink(missing_ok=True)
                raise

    @contextmanager
    def _get(
        self, operation: str, path: str, params: Mapping[str, str], max_bytes: int
    ) -> Iterator[tuple[requests.Response, int | None]]:
        """A 200 response with its declared length, refused early when that exceeds
        `max_bytes`; the body is the caller's to read."""
        with self._exchange(operation, "GET", self._prefix + path, params=params) as resp:
            if resp.status_code != 200:
                raise self._status_error(resp, operation)
            declared = declared_length(resp)
            if declared is not None and declared > max_bytes:
                raise self.peer_error(
                    operation,
                    f"body of {declared} bytes exceeds the limit of {max_bytes}",
                    status=None,
                    transient=False,
                )
            yield resp, declared

    def _stream_to(
        self,
        resp: requests.Response,
        operation: str,
        dest: Path,
        max_bytes: int,
        check: FrameCheck | None = None,
    ) -> int:
        """Write the body to `dest`, each chunk fed to `check` (when given) before it is
        written; return its size."""
        written = 0
        with dest.open("wb") as out:
            try:
                for chunk in resp.iter_content(CHUNK_BYTES):
                    written += len(chunk)
                    if written > max_bytes:
                        raise self.peer_error(
                            operation,
                            f"body exceeds the limit of {max_bytes} bytes",
                            status=None,
                            transient=False,
                        )
                    if check is not None:
                        check.feed(chunk)
                    out.write(chunk)
            except (requests.RequestException, Urllib3Error) as exc:
                raise self.peer_error(
                    operation, describe_exception(exc), status=None, transient=True
                ) from exc
        return written

    def store_image(self, *, key: str, extension: str, source: BinaryIO | Path) -> None:
        """Upload a final frame, streamed from a path or a seekable binary file object."""
        key = validate_blob_key(key)
        ext = validate_extension(extension)
        if isinstance(source, str | os.PathLike):
            with open(source, "rb") as fileobj:
                self._upload(key, ext, FilePart(fileobj))
        else:
            if not source.seekable():
                raise InvalidInput("store_image needs a seekable file object")
            self._upload(key, ext, FilePart(source))

    def _upload(self, key: str, ext: str, source: PartSource) -> None:
        operation = "store-image"
        body = MultipartBody(
            [("bucket", "rendered-frames"), ("key", key), ("type", ext)],
            file_field="image",
            filename=PurePosixPath(key).name,
            content_type=_CONTENT_TYPES.get(ext, "application/octet-stream"),
            source=source,
        )
        headers = {"Content-Type": body.content_type}
        with self._exchange(
            operation, "POST", f"{self._prefix}/store-image", data=body, headers=headers
        ) as resp:
            if not 200 <= resp.status_code < 300:
                raise self._status_error(resp, operation)

    def delete_temp(self, key: str) -> None:
        """Delete a temporary upload; 404 counts as done, so a repeat is harmless."""
        operation = "delete-temp"
        params = {"key": validate_blob_key(key)}
        path = f"{self._prefix}/delete-temp"
        with self._exchange(operation, "DELETE", path, params=params) as resp:
            if not (200 <= resp.status_code < 300 or resp.status_code == 404):
                raise self._status_error(resp, operation)

    def transfer_temp_to_final(
        self,
        *,
        temp_key: str,
        final_key: str,
        extension: str,
        max_bytes: int,
        workdir: Path | None = None,
        check: Callable[[], FrameCheck] | None = None,
    ) -> Transferred:
        """Copy a temporary upload to its final key; return its size and check report.

        When the Blob Service declares the temp blob's length (it does for plain files),
        its body is streamed straight into the upload, in large chunks and without
        touching the disk; a retried upload fetches it again. Otherwise it goes through a
        temp file in `workdir`, removed whatever happens, which enforces `max_bytes` as
        it arrives. Memory stays bounded either way. The temporary copy is not deleted.

        `check` makes a FrameCheck for each attempt (a retried upload reads the blob, and
        checks it, from the start again). Every byte is fed to it before it is sent, and
        the first chunk before the upload is even opened, so a frame whose first bytes are
        wrong opens none; `finish` runs before the last chunk is sent, so a frame refused
        there leaves the upload short of its end, and the Blob Service stores nothing (its
        form parser fails on a short body). A refusal raises InvalidFrame as it is, never
        retried; the connections it cut are closed, not pooled. Through a temp file, the
        whole file is checked before the upload starts.
        """
        validate_blob_key(temp_key)
        validate_blob_key(final_key)
        ext = validate_extension(extension)
        check_int("max_bytes", max_bytes, minimum=0)
        with _TempBlob(self, temp_key, max_bytes, check) as blob:
            if blob.declared is None:
                return self._transfer_through_file(
                    blob.response, final_key, ext, max_bytes, workdir, check
                )
            blob.read_ahead()
            self._upload(final_key, ext, blob)
            return Transferred(blob.size, blob.report)

    def _transfer_through_file(
        self,
        resp: requests.Response,
        final_key: str,
        ext: str,
        max_bytes: int,
        workdir: Path | None,
        check: Callable[[], FrameCheck] | None,
    ) -> Transferred:
        frame_check = None if check is None else check()
        fd, name = tempfile.mkstemp(prefix="frame-", suffix=".part", dir=workdir)
        os.close(fd)
        tmp = Path(name)
        try:
            size = self._stream_to(resp, RETRIEVE_TEMP, tmp, max_bytes, frame_check)
            report = None if frame_check is None else frame_check.finish()
            self.store_image(key=final_key, extension=ext, source=tmp)
            return Transferred(size, report)
        finally:
            tmp.unlink(missing_ok=True)


class _TempBlob:
    """A temp blob's body as the file part of an upload, fetched once more per rewind, and
    checked on the way when a check factory is given.

    Entering performs the GET (a refusal or a declared length over `max_bytes` raises
    there); `declared` is the length the response declares, None when there is none
    (chunked or encoded: the caller then needs a temp file). Chunks are read straight
    from urllib3, undecoded and as large as `UPLOAD_CHUNK_BYTES`; a failure while reading
    them is a transient retrieve-temp PeerError, which urllib3 lets through untouched.
    `read_ahead` starts a check and reads the first chunk before the upload starts, more
    (up to `READ_AHEAD_BYTES`) only while the check cannot yet judge the header. Each chunk is
    fed to the check as it is read, before it is handed on, and the last one after the
    check finished, so InvalidFrame comes out of the upload's body before the body is
    whole. A rewind after some of the body was handed on fetches it again, insists on the
    same length, and starts a new check. Exiting releases the response; its connection
    goes back to the pool when the body was read to the end, closed otherwise.
    """

    def __init__(
        self,
        client: BlobClient,
        key: str,
        max_bytes: int,
        check: Callable[[], FrameCheck] | None = None,
    ) -> None:
        self._client = client
        self._key = key
        self._max_bytes = max_bytes
        self._make_check = check
        self._stack = ExitStack()
        self._read = 0
        self._ahead: list[bytes] = []
        self._handed = False
        self._check: FrameCheck | None = None
        self.response: requests.Response
        self.declared: int | None = None
        self.report: FrameReport | None = None

    def __enter__(self) -> _TempBlob:
        self._open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.__exit__(exc_type, exc, tb)

    def _open(self) -> None:
        get = self._client.open_temp(self._key, self._max_bytes)
        self.response, self.declared = self._stack.enter_context(get)
        self._read = 0
        self._ahead = []
        self._handed = False
        self._check = None
        self.report = None

    @property
    def size(self) -> int:
        if self.declared is None:
            raise RuntimeError("the temp blob declares no length")
        return self.declared

    def read_ahead(self) -> None:
        """Start a check, then read and check the start of the body (all of a small one)
        before any upload."""
        self._check = None if self._make_check is None else self._make_check()
        if self._check is not None:
            self._check.declare_size(self.size)
        if self.size == 0:
            self._finish()
        while self._read < self.size:
            self._ahead.append(self._next())
            if self._check is None or self._check.header_known:
                break
            if self._read >= READ_AHEAD_BYTES:
                break

    def chunks(self) -> Iterator[bytes]:
        self._handed = True
        while self._ahead:
            yield self._ahead.pop(0)
        while self._read < self.size:
            yield self._next()

    def _next(self) -> bytes:
        """The next chunk, fed to the check; after the last one the check is finished."""
        want = min(UPLOAD_CHUNK_BYTES, self.size - self._read)
        try:
            data = self.response.raw.read(want, decode_content=False)
        except (requests.RequestException, Urllib3Error) as exc:
            raise self._client.peer_error(
                RETRIEVE_TEMP, describe_exception(exc), status=None, transient=True
            ) from exc
        if not data:
            raise self._client.peer_error(
                RETRIEVE_TEMP, "body ended early", status=None, transient=True
            )
        self._read += len(data)
        if self._check is not None:
            self._check.feed(data)
            if self._read == self.size:
                self._finish()
        return data

    def _finish(self) -> None:
        if self._check is not None:
            self.report = self._check.finish()

    def rewind(self) -> None:
        if not self._handed:
            return
        size = self.declared
        self._stack.close()
        self._open()
        if self.declared != size:
            raise self._client.peer_error(
                RETRIEVE_TEMP,
                f"length changed between attempts ({size} then {self.declared} bytes)",
                status=None,
                transient=True,
            )
        self.read_ahead()
