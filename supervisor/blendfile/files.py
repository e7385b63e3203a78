"""Opening an untrusted .blend file: regular files only, compressed ones expanded with a cap.

Blender writes gzip (before 3.0) or zstd compressed files; either is streamed into an
unlinked temporary file, so BAT reads an ordinary file and nothing is left behind even if
the process is killed.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import stat
import tempfile
import zlib
from typing import IO, Any

import zstandard

from supervisor.blendfile.layout import BLEND_MAGIC
from supervisor.errors import BlendFileError

logger = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_SKIPPABLE = 0x184D2A50  # low nibble is free
_DECOMPRESS_CHUNK = 1024**2
_MAX_MESSAGE_CHARS = 300


def open_regular_file(path: str) -> IO[bytes]:
    """Open read-only; O_NONBLOCK so a FIFO planted at the path cannot block us."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise BlendFileError(f"cannot open file: {exc.strerror or exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BlendFileError("not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def uncompressed(raw: IO[bytes], max_bytes: int) -> IO[bytes]:
    """The file itself if uncompressed, else a capped, self-deleting decompressed copy."""
    head = os.pread(raw.fileno(), 8, 0)
    if head.startswith(BLEND_MAGIC):
        return raw
    if head.startswith(_GZIP_MAGIC):
        return _decompress(raw, "gzip", max_bytes)
    if len(head) >= 4 and (
        head[:4] == _ZSTD_MAGIC or int.from_bytes(head[:4], "little") & ~0xF == _ZSTD_SKIPPABLE
    ):
        return _decompress(raw, "zstd", max_bytes)
    if not head:
        raise BlendFileError("empty file")
    raise BlendFileError("not a .blend file (bad magic)")


def _decompress(raw: IO[bytes], kind: str, max_bytes: int) -> IO[bytes]:
    """Stream into an unlinked temporary file (gone even if we are killed), capped."""
    raw.seek(0)
    reader: Any
    if kind == "gzip":
        reader = gzip.GzipFile(fileobj=raw, mode="rb")
    else:
        reader = zstandard.ZstdDecompressor().stream_reader(
            raw, read_across_frames=True, closefd=False
        )
    with contextlib.ExitStack() as cleanup:
        out = cleanup.enter_context(tempfile.TemporaryFile(prefix="blend-"))
        with reader:
            head = b""
            written = 0
            while True:
                try:
                    chunk = reader.read(_DECOMPRESS_CHUNK)
                except EOFError as exc:
                    raise BlendFileError(f"truncated {kind} data") from exc
                except (OSError, zlib.error, zstandard.ZstdError) as exc:
                    raise BlendFileError(clip(f"corrupt {kind} data: {exc}")) from exc
                if not chunk:
                    break
                if len(head) < len(BLEND_MAGIC):
                    head += chunk[: len(BLEND_MAGIC) - len(head)]
                    if not BLEND_MAGIC.startswith(head):
                        raise BlendFileError(f"{kind}-compressed data is not a .blend file")
                written += len(chunk)
                if written > max_bytes:
                    raise BlendFileError(
                        f"{kind}-compressed file expands to more than {max_bytes} bytes"
                    )
                out.write(chunk)
        if head != BLEND_MAGIC:
            raise BlendFileError(f"{kind}-compressed data is not a .blend file")
        out.flush()
        logger.debug("decompressed %s data to %d bytes", kind, written)
        cleanup.pop_all()
        return out


def clip(message: str) -> str:
    """An error message cut to a length fit for a log line and an API answer."""
    if len(message) <= _MAX_MESSAGE_CHARS:
        return message
    return message[: _MAX_MESSAGE_CHARS - 3] + "..."
