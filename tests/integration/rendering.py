"""A running workload of frames 10..20 for the integration tests of users, frames and
maintenance: the events its users send, and what it holds."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from supervisor.errors import PeerError
from supervisor.frames.pipeline import record_rendered_frame
from supervisor.messages import ErrorSendingFrame, FrameRendered, NewUsers
from supervisor.models import Frame, FrameState, Workload, WorkloadUser
from supervisor.services import Services
from supervisor.workloads import start_workload
from tests.helpers import FIXTURES
from tests.integration.helpers import PeerLog
from tests.peers import Peers

BLEND = FIXTURES / "blend/blender-5.0/range_10_20.blend"


def start_running_workload(sv: Services, peers: Peers) -> str:
    """A running workload of frames 10..20 (11 frames) for cust-1/obj-1, no users yet."""
    peers.add_object("cust-1", "obj-1", BLEND.read_bytes())
    return start_workload(sv, "cust-1", "obj-1")


def new_users(session_id: str, *users: str) -> NewUsers:
    return NewUsers(session_id, user_ids=users)


def rendered(sv_id: str, user: str, frame: int, peers: Peers, key: str = "") -> FrameRendered:
    key = key or f"tmp/{user}/{frame}.png"
    peers.temp_blobs[key] = f"image {frame} by {user}".encode()
    return FrameRendered(sv_id, user_id=user, frame_number=frame, extension="png", temp_key=key)


def error_event(session_id: str, user: str, frame: int) -> ErrorSendingFrame:
    return ErrorSendingFrame(
        session_id, user_id=user, frame_number=frame, blend_file_hash="hash-obj-1"
    )


def assignments(sv: Services, session_id: str) -> dict[int, str | None]:
    with sv.db.session() as session:
        rows = session.execute(
            select(Frame.number, Frame.user_id).where(
                Frame.workload_id == session_id, Frame.state == FrameState.ASSIGNED
            )
        ).all()
    return dict(rows)


def pending(sv: Services, session_id: str) -> list[int]:
    with sv.db.session() as session:
        return list(
            session.scalars(
                select(Frame.number)
                .where(Frame.workload_id == session_id, Frame.state == FrameState.PENDING)
                .order_by(Frame.number)
            )
        )


def frame(sv: Services, session_id: str, number: int) -> Frame:
    with sv.db.session() as session:
        return session.get(Frame, (session_id, number))


def user_row(sv: Services, session_id: str, user_id: str) -> WorkloadUser | None:
    with sv.db.session() as session:
        return session.get(WorkloadUser, (session_id, user_id))


def add_idle_user(sv: Services, session_id: str, user_id: str, **values: Any) -> None:
    """An active user holding nothing, as if its list had been taken back."""
    with sv.db.transaction() as session:
        session.add(WorkloadUser(workload_id=session_id, user_id=user_id, state="active", **values))


def workload(sv: Services, session_id: str) -> Workload:
    with sv.db.session() as session:
        return session.get(Workload, session_id)


def lists_sent(peers: Peers, topic: str = "start-rendering") -> list[dict]:
    return [r.json() for r in peers.calls("/user/send-msg-to-user") if r.json()["topic"] == topic]


def by_user(messages: list[dict]) -> list[dict]:
    """Messages to different users go out concurrently: only each user's own order holds."""
    return sorted(messages, key=lambda message: message["user_id"])


def fail_copies_of_frame(sv: Services, frame: int) -> Callable[..., int]:
    """Make the Blob Service fail (transiently) every copy of `frame`'s upload; returns the
    real transfer, to put back."""
    copy = sv.peers.blob.transfer_temp_to_final

    def failing(**kwargs: Any) -> int:
        if kwargs["temp_key"].endswith(f"/{frame}.png"):
            raise PeerError("blob-service", "retrieve-temp", "down", status=503)
        return copy(**kwargs)

    sv.peers.blob.transfer_temp_to_final = failing  # type: ignore[method-assign]
    return copy


def render_all(sv: Services, session_id: str, peers: Peers) -> None:
    """Every user delivers its list, and the next ones it gets, until nothing is out."""
    for _ in range(100):
        out = sorted(assignments(sv, session_id).items())
        if not out:
            return
        for number, holder in out:
            record_rendered_frame(sv, rendered(session_id, str(holder), number, peers))
    raise AssertionError("frames are still out after 100 rounds")


def demand(log: PeerLog) -> list[tuple[str, Any]]:
    """The User Manager messages that ask for users: registrations and demands."""
    return [
        (topic, data)
        for topic, data in log.user_manager()
        if topic in ("new-session", "update-user-count", "more-users")
    ]


def run_together(*calls) -> list[object]:  # type: ignore[no-untyped-def]
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(index: int, call) -> None:  # type: ignore[no-untyped-def]
        barrier.wait()
        try:
            results[index] = call()
        except Exception as exc:  # noqa: BLE001 (the test inspects what each racer got)
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results
