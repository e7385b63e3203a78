"""Simulated render nodes ("users"): they take messages from the User Service, "render" frames
into the temp bucket and report through the User Manager's exchange.

Each user renders one frame at a time on the shared scheduler, so many users cost heap
entries, not threads. A generation counter per user makes timers scheduled before a
`stop-work` or a new `start-rendering` fall silent. Behaviour knobs (disconnect, failures,
early completion) are decided per user from the seed, so a seeded run is reproducible per
user whatever the thread interleaving.

Events go out through `route` (the User Manager's forwarding, which may drop them as the real
one does), never straight to the broker.

In real peer mode with `join_batch` and `join_delay`, only the first `join_batch` users are
connected at start; the User Manager connects the rest over time (`connect_next`).

Each user has a farm profile (simulator/profiles.py): a speed factor on its frame times, which
may grow once it has rendered for a while, and maybe a point at which it hangs. A hung user
keeps its frames and its connection: it never uploads, reports or disconnects again, ignores
every message, and never answers an acknowledged one (the User Service's call times out).

A bad user (`bad_users`) uploads a bad image for every frame it renders (simulator/render.py
`bad_frame`), announced as a PNG like any other; it behaves normally otherwise. A good user's
image is the renderer's, announced with the extension of what it is (jpg for a JPEG).

Every upload to the temp bucket is remembered as the SHA-256 of its bytes by session and frame
(32 bytes each, kept after the supervisor deletes the temp copy), so a test can tell whether
the supervisor stored exactly what a user uploaded.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.blobs import TEMP_BUCKET, BlobStore
from simulator.config import SimulatorConfig
from simulator.profiles import (
    Profile,
    assign_bad_users,
    assign_profiles,
    sample_frame_time,
    share_count,
)
from simulator.render import RenderFrame, bad_frame, extension_of
from simulator.scheduler import Scheduler

logger = logging.getLogger(__name__)

USER_TOPICS = ("start-rendering", "stop-work", "retrieve-frames-from-frame-list", "retrieve-frame")
RECENT = 100
TIMELINE_LIMIT = 200_000
FRAME_LIST_TOPICS = ("start-rendering", "retrieve-frames-from-frame-list")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

# Hands one event of a user to the User Manager: (session_id, topic, data) -> sent.
Route = Callable[[str | None, str, dict[str, Any]], bool]


class BadMessage(ValueError):
    """A User Service message whose topic or data does not follow the contract."""


class NoAnswer(Exception):
    """The user is hung: an acknowledged message to it is never answered."""


def _segment(value: str) -> str:
    """A value made safe to be one segment of a blob key."""
    cleaned = _UNSAFE.sub("_", value)[:100]
    return cleaned if cleaned not in ("", ".", "..") else "_"


def _frame_number(value: Any) -> int:
    """A frame number, tolerating the numeric strings peers are known to send."""
    if isinstance(value, bool):
        raise BadMessage("a frame number must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,12}", value.strip()):
        return int(value)
    raise BadMessage("a frame number must be an integer")


def _frame_list(data: dict[str, Any]) -> list[int]:
    frames = data.get("frame_list")
    if not isinstance(frames, list):
        raise BadMessage("frame_list must be a list of frame numbers")
    return [_frame_number(f) for f in frames]


@dataclass
class SimUser:
    """One render node. Fields are guarded by `lock`; the pool's lock guards assignment."""

    user_id: str
    rng: random.Random
    disconnect_after: int | None = None
    early_complete: bool = False
    session_id: str | None = None
    connected: bool = True
    disconnected: bool = False
    blend_hash: str | None = None
    queue: deque[int] = field(default_factory=deque)
    rendered: dict[int, str] = field(default_factory=dict)
    owed: list[int] = field(default_factory=list)
    frames_done: int = 0
    generation: int = 0
    busy: bool = False
    report_due: bool = False
    due_at: float = 0.0
    profile: Profile = field(default_factory=Profile)
    render_seconds: float = 0.0
    frame_seconds: float = 0.0
    stalled: bool = False
    bad_kind: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def status(self) -> str:
        if self.disconnected:
            return "disconnected"
        if not self.connected:
            return "not-connected"
        if self.session_id is None:
            return "idle"
        return "rendering" if self.queue else "assigned"

    def reset(self) -> None:
        """Forget the current work; pending timers become stale."""
        self.generation += 1
        self.busy = False
        self.report_due = False
        self.queue.clear()
        self.owed.clear()

    def snapshot(self) -> dict[str, Any]:
        return {
            "status": self.status(),
            "session_id": self.session_id,
            "blend_file_hash": self.blend_hash,
            "queue": list(self.queue)[:50],
            "queue_length": len(self.queue),
            "rendered_frames": sorted(self.rendered),
            "owed_frames": list(self.owed),
            "frames_done": self.frames_done,
            "disconnects_after": self.disconnect_after,
            "early_complete": self.early_complete,
            "stalled": self.stalled,
            "bad_kind": self.bad_kind,
            **self.profile.public(self.render_seconds),
        }


class UserPool:
    """All simulated users, the idle pool the User Manager hands out, and their rendering."""

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        blobs: BlobStore,
        route: Route,
        scheduler: Scheduler,
        renderer: RenderFrame,
        blend_lookup: Callable[[str], Path | None],
    ) -> None:
        self._config = config
        self._blobs = blobs
        self._route = route
        self._scheduler = scheduler
        self._renderer = renderer
        self._blend_lookup = blend_lookup
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._users: dict[str, SimUser] = {}
        self._idle: deque[str] = deque()
        self._arriving: deque[str] = deque()
        # A leaf lock: a user's event is routed with the user's lock held and asks
        # is_forgotten, while release holds the pool's lock and takes users' locks, so the
        # forgotten set cannot be guarded by the pool's lock.
        self._forgotten_lock = threading.Lock()
        self._forgotten: set[str] = set()
        self.dropped: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.dropped_counts: Counter[str] = Counter()
        self._uploads: dict[str, dict[int, set[bytes]]] = {}
        self._timeline: deque[dict[str, Any]] = deque(maxlen=TIMELINE_LIMIT)
        self._create(config)

    def _create(self, config: SimulatorConfig) -> None:
        master = random.Random(config.seed)
        ids = [f"{config.user_prefix}-{index:03d}" for index in range(1, config.users + 1)]
        disconnecting = set(master.sample(ids, share_count(len(ids), config.disconnect_share)))
        early = set(master.sample(ids, share_count(len(ids), config.early_complete_share)))
        profiles = assign_profiles(ids, config)
        bad = assign_bad_users(ids, config)
        staggered = config.real_peers and config.join_batch > 0 and config.join_delay > 0
        connected_at_start = config.join_batch if staggered else len(ids)
        for user_id in ids:
            seed = f"{config.seed}/{user_id}" if config.seed is not None else None
            user = SimUser(
                user_id,
                random.Random(seed),
                early_complete=user_id in early,
                profile=profiles[user_id],
                bad_kind=bad.get(user_id),
            )
            if user_id in disconnecting:
                user.disconnect_after = master.randint(1, 3)
            self._users[user_id] = user
            if len(self._idle) < connected_at_start:
                self._idle.append(user_id)
            else:
                user.connected = False
                self._arriving.append(user_id)

    # ------------------------------------------------------------ User Manager side

    def take_idle(self, count: int, session_id: str) -> list[str]:
        """Hand up to `count` idle users to a session."""
        taken = []
        with self._lock:
            while self._idle and len(taken) < count:
                user = self._users[self._idle.popleft()]
                with user.lock:
                    user.reset()
                    user.rendered.clear()
                    user.session_id = session_id
                taken.append(user.user_id)
        return taken

    def connect_next(self, count: int) -> list[str]:
        """Connect up to `count` users not connected yet; they join the idle pool."""
        joined = []
        with self._lock:
            while self._arriving and len(joined) < count:
                user = self._users[self._arriving.popleft()]
                with user.lock:
                    user.connected = True
                self._idle.append(user.user_id)
                joined.append(user.user_id)
        return joined

    def arriving(self) -> int:
        """How many users have yet to connect."""
        with self._lock:
            return len(self._arriving)

    def reset_all(self) -> list[str]:
        """Every connected user with a session stops, forgets it and goes back to the idle
        pool, in user order (what a restarted User Manager sees of the nodes); return them."""
        moved = []
        with self._lock:
            for user_id in sorted(self._users):
                user = self._users[user_id]
                with user.lock:
                    if user.session_id is None or user.disconnected:
                        continue
                    self._to_idle(user)
                moved.append(user_id)
        return moved

    def forget_all(self) -> list[str]:
        """What the real User Manager loses in a restart: it knows no node any more, idle or
        handed out. The nodes stay connected to the User Service and keep what they were
        doing, but their events are dropped (see is_forgotten), and they are never offered
        again until some supervisor releases them. Return them, in user order."""
        with self._lock:
            connected = sorted(
                u.user_id for u in self._users.values() if u.connected and not u.disconnected
            )
            with self._forgotten_lock:
                self._forgotten.update(connected)
            self._idle.clear()
        return connected

    def is_forgotten(self, user_id: str | None) -> bool:
        with self._forgotten_lock:
            return user_id in self._forgotten

    def release(self, session_id: str, user_ids: list[str]) -> list[str]:
        """Return a session's users to the idle pool (they stop rendering); return those
        moved. A user the User Manager forgot in a restart is taken from any session."""
        moved = []
        with self._lock:
            for user_id in user_ids:
                user = self._users.get(user_id)
                if user is None:
                    continue
                with user.lock:
                    with self._forgotten_lock:
                        forgotten = user_id in self._forgotten
                        if user.disconnected or (user.session_id != session_id and not forgotten):
                            continue
                        self._forgotten.discard(user_id)
                    self._to_idle(user)
                moved.append(user_id)
        return moved

    def _to_idle(self, user: SimUser) -> None:
        """Stop the user and put it in the idle pool; the caller holds both locks."""
        self._note(user, "reset")
        user.reset()
        user.rendered.clear()
        user.session_id = None
        self._idle.append(user.user_id)

    def users_of(self, session_id: str) -> list[str]:
        """The users the User Manager maps to a session (not those it forgot in a restart)."""
        with self._lock, self._forgotten_lock:
            users = [u for u in self._users.values() if u.user_id not in self._forgotten]
        return sorted(u.user_id for u in users if u.session_id == session_id and not u.disconnected)

    def assignments(self) -> dict[str, list[str]]:
        """The users of every session, as the User Manager maps them (disconnected ones are
        forgotten, and so are all those a restart lost)."""
        with self._lock, self._forgotten_lock:
            users = [u for u in self._users.values() if u.user_id not in self._forgotten]
        result: dict[str, list[str]] = {}
        for user in sorted(users, key=lambda u: u.user_id):
            if user.session_id is not None and not user.disconnected:
                result.setdefault(user.session_id, []).append(user.user_id)
        return result

    def idle(self) -> list[str]:
        with self._lock:
            return list(self._idle)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            users = list(self._users.values())
        result = {}
        for user in users:
            with user.lock:
                result[user.user_id] = user.snapshot()
        return result

    # ------------------------------------------------------------ User Service side

    def deliver(self, user_id: str, topic: str, data: dict[str, Any]) -> bool | None:
        """Hand one message to a user: None if it is unknown or gone, else whether it
        acknowledged (only `retrieve-frame` can answer False). BadMessage on a bad body;
        NoAnswer for a `retrieve-frame` to a hung user, which ignores every message."""
        if topic not in USER_TOPICS:
            raise BadMessage(f"unknown topic {topic!r}")
        frames = _frame_list(data) if topic in FRAME_LIST_TOPICS else []
        frame = _frame_number(data.get("frame-number")) if topic == "retrieve-frame" else 0
        user = self._users.get(user_id)
        if user is None:
            return None
        with user.lock:
            if user.disconnected or not user.connected:
                return None
            if user.stalled:
                logger.debug(
                    "message to a hung user",
                    extra={"event": "user-message-unheard", "user_id": user_id, "topic": topic},
                )
                if topic == "retrieve-frame":
                    raise NoAnswer(user_id)
                return True
            if user.session_id is None and topic != "stop-work":
                self._drop(user_id, topic, "user is in the idle pool")
                return False
            logger.info(
                "user message", extra={"event": "user-message", "user_id": user_id, "topic": topic}
            )
            if topic == "start-rendering":
                self._note(user, "list", frames=frames)
                self._start(user, frames, data)
            elif topic == "stop-work":
                self._note(user, "reset")
                user.reset()
            elif topic == "retrieve-frames-from-frame-list":
                self._retrieve_list(user, frames, data)
            else:
                return self._retrieve_frame(user, frame)
        return True

    def _drop(self, user_id: str, topic: str, reason: str) -> None:
        logger.warning(
            "user message dropped",
            extra={"event": "user-message-dropped", "user_id": user_id, "topic": topic},
        )
        with self._stats_lock:
            self.dropped_counts[reason] += 1
            self.dropped.append({"user_id": user_id, "topic": topic, "reason": reason})

    def dropped_stats(self) -> dict[str, Any]:
        """Messages to users in the idle pool, which no session would ever hear about."""
        with self._stats_lock:
            return {"count": sum(self.dropped_counts.values()), "recent": list(self.dropped)}

    def _note(self, user: SimUser, kind: str, **fields: Any) -> None:
        """One line of the users' timeline (see Simulator.user_timeline)."""
        entry = {"t": time.monotonic(), "user_id": user.user_id, "kind": kind, **fields}
        with self._stats_lock:
            self._timeline.append(entry)

    def timeline(self) -> list[dict[str, Any]]:
        with self._stats_lock:
            return list(self._timeline)

    def _remember_upload(self, session_id: str, frame: int, image: bytes) -> None:
        digest = hashlib.sha256(image).digest()
        with self._stats_lock:
            self._uploads.setdefault(session_id, {}).setdefault(frame, set()).add(digest)

    def uploaded_digests(self, session_id: str | None = None) -> dict[int, set[str]]:
        """Hex SHA-256 of every temp upload by frame, for one session or all merged."""
        with self._stats_lock:
            if session_id is None:
                sessions = list(self._uploads.values())
            else:
                sessions = [self._uploads.get(session_id, {})]
            result: dict[int, set[str]] = {}
            for frames in sessions:
                for frame, digests in frames.items():
                    result.setdefault(frame, set()).update(d.hex() for d in digests)
        return result

    def _start(self, user: SimUser, frames: list[int], data: dict[str, Any]) -> None:
        user.reset()
        user.blend_hash = str(data.get("blend_file_hash") or "")
        if user.early_complete and frames:
            skipped = user.rng.randint(1, min(2, len(frames)))
            user.owed = frames[-skipped:]
            frames = frames[:-skipped]
        user.queue.extend(frames)
        user.report_due = True
        self._schedule(user)

    def _retrieve_list(self, user: SimUser, frames: list[int], data: dict[str, Any]) -> None:
        if data.get("blend_file_hash"):
            user.blend_hash = str(data["blend_file_hash"])
        queued = set(user.queue)
        user.queue.extend(f for f in frames if f not in queued)
        user.report_due = True
        self._schedule(user)

    def _retrieve_frame(self, user: SimUser, frame: int) -> bool:
        key = user.rendered.get(frame)
        if key is None or not self._blobs.exists(TEMP_BUCKET, key):
            return False
        sent = self._publish_frame(user, frame, key)
        # A real node answers whether it has the frame; what the User Manager then does with
        # the re-sent frame is out of its sight.
        return True if self._config.real_peers else sent

    # ------------------------------------------------------------ rendering

    def _schedule(self, user: SimUser, *, going_on: bool = False) -> None:
        """Time the user's next frame. A user going straight on from one frame to the next
        keeps its rhythm from when the last frame was due, so the simulator's own cost of
        making and announcing an image (shared CPU on one box) never slows the farm it plays;
        a user starting from idle starts from now. The frame's time is drawn, then scaled by
        the user's profile; a user due to hang within the frame hangs then instead."""
        if user.busy or user.stalled or not (user.queue or user.report_due):
            return
        user.busy = True
        generation = user.generation
        config = self._config
        delay = sample_frame_time(
            user.rng,
            config.frame_time,
            config.frame_time_dist,
            config.frame_time_shape,
            config.jitter,
        ) * user.profile.speed_factor(user.render_seconds)
        now = time.monotonic()
        start = max(user.due_at, now - delay) if going_on else now
        hang = user.profile.stall_point(user.render_seconds, delay) if user.queue else None
        if hang is not None:
            self._scheduler.call_later(start + hang - now, lambda: self._stall(user, generation))
            return
        user.frame_seconds = delay
        user.due_at = start + delay
        self._scheduler.call_later(user.due_at - now, lambda: self._step(user, generation))

    def _stall(self, user: SimUser, generation: int) -> None:
        """The user hangs in the middle of a frame, for good."""
        with user.lock:
            if generation != user.generation or user.disconnected or user.session_id is None:
                return
            user.busy = False
            user.stalled = True
            user.render_seconds = user.profile.stall_after or 0.0
            self._note(user, "stall", frames=list(user.queue))
            held = len(user.queue)
        logger.info(
            "user hung",
            extra={"event": "user-stalled", "user_id": user.user_id, "frames_held": held},
        )

    def _step(self, user: SimUser, generation: int) -> None:
        with user.lock:
            if generation != user.generation or user.disconnected or user.session_id is None:
                return
            user.busy = False
            if user.queue:
                user.render_seconds += user.frame_seconds
                self._render_one(user, user.queue.popleft())
                if user.disconnected:
                    return
            if user.queue:
                self._schedule(user, going_on=True)
            elif user.report_due:
                user.report_due = False
                self._publish(user, "user-rendering-completed", {"user-id": user.user_id})

    def _render_one(self, user: SimUser, frame: int) -> None:
        session_id = user.session_id or ""
        if frame in user.owed:
            user.owed.remove(frame)
        if user.rng.random() < self._config.fail_share:
            user.rendered.pop(frame, None)
            self._publish(
                user,
                "user-error-sending-frame",
                {
                    "user-id": user.user_id,
                    "frame-number": frame,
                    "blend-file-hash": user.blend_hash,
                },
            )
        else:
            blend = self._blend_lookup(user.blend_hash or "")
            if user.bad_kind is None:
                image = self._renderer(blend, frame)
                extension = extension_of(image)
            else:
                image, extension = bad_frame(user.bad_kind, blend, frame), "png"
            key = (
                f"temp/{_segment(session_id)}/{_segment(user.user_id)}/"
                f"{frame}-{user.rng.getrandbits(32):08x}.{extension}"
            )
            self._blobs.write(TEMP_BUCKET, key, image)
            self._remember_upload(session_id, frame, image)
            user.rendered[frame] = key
            self._note(user, "upload", frame=frame)
            self._publish_frame(user, frame, key)
        user.frames_done += 1
        if user.disconnect_after is not None and user.frames_done >= user.disconnect_after:
            self._publish(user, "user-disconnected", {"user_id": user.user_id})
            user.reset()
            user.disconnected = True
            logger.info(
                "user disconnected", extra={"event": "user-disconnected", "user_id": user.user_id}
            )

    def _publish_frame(self, user: SimUser, frame: int, key: str) -> bool:
        data = {
            "user-id": user.user_id,
            "frame-number": frame,
            "image-extension": key.rpartition(".")[2],  # the upload's key ends with it
            "image-binary-path": key,
        }
        return self._publish(user, "user-frame-rendered", data)

    def _publish(self, user: SimUser, topic: str, data: dict[str, Any]) -> bool:
        return self._route(user.session_id, topic, data)
