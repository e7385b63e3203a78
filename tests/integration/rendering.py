"""A running workload of frames 10..20 for the integration tests of users, frames and
maintenance: the events its users send, and what it holds."""

from __future__ import annotations

import functools
import io
import tempfile
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy import select

from supervisor.errors import PeerError
from supervisor.frames.pipeline import record_rendered_frame
from supervisor.messages import ErrorSendingFrame, FrameRendered, NewUsers
from supervisor.models import Frame, FrameState, Workload, WorkloadUser
from supervisor.peers.blob import Transferred
from supervisor.services import Services
from supervisor.workloads import start_workload
from tests.blendgen import blend_with_output
from tests.helpers import FIXTURES
from tests.integration.helpers import PeerLog
from tests.peers import Peers

BLEND = FIXTURES / "blend/blender-5.0/range_10_20.blend"
# The scene's output is made small, so that every upload is a real, cheap PNG that passes
# the supervisor's checks.
OUTPUT_WIDTH, OUTPUT_HEIGHT = 64, 36


@functools.cache
def small_blend() -> bytes:
    """BLEND with its output set to OUTPUT_WIDTH x OUTPUT_HEIGHT PNG."""
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "small.blend"
        blend_with_output(BLEND, target, width=OUTPUT_WIDTH, height=OUTPUT_HEIGHT)
        return target.read_bytes()


@functools.cache
def frame_image(frame: int, user: str = "") -> bytes:
    """A valid PNG of the scene's output size, different for every frame and user: the
    left half's colour comes from the frame, the right half's from the user."""
    image = Image.new("RGB", (OUTPUT_WIDTH, OUTPUT_HEIGHT), ((frame * 37) % 256, 90, 160))
    tint = zlib.crc32(user.encode())
    image.paste((tint & 255, (tint >> 8) & 255, 40), (OUTPUT_WIDTH // 2, 0, OUTPUT_WIDTH, 36))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def start_running_workload(sv: Services, peers: Peers) -> str:
    """A running workload of frames 10..20 (11 frames) for cust-1/obj-1, no users yet."""
    peers.add_object("cust-1", "obj-1", small_blend())
    return start_workload(sv, "cust-1", "obj-1")


def new_users(session_id: str, *users: str) -> NewUsers:
    return NewUsers(session_id, user_ids=users)


def rendered(sv_id: str, user: str, frame: int, peers: Peers, key: str = "") -> FrameRendered:
    key = key or f"tmp/{user}/{frame}.png"
    peers.temp_blobs[key] = frame_image(frame, user)
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


def fail_copies_of_frame(sv: Services, frame: int) -> Callable[..., Transferred]:
    """Make the Blob Service fail (transiently) every copy of `frame`'s upload; returns the
    real transfer, to put back."""
    copy = sv.peers.blob.transfer_temp_to_final

    def failing(**kwargs: Any) -> Transferred:
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
