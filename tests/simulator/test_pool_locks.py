"""The user pool's locks: a user's event routed while a release of that user runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simulator import SimulatorConfig
from simulator.blobs import BlobStore
from simulator.users import UserPool

SESSION = "s-locks"


class HeldTimers:
    """A scheduler that only keeps the timers, for the test to run on a thread of its own."""

    def __init__(self) -> None:
        self.due: list[Callable[[], None]] = []

    def call_later(self, _delay: float, fn: Callable[[], None]) -> None:
        self.due.append(fn)


def test_an_event_routed_during_a_release_of_its_user_does_not_deadlock(tmp_path: Path) -> None:
    # As in the real mode's forward: the frame event, sent with the user's lock held, asks
    # whether the User Manager forgot the user, while the supervisor's users-released holds
    # the pool and waits for that user's lock.
    routing = threading.Event()
    release_running = threading.Event()
    answers: list[bool] = []
    timers = HeldTimers()

    def route(_session_id: str | None, topic: str, data: dict[str, Any]) -> bool:
        if topic == "user-frame-rendered":
            routing.set()
            release_running.wait(5)
            time.sleep(0.2)  # the release is now inside the pool, at the user's lock
            answers.append(pool.is_forgotten(data["user-id"]))
        return True

    pool = UserPool(
        SimulatorConfig(users=1, frame_time=0.01, seed=1),
        blobs=BlobStore(tmp_path / "blobs"),
        route=route,
        scheduler=timers,  # type: ignore[arg-type]
        renderer=lambda _blend, frame: b"png-%d" % frame,
        blend_lookup=lambda _hash: None,
    )
    [user] = pool.take_idle(1, SESSION)
    pool.deliver(user, "start-rendering", {"blend_file_hash": "h", "frame_list": [1, 2]})
    assert pool.forget_all() == [user]

    step = threading.Thread(target=timers.due.pop(0), daemon=True)
    step.start()
    assert routing.wait(5)
    moved: list[list[str]] = []
    release = threading.Thread(target=lambda: moved.append(pool.release("other", [user])))
    release.daemon = True
    release.start()
    release_running.set()

    step.join(5)
    release.join(5)
    assert not step.is_alive(), "the event and the release deadlocked"
    assert not release.is_alive()
    assert answers == [True]
    assert moved == [[user]]
    assert not pool.is_forgotten(user)
    assert pool.idle() == [user]
