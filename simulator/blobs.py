"""The Blob Service's buckets as folders on disk, with keys that can never leave their bucket.

Writes go to a spool file first and are renamed into place, so a reader never sees half a
blob and an interrupted upload leaves nothing behind in a bucket.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

BLEND_BUCKET = "blend-files"
TEMP_BUCKET = "temp"
FRAMES_BUCKET = "rendered-frames"
BUCKETS = (BLEND_BUCKET, TEMP_BUCKET, FRAMES_BUCKET)
CHUNK_BYTES = 1024 * 1024
MAX_KEY_BYTES = 1024


class BadKey(ValueError):
    """A key that is empty, malformed or would escape its bucket."""


class UnknownBucket(ValueError):
    """A bucket name the Blob Service does not have."""


def check_key(key: object) -> str:
    """Return `key` if it is a plain relative path of non-empty, non-dot segments."""
    if not isinstance(key, str) or not key:
        raise BadKey("key must be a non-empty string")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise BadKey("key is too long")
    if "\x00" in key or "\\" in key or any(ord(ch) < 32 for ch in key):
        raise BadKey("key contains NUL, a control character or a backslash")
    if key.startswith("/") or (len(key) > 1 and key[1] == ":"):
        raise BadKey("key is absolute")
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        raise BadKey("key has an empty, '.' or '..' segment")
    return key


class BlobStore:
    """Buckets under `<root>/buckets/`; spool files under `<root>/spool/` on the same disk."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.spool = self.root / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        self._buckets: dict[str, Path] = {}
        for name in BUCKETS:
            folder = self.root / "buckets" / name
            folder.mkdir(parents=True, exist_ok=True)
            self._buckets[name] = folder.resolve()

    def path(self, bucket: str, key: str) -> Path:
        """The file of `key`, resolved and checked to stay inside its bucket.

        A checked key has no '.' or '..' segment, so only a symlink inside the bucket could
        lead out of it: the key's own segments are looked at (one lstat each) and the whole
        path is resolved only when one of them is a link. Resolving every path in full cost
        the simulator a fifth of its CPU in the intake benchmark."""
        folder = self._buckets.get(bucket)
        if folder is None:
            raise UnknownBucket(f"no bucket {bucket!r}")
        segments = check_key(key).split("/")
        candidate = folder.joinpath(*segments)
        prefix = str(folder)
        for segment in segments:
            prefix = f"{prefix}/{segment}"
            try:
                link = stat.S_ISLNK(os.lstat(prefix).st_mode)
            except (FileNotFoundError, NotADirectoryError):
                return candidate  # nothing below a missing segment can be a link
            if link:
                return self._resolved(folder, candidate)
        return candidate

    @staticmethod
    def _resolved(folder: Path, candidate: Path) -> Path:
        resolved = candidate.resolve()
        if resolved == folder or not resolved.is_relative_to(folder):
            raise BadKey("key escapes its bucket")
        return resolved

    def exists(self, bucket: str, key: str) -> bool:
        return self.path(bucket, key).is_file()

    def size(self, bucket: str, key: str) -> int:
        return self.path(bucket, key).stat().st_size

    def open(self, bucket: str, key: str) -> BinaryIO:
        """Open a blob for reading; FileNotFoundError when absent."""
        path = self.path(bucket, key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return path.open("rb")

    def read(self, bucket: str, key: str) -> bytes:
        with self.open(bucket, key) as source:
            return source.read()

    @contextmanager
    def spool_file(self) -> Iterator[tuple[Path, BinaryIO]]:
        """A new spool file, removed on exit unless it was moved into a bucket."""
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=self.spool)
        path = Path(name)
        try:
            with open(fd, "w+b") as handle:
                yield path, handle
        finally:
            path.unlink(missing_ok=True)

    def adopt(self, bucket: str, key: str, spooled: Path) -> Path:
        """Move a finished spool file into place under `key` (atomic rename, same disk)."""
        target = self.path(bucket, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(spooled, target)
        return target

    def write(self, bucket: str, key: str, data: bytes) -> Path:
        with self.spool_file() as (spooled, handle):
            handle.write(data)
            handle.flush()
            return self.adopt(bucket, key, spooled)

    def copy_in(self, bucket: str, key: str, source: Path) -> Path:
        """Copy a local file into a bucket in chunks."""
        with self.spool_file() as (spooled, handle), Path(source).open("rb") as reader:
            shutil.copyfileobj(reader, handle, CHUNK_BYTES)
            handle.flush()
            return self.adopt(bucket, key, spooled)

    def delete(self, bucket: str, key: str) -> bool:
        """Remove a blob; False when there was none."""
        path = self.path(bucket, key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def clear(self) -> None:
        """Empty every bucket (for a fresh start between tests)."""
        for folder in self._buckets.values():
            for entry in folder.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()

    def keys(self, bucket: str) -> list[str]:
        """Every key in a bucket, sorted, as '/'-separated relative paths."""
        folder = self._buckets[bucket]
        found = [
            path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()
        ]
        return sorted(found)
