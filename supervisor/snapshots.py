"""One answer per second for every reader: a document (a dashboard page's data, a workload's
ETA) is computed by one process at a time and kept in Redis, so its cost does not grow with
the number of people watching, and most answers are one Redis read."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

logger = logging.getLogger(__name__)

MAX_AGE_MS = 1000
STALE_MS = 60_000
COMPUTE_LOCK_MS = 5000
WAIT_SECONDS = 0.5
_SEPARATOR = b"\n"


@dataclass(frozen=True)
class Snapshot:
    """A dashboard document: its JSON bytes and their ETag."""

    body: bytes
    etag: str

    @classmethod
    def of(cls, document: dict[str, Any]) -> Snapshot:
        """The document as JSON; its ETag leaves `generated_at` out, so a document that did
        not change keeps its ETag (and a poll gets a 304) however often it is made."""
        content = {key: value for key, value in document.items() if key != "generated_at"}
        fingerprint = json.dumps(content, sort_keys=True).encode()
        etag = hashlib.blake2b(fingerprint, digest_size=12).hexdigest()
        return cls(json.dumps(document, separators=(",", ":")).encode(), etag)

    def to_bytes(self) -> bytes:
        return self.etag.encode() + _SEPARATOR + self.body

    @classmethod
    def from_bytes(cls, raw: bytes) -> Snapshot:
        etag, _, body = raw.partition(_SEPARATOR)
        return cls(body, etag.decode())


def shared(client: redis.Redis, key: str, compute: Callable[[], dict[str, Any]]) -> Snapshot:
    """The document under `key`, computed at most once a second across every process: a
    fresh one (under a second old) is answered as it is; otherwise one caller computes it
    while the others answer the previous one (up to STALE_MS old) or, with none, wait for
    it (up to WAIT_SECONDS, then compute their own). So a slow document (a huge workload's)
    never makes more than one request wait."""
    document, fresh = _read(client, key)
    if document is not None and fresh:
        return document
    lock = f"{key}:computing"
    taken = _try(lambda: client.set(lock, b"1", nx=True, px=COMPUTE_LOCK_MS))
    if taken is None:  # another process computes it
        if document is not None:
            return document
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            time.sleep(0.02)
            document, _ = _read(client, key)
            if document is not None:
                return document
    try:
        snapshot = Snapshot.of(compute())
        _try(lambda: _write(client, key, snapshot))
        return snapshot
    finally:
        _try(lambda: client.delete(lock))


def _read(client: redis.Redis, key: str) -> tuple[Snapshot | None, bool]:
    """The document kept under `key` (fresh or not), and whether it is fresh."""
    answer = _try(lambda: client.mget(key, f"{key}:fresh"))
    if not isinstance(answer, list) or not answer[0]:
        return None, False
    return Snapshot.from_bytes(answer[0]), bool(answer[1])


def _write(client: redis.Redis, key: str, snapshot: Snapshot) -> None:
    with client.pipeline(transaction=False) as pipe:
        pipe.set(key, snapshot.to_bytes(), px=STALE_MS)
        pipe.set(f"{key}:fresh", b"1", px=MAX_AGE_MS)
        pipe.execute()


_UNAVAILABLE = object()


def _try(call: Callable[[], object]) -> object:
    """Redis is a cache here: without it every request computes its own document (an
    error answers _UNAVAILABLE, never None, so no one waits for a lock it could not see)."""
    try:
        return call()
    except redis.RedisError as exc:
        logger.warning("snapshot cache unavailable", extra={"error": str(exc)[:200]})
        return _UNAVAILABLE
