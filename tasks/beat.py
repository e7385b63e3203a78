"""Exactly one beat: the scheduler sends nothing unless it holds a lock in Redis.

A second beat (a second deploy, a forgotten process) keeps polling for the lock and takes
over within the lock's lifetime if the first one dies.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from pathlib import Path
from typing import Any

import redis
from celery.beat import PersistentScheduler
from redis.exceptions import LockError

from supervisor import metrics

logger = logging.getLogger(__name__)

BEAT_LOCK_NAME = "supervisor:beat-lock"
BEAT_LOCK_SECONDS = 30


class BeatLock:
    """A Redis lock held by the running beat and renewed on every tick."""

    def __init__(self, client: redis.Redis, *, ttl: float = BEAT_LOCK_SECONDS) -> None:
        self.lock = client.lock(BEAT_LOCK_NAME, timeout=ttl, thread_local=False)
        self.held = False

    def hold(self) -> bool:
        """Acquire, or renew if already ours; False while another beat holds it."""
        try:
            if self.held:
                self.lock.reacquire()
            else:
                self.held = self.lock.acquire(blocking=False)
                if self.held:
                    logger.info("beat lock acquired", extra={"host": socket.gethostname()})
        except LockError:
            logger.warning("beat lock lost; another beat may run now")
            self.held = False
        return self.held

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(LockError):
                self.lock.release()
            self.held = False


class LockedScheduler(PersistentScheduler):
    """PersistentScheduler that only ticks while it holds the beat lock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = self.app.conf.supervisor_settings
        self.beat_lock = BeatLock(redis.Redis.from_url(settings.redis_url))
        self._waiting_logged = False

    def setup_schedule(self) -> None:
        # The schedule file's directory (var/ by default) is git-ignored, so a fresh checkout
        # or a new dyno's empty disk lacks it, and shelve cannot create a file there. The
        # file only remembers last run times, so starting with a new one is harmless.
        if self.schedule_filename:
            Path(self.schedule_filename).parent.mkdir(parents=True, exist_ok=True)
        super().setup_schedule()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.beat_lock.hold():
            if not self._waiting_logged:
                logger.info("another beat holds the lock; this one waits")
                self._waiting_logged = True
            return min(self.max_interval, BEAT_LOCK_SECONDS / 3)
        self._waiting_logged = False
        try:
            metrics.note_beat_tick(self.beat_lock.lock.redis)
        except redis.RedisError:
            logger.warning("could not note the beat tick", exc_info=True)
        return min(super().tick(*args, **kwargs), BEAT_LOCK_SECONDS / 3)

    def close(self) -> None:
        super().close()
        self.beat_lock.release()
