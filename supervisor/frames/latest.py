"""The last frames stored per workload, newest first, for the dashboard's thumbnails and
its frames-per-second. Hot state in Redis, written after the commit that stored them: a
lost write (Redis down or flushed) only shortens the list until the next frames arrive."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis

logger = logging.getLogger(__name__)

KEEP = 16
# A finished workload's list outlives it long enough for a look at the dashboard.
TTL_SECONDS = 7 * 24 * 3600


def _key(workload_id: str) -> str:
    return f"supervisor:latest-frames:{workload_id}"


@dataclass(frozen=True)
class StoredFrame:
    frame: int
    at: float  # Unix time
    user_id: str | None


def remember(client: redis.Redis, stored: Iterable[tuple[str, int, str | None]]) -> None:
    """Note frames (workload id, frame number, uploader) stored just now; never raises."""
    now = time.time()
    by_workload: dict[str, list[str]] = {}
    for workload_id, frame, user_id in stored:
        entry = json.dumps({"frame": frame, "at": now, "user_id": user_id})
        by_workload.setdefault(workload_id, []).append(entry)
    if not by_workload:
        return
    try:
        with client.pipeline(transaction=False) as pipe:
            for workload_id, entries in by_workload.items():
                key = _key(workload_id)
                pipe.lpush(key, *entries)
                pipe.ltrim(key, 0, KEEP - 1)
                pipe.expire(key, TTL_SECONDS)
            pipe.execute()
    except redis.RedisError as exc:
        logger.warning("latest frames not noted", extra={"error": str(exc)[:200]})


def latest(client: redis.Redis, workload_id: str) -> list[StoredFrame]:
    """The workload's last stored frames, newest first (at most KEEP)."""
    frames = []
    for raw in client.lrange(_key(workload_id), 0, KEEP - 1):
        entry = json.loads(raw)
        frames.append(StoredFrame(int(entry["frame"]), float(entry["at"]), entry.get("user_id")))
    return frames


def frames_per_second(frames: list[StoredFrame], now: float) -> float | None:
    """Frames stored per second over the span of the last frames, up to now (so a stalled
    workload's rate falls); None until two frames give a span."""
    if len(frames) < 2:
        return None
    span = now - frames[-1].at
    return len(frames) / span if span > 0 else None
