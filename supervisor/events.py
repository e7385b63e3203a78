"""What the supervisor does with each User Manager event (CONTRACT.md §6).

Handlers are safe under at-least-once delivery and any number of worker processes:
- every state change is a conditional statement, so a repeated event changes nothing;
- everything that touches a workload's assignments first locks its row (`FOR UPDATE`),
  so two workers never hand the same frames to different users;
- messages to peers are written to the outbox in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from supervisor import outbox, scheduling
from supervisor.errors import PeerError
from supervisor.intake import Event
from supervisor.models import (
    ACTIVE_STATUSES,
    Frame,
    FrameState,
    UserState,
    Workload,
    WorkloadStatus,
    WorkloadUser,
)
from supervisor.peers import final_frame_key
from supervisor.workloads import (
    release_all_users,
    release_users,
    send_outbox_soon,
    unbind_after_grace,
)

if TYPE_CHECKING:
    from supervisor.service import Supervisor

logger = logging.getLogger(__name__)

COPY_CONCURRENCY = 8


class EventRefused(Exception):
    """The event is well formed but does not fit our state (not our user, frame, session)."""

    def __init__(self, reason: str, detail: str = "", *, discard_upload: bool = False) -> None:
        self.reason = reason
        self.detail = detail
        self.discard_upload = discard_upload
        super().__init__(f"{reason}: {detail}" if detail else reason)


def _log(message: str, event: Event, **fields: Any) -> None:
    logger.info(
        message,
        extra={
            "workload_id": event.session_id,
            "user_id": event.user_id,
            "frame": event.frame_number,
            "topic": event.topic,
            **fields,
        },
    )


def lock_workload(session: Session, workload_id: str) -> Workload | None:
    return session.scalars(
        select(Workload).where(Workload.id == workload_id).with_for_update()
    ).one_or_none()


_TOUCH_USERS = text(
    "UPDATE workload_users AS u SET last_seen_at = now() "
    "FROM unnest(CAST(:workload_ids AS varchar[]), CAST(:user_ids AS varchar[])) "
    "AS t(workload_id, user_id) "
    "WHERE u.workload_id = t.workload_id AND u.user_id = t.user_id"
)


def _touch_users(session: Session, senders: Iterable[tuple[str, str]]) -> None:
    """Note that these (workload, user) pairs were heard from, in one statement."""
    pairs = sorted(set(senders))
    if pairs:
        session.execute(
            _TOUCH_USERS,
            {"workload_ids": [w for w, _ in pairs], "user_ids": [u for _, u in pairs]},
        )


# --- distribution -----------------------------------------------------------------------


def _held_by_active_users(session: Session, workload_id: str) -> dict[str, int]:
    held = func.count(Frame.number)
    rows = session.execute(
        select(WorkloadUser.user_id, held)
        .outerjoin(
            Frame,
            and_(
                Frame.workload_id == WorkloadUser.workload_id,
                Frame.user_id == WorkloadUser.user_id,
                Frame.state == FrameState.ASSIGNED,
            ),
        )
        .where(
            WorkloadUser.workload_id == workload_id,
            WorkloadUser.state == UserState.ACTIVE,
        )
        .group_by(WorkloadUser.user_id)
    ).all()
    return {user_id: count for user_id, count in rows}


def _queues(session: Session, workload_id: str, user_ids: Iterable[str]) -> dict[str, list[int]]:
    queues: dict[str, list[int]] = {user_id: [] for user_id in user_ids}
    if not queues:
        return queues
    rows = session.execute(
        select(Frame.user_id, Frame.number)
        .where(
            Frame.workload_id == workload_id,
            Frame.state == FrameState.ASSIGNED,
            Frame.user_id.in_(list(queues)),
        )
        .order_by(Frame.user_id, Frame.number)
    )
    for user_id, number in rows:
        queues[user_id].append(number)
    return queues


def _assign(session: Session, workload_id: str, plan: dict[str, list[int]]) -> None:
    numbers = [n for frames in plan.values() for n in frames]
    owners = [user for user, frames in plan.items() for _ in frames]
    if not numbers:
        return
    session.execute(
        text(
            "UPDATE frames AS f SET state = 'assigned', user_id = a.user_id, "
            "assigned_at = now(), attempts = f.attempts + 1 "
            "FROM unnest(CAST(:numbers AS integer[]), CAST(:owners AS varchar[])) "
            "AS a(number, user_id) "
            "WHERE f.workload_id = :workload_id AND f.number = a.number "
            "AND f.state IN ('pending', 'assigned')"
        ),
        {"workload_id": workload_id, "numbers": numbers, "owners": owners},
    )


def _assign_pending_runs(session: Session, workload_id: str, plan: dict[str, list[int]]) -> None:
    """Assign runs cut from the lowest pending frames: every pending frame between a run's
    first and last number belongs to that run, so each user's run is one index range
    (one statement per user, sent as a batch) instead of one joined row per frame. The
    caller holds the workload row lock."""
    runs = [
        {"workload_id": workload_id, "first": frames[0], "last": frames[-1], "user_id": user}
        for user, frames in plan.items()
        if frames
    ]
    if not runs:
        return
    session.execute(
        text(
            "UPDATE frames SET state = 'assigned', user_id = :user_id, "
            "assigned_at = now(), attempts = attempts + 1 "
            "WHERE workload_id = :workload_id AND state = 'pending' "
            "AND number BETWEEN :first AND :last"
        ),
        runs,
    )


def _send_lists(
    session: Session,
    workload: Workload,
    users: Iterable[str],
    known: dict[str, list[int]] | None = None,
) -> int:
    """Send each user its whole current list; `start-rendering` replaces a user's queue.
    Lists in `known` (users who held nothing before this assignment) are not read back."""
    known = known or {}
    queues = _queues(session, workload.id, sorted(set(users) - set(known)))
    queues = {user: queues[user] if user in queues else known[user] for user in sorted(set(users))}
    blend_hash = workload.blend_file_hash or ""
    outbox.to_users(
        session,
        workload.id,
        [user for user, frames in queues.items() if frames],
        "start-rendering",
        lambda user: {"blend_file_hash": blend_hash, "frame_list": queues[user]},
    )
    return sum(len(frames) for frames in queues.values())


def distribute(
    session: Session, workload: Workload, cap: int, *, skip: Iterable[str] = ()
) -> dict[str, int]:
    """Give pending frames to active users up to a fair share (idle ones first); when
    nothing is pending, move unstarted tails from long queues to idle users. Users in
    `skip` (silent ones) get nothing this time. The caller holds the workload row lock."""
    if workload.status != WorkloadStatus.RUNNING:
        return {}
    held = _held_by_active_users(session, workload.id)
    for user_id in skip:
        held.pop(user_id, None)
    if not held:
        return {}
    pending = workload.total_frames - workload.rendered_frames - sum(held.values())
    if pending > 0:
        grants = scheduling.top_ups(pending, held, cap)
        wanted = sum(grants.values())
        frames = session.scalars(
            select(Frame.number)
            .where(Frame.workload_id == workload.id, Frame.state == FrameState.PENDING)
            .order_by(Frame.number)
            .limit(wanted)
        ).all()
        plan = scheduling.split_runs(frames, grants)
        _assign_pending_runs(session, workload.id, plan)
        fresh = {user: frames for user, frames in plan.items() if held[user] == 0}
        _send_lists(session, workload, plan, known=fresh)
        return {user: len(frames) for user, frames in plan.items()}
    idle = sorted(user for user, count in held.items() if count == 0)
    if not idle:
        return {}
    busy = [user for user, count in held.items() if count > 0]
    moves = scheduling.steal_plan(idle, _queues(session, workload.id, busy), min_queue=2)
    plan: dict[str, list[int]] = {}
    for _donor, receiver, frames in moves:
        plan[receiver] = frames
    _assign(session, workload.id, plan)
    touched = {donor for donor, _, _ in moves} | set(plan)
    _send_lists(session, workload, touched)
    if moves:
        logger.info(
            "frames moved to idle users",
            extra={"workload_id": workload.id, "moves": len(moves)},
        )
    return {user: len(frames) for user, frames in plan.items()}


def demand_missing_users(session: Session, workload: Workload) -> int:
    """Ask for the users the workload lacks beyond what is already asked for."""
    active = session.scalar(
        select(func.count())
        .select_from(WorkloadUser)
        .where(WorkloadUser.workload_id == workload.id, WorkloadUser.state == UserState.ACTIVE)
    )
    missing = workload.target_user_count - (active or 0) - workload.users_demanded
    if missing > 0:
        outbox.to_user_manager(session, workload.id, "more-users", {"user_count": missing})
        workload.users_demanded += missing
        workload.demanded_at = func.now()
    return max(missing, 0)


# --- new-users --------------------------------------------------------------------------


def add_users(sv: Supervisor, event: Event) -> dict[str, Any]:
    """Take the users; users banned from this workload (and not yet forgiven) go back."""
    forgiven_before = datetime.now(UTC) - timedelta(seconds=sv.settings.forgive_user_seconds)
    with sv.db.transaction() as session:
        workload = lock_workload(session, event.session_id)
        if workload is None:
            raise EventRefused("unknown-session", event.session_id)
        if workload.status not in ACTIVE_STATUSES:
            outbox.to_user_manager(
                session, workload.id, "users-released", {"user_list": list(event.user_ids)}
            )
            _log("users returned: workload has ended", event, users=len(event.user_ids))
            return {"added": 0, "returned": len(event.user_ids)}
        statement = insert(WorkloadUser).values(
            [{"workload_id": workload.id, "user_id": user} for user in event.user_ids]
        )
        existing = WorkloadUser.__table__.c
        statement = statement.on_conflict_do_update(
            index_elements=["workload_id", "user_id"],
            set_={
                "state": UserState.ACTIVE,
                "left_at": None,
                "last_seen_at": func.now(),
                "failed_frames": 0,
            },
            where=or_(
                existing.state.in_([UserState.RELEASED, UserState.DISCONNECTED]),
                and_(existing.state == UserState.BANNED, existing.left_at < forgiven_before),
            ),
        ).returning(WorkloadUser.user_id)
        added = list(session.scalars(statement))
        refused = _still_banned(session, workload.id, event.user_ids, set(added))
        if refused:
            outbox.to_user_manager(session, workload.id, "users-released", {"user_list": refused})
        workload.users_demanded = max(0, workload.users_demanded - len(added))
        granted = distribute(session, workload, sv.settings.max_frames_per_assignment)
    _log("users added", event, added=len(added), refused=len(refused), assigned=granted)
    send_outbox_soon(sv)
    return {"added": len(added), "refused": refused, "assigned": granted}


def _still_banned(
    session: Session, workload_id: str, user_ids: Iterable[str], added: set[str]
) -> list[str]:
    candidates = [user for user in user_ids if user not in added]
    if not candidates:
        return []
    return list(
        session.scalars(
            select(WorkloadUser.user_id).where(
                WorkloadUser.workload_id == workload_id,
                WorkloadUser.user_id.in_(candidates),
                WorkloadUser.state == UserState.BANNED,
            )
        )
    )


# --- user-frame-rendered ----------------------------------------------------------------


@dataclass(frozen=True)
class _FrameView:
    customer_id: str
    object_id: str
    workload_status: str
    frame_state: str | None
    frame_user: str | None
    user_state: str | None


def _frame_view(sv: Supervisor, event: Event) -> _FrameView:
    with sv.db.session() as session:
        row = session.execute(
            select(
                Workload.customer_id,
                Workload.object_id,
                Workload.status,
                Frame.state,
                Frame.user_id,
                WorkloadUser.state,
            )
            .select_from(Workload)
            .outerjoin(
                Frame,
                and_(Frame.workload_id == Workload.id, Frame.number == event.frame_number),
            )
            .outerjoin(
                WorkloadUser,
                and_(
                    WorkloadUser.workload_id == Workload.id,
                    WorkloadUser.user_id == event.user_id,
                ),
            )
            .where(Workload.id == event.session_id)
        ).one_or_none()
    return _fitting(event, _FrameView(*row) if row is not None else None)


def _fitting(event: Event, view: _FrameView | None) -> _FrameView:
    """The view, if the event's session, user and frame are ours; else EventRefused."""
    if view is None:
        raise EventRefused("unknown-session", event.session_id)
    if view.user_state is None:
        raise EventRefused("not-our-user", str(event.user_id))
    if view.frame_state is None:
        raise EventRefused("frame-outside-workload", str(event.frame_number))
    return view


def record_rendered_frame(sv: Supervisor, event: Event) -> str:
    """Move the image to its final key, then mark the frame rendered exactly once.

    The copy comes first and is idempotent (same bytes, same key), so a crash anywhere
    leaves either an assigned frame to copy again or a rendered frame with its image.
    The catalog record and the temp deletion leave through the outbox after the commit.
    One event is a batch of one: EventRefused refuses it, a transient PeerError retries it."""
    [outcome] = record_rendered_frames(sv, [event])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def record_rendered_frames(sv: Supervisor, batch: Sequence[Event]) -> list[str | Exception]:
    """Many user-frame-rendered events at once, with record_rendered_frame's outcomes and
    guarantees: one read of their state, the copies run concurrently, one transaction marks
    them all. An event the batch cannot settle comes back as an exception (EventRefused to
    refuse it, PeerError to retry it alone) instead of failing the others."""
    outcomes: list[str | Exception | None] = [None] * len(batch)
    views = _frame_views(sv, batch)
    copies: dict[int, str] = {}
    claimed: dict[tuple[str, int], str | None] = {}
    unwanted: list[Event] = []
    for index, event in enumerate(batch):
        try:
            final_key = _copy_target(event, views.get(index))
        except EventRefused as exc:
            outcomes[index] = exc
            if exc.discard_upload:
                unwanted.append(event)
            continue
        frame = (event.session_id, event.frame_number or 0)
        if final_key is None:
            outcomes[index] = "duplicate"
            unwanted.append(event)
        elif frame in claimed:
            outcomes[index] = "duplicate"
            if claimed[frame] != event.temp_key:
                unwanted.append(event)  # a second upload of the frame: one copy is enough
        else:
            claimed[frame] = event.temp_key
            copies[index] = final_key
    copied = _copy_all(sv, batch, copies, outcomes)
    completed = _mark_all(sv, batch, copied, outcomes, unwanted)
    send_outbox_soon(sv)
    for workload_id in completed:
        unbind_after_grace(sv, workload_id)
    return [outcome if outcome is not None else "duplicate" for outcome in outcomes]


def _frame_views(sv: Supervisor, batch: Sequence[Event]) -> dict[int, _FrameView | None]:
    """The state each event is judged against, in three reads for the whole batch."""
    sessions = {event.session_id for event in batch}
    frames = {(e.session_id, e.frame_number) for e in batch if e.frame_number is not None}
    users = {(e.session_id, e.user_id) for e in batch if e.user_id}
    with sv.db.session() as session:
        workloads = {
            row.id: row
            for row in session.execute(
                select(
                    Workload.id, Workload.customer_id, Workload.object_id, Workload.status
                ).where(Workload.id.in_(sessions))
            )
        }
        frame_rows = (
            {
                (row.workload_id, row.number): row
                for row in session.execute(
                    select(Frame.workload_id, Frame.number, Frame.state, Frame.user_id).where(
                        tuple_(Frame.workload_id, Frame.number).in_(list(frames))
                    )
                )
            }
            if frames
            else {}
        )
        user_rows = (
            {
                (row.workload_id, row.user_id): row.state
                for row in session.execute(
                    select(
                        WorkloadUser.workload_id, WorkloadUser.user_id, WorkloadUser.state
                    ).where(tuple_(WorkloadUser.workload_id, WorkloadUser.user_id).in_(list(users)))
                )
            }
            if users
            else {}
        )
    views: dict[int, _FrameView | None] = {}
    for index, event in enumerate(batch):
        workload = workloads.get(event.session_id)
        if workload is None:
            views[index] = None
            continue
        frame = frame_rows.get((event.session_id, event.frame_number))
        views[index] = _FrameView(
            workload.customer_id,
            workload.object_id,
            workload.status,
            frame.state if frame else None,
            frame.user_id if frame else None,
            user_rows.get((event.session_id, event.user_id)),
        )
    return views


def _copy_target(event: Event, view: _FrameView | None) -> str | None:
    """The final key to copy the upload to; None when the frame is already rendered (the
    upload is a duplicate); EventRefused when the event does not fit our state."""
    if event.frame_number is None or not event.temp_key or not event.extension:
        raise EventRefused("incomplete-event", event.topic)
    view = _fitting(event, view)
    if view.frame_state == FrameState.RENDERED:
        return None
    if view.workload_status != WorkloadStatus.RUNNING:
        raise EventRefused("workload-not-running", view.workload_status, discard_upload=True)
    if view.frame_state != FrameState.ASSIGNED or view.frame_user != event.user_id:
        raise EventRefused(
            "frame-not-assigned-to-user", f"frame {event.frame_number}", discard_upload=True
        )
    return final_frame_key(view.customer_id, view.object_id, event.frame_number, event.extension)


def _copy_all(
    sv: Supervisor,
    batch: Sequence[Event],
    copies: dict[int, str],
    outcomes: list[str | Exception | None],
) -> dict[int, str]:
    """Copy the uploads temp -> final concurrently; the indexes copied, with their keys."""

    def copy(index: int) -> int:
        event = batch[index]
        return sv.peers.blob.transfer_temp_to_final(
            temp_key=event.temp_key or "",
            final_key=copies[index],
            extension=event.extension or "",
            max_bytes=sv.settings.max_frame_bytes,
        )

    copied: dict[int, str] = {}
    workers = max(1, min(COPY_CONCURRENCY, len(copies)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="frame-copy") as pool:
        futures = {index: pool.submit(copy, index) for index in copies}
    for index, future in futures.items():
        error = future.exception()
        if error is None:
            copied[index] = copies[index]
        elif isinstance(error, PeerError) and not error.transient:
            outcomes[index] = _transfer_failed(sv, batch[index], str(error))
        else:
            outcomes[index] = error
    return copied


def _mark_all(
    sv: Supervisor,
    batch: Sequence[Event],
    copied: dict[int, str],
    outcomes: list[str | Exception | None],
    unwanted: list[Event],
) -> list[str]:
    """One transaction: lock the workloads (in id order), mark in one statement every copied
    frame still held by its sender, move the counters, queue catalog records and temp
    deletions; an upload whose frame moved on meanwhile is discarded. Returns the workloads
    this batch completed."""
    completed: list[str] = []
    senders: set[tuple[str, str]] = set()
    with sv.db.transaction() as session:
        workloads = {
            workload.id: workload
            for workload in session.scalars(
                select(Workload)
                .where(Workload.id.in_({batch[index].session_id for index in copied}))
                .order_by(Workload.id)
                .with_for_update()
            )
        }
        running = {
            index: key
            for index, key in copied.items()
            if (w := workloads.get(batch[index].session_id)) and w.status == WorkloadStatus.RUNNING
        }
        marked = _mark_held_frames(session, [(batch[index], key) for index, key in running.items()])
        for index, final_key in copied.items():
            event = batch[index]
            if index not in running:
                outcomes[index] = "workload-ended"
                unwanted.append(event)
            elif (event.session_id, event.frame_number) not in marked:
                outcomes[index] = "duplicate"  # another copy won, or the frame moved on
                unwanted.append(event)
            else:
                outcomes[index] = "stored"
                _queue_stored_frame(session, workloads[event.session_id], event, final_key)
                senders.add((event.session_id, event.user_id or ""))
        _touch_users(session, senders)
        for event in unwanted:
            outbox.delete_temp_blob(session, event.session_id, event.temp_key or "")
        for workload in workloads.values():
            if workload.status == WorkloadStatus.RUNNING and (
                workload.rendered_frames >= workload.total_frames
            ):
                _complete(session, workload)
                completed.append(workload.id)
    for index, final_key in running.items():
        event = batch[index]
        if outcomes[index] == "stored":
            done = event.session_id in completed
            outcomes[index] = "completed" if done else "stored"
            _log("frame stored", event, final_key=final_key, completed=done)
    for event in unwanted:
        _log("upload not needed; discarded", event, temp_key=event.temp_key)
    return completed


def _mark_held_frames(session: Session, copies: list[tuple[Event, str]]) -> set[tuple[str, int]]:
    """Mark rendered, in one statement, each frame its sender still holds; the (workload,
    frame) pairs marked. Frames are unique in a batch (duplicates are settled before)."""
    if not copies:
        return set()
    rows = session.execute(
        text(
            "UPDATE frames AS f SET state = 'rendered', final_key = a.final_key, "
            "rendered_at = now(), last_error = NULL "
            "FROM unnest(CAST(:workloads AS varchar[]), CAST(:numbers AS integer[]), "
            "CAST(:users AS varchar[]), CAST(:keys AS varchar[])) "
            "AS a(workload_id, number, user_id, final_key) "
            "WHERE f.workload_id = a.workload_id AND f.number = a.number "
            "AND f.state = 'assigned' AND f.user_id = a.user_id "
            "RETURNING f.workload_id, f.number"
        ),
        {
            "workloads": [event.session_id for event, _ in copies],
            "numbers": [event.frame_number for event, _ in copies],
            "users": [event.user_id for event, _ in copies],
            "keys": [key for _, key in copies],
        },
    ).all()
    return {(row.workload_id, row.number) for row in rows}


def _queue_stored_frame(session: Session, workload: Workload, event: Event, key: str) -> None:
    """What follows a frame marked rendered, in its transaction: the counter, the catalog
    record and the temp deletion."""
    workload.rendered_frames += 1
    outbox.record_in_catalog(
        session,
        workload.id,
        object_id=workload.object_id,
        customer_id=workload.customer_id,
        frame_number=event.frame_number or 0,
        image_file_path=key,
    )
    outbox.delete_temp_blob(session, workload.id, event.temp_key or "")


def _held_by_sender(event: Event) -> tuple[Any, ...]:
    """The frame of the event, still assigned to the user who sent it."""
    return (
        Frame.workload_id == event.session_id,
        Frame.number == event.frame_number,
        Frame.state == FrameState.ASSIGNED,
        Frame.user_id == event.user_id,
    )


def _transfer_failed(sv: Supervisor, event: Event, reason: str) -> str:
    """A permanent transfer error: the frame goes back to be rendered, the reason kept."""
    with sv.db.transaction() as session:
        workload = lock_workload(session, event.session_id)
        if workload is None:
            return "workload-ended"
        returned = session.execute(
            update(Frame)
            .where(*_held_by_sender(event))
            .values(state=FrameState.PENDING, user_id=None, assigned_at=None, last_error=reason)
            .returning(Frame.number)
        ).scalar_one_or_none()
        if returned is not None:
            count_failure(session, workload, event.user_id or "", sv.settings.max_user_failures)
            distribute(session, workload, sv.settings.max_frames_per_assignment)
    logger.warning(
        "frame transfer failed for good; frame will be rendered again",
        extra={
            "workload_id": event.session_id,
            "user_id": event.user_id,
            "frame": event.frame_number,
            "reason": reason[:300],
        },
    )
    send_outbox_soon(sv)
    return "requeued"


def give_up_on_frame(sv: Supervisor, event: Event, reason: str) -> str:
    """Retries are spent: the frame goes back to be rendered, with the reason recorded."""
    return _transfer_failed(sv, event, reason)


def _complete(session: Session, workload: Workload) -> None:
    workload.status = WorkloadStatus.COMPLETED
    workload.finished_at = func.now()
    release_all_users(session, workload, notify_demand=True)
    logger.info(
        "workload completed",
        extra={"workload_id": workload.id, "total_frames": workload.total_frames},
    )


# --- user-rendering-completed -----------------------------------------------------------


def user_finished_list(sv: Supervisor, event: Event) -> dict[str, Any]:
    """A user says it is done: ask for what it still owes, or give it more work."""
    with sv.db.transaction() as session:
        workload = lock_workload(session, event.session_id)
        if workload is None:
            raise EventRefused("unknown-session", event.session_id)
        user_state = session.scalar(
            select(WorkloadUser.state).where(
                WorkloadUser.workload_id == workload.id,
                WorkloadUser.user_id == event.user_id,
            )
        )
        if user_state is None:
            raise EventRefused("not-our-user", str(event.user_id))
        if user_state != UserState.ACTIVE or workload.status != WorkloadStatus.RUNNING:
            return {"ignored": True}
        _touch_users(session, [(workload.id, event.user_id or "")])
        owed = _queues(session, workload.id, [event.user_id or ""])[event.user_id or ""]
        if owed:
            blend_hash = workload.blend_file_hash or ""
            outbox.to_users(
                session,
                workload.id,
                [event.user_id or ""],
                "retrieve-frames-from-frame-list",
                lambda _user: {"blend_file_hash": blend_hash, "frame_list": owed},
            )
            granted: dict[str, int] = {}
        else:
            granted = distribute(session, workload, sv.settings.max_frames_per_assignment)
    _log("user finished its list", event, owed=len(owed), assigned=granted)
    send_outbox_soon(sv)
    return {"owed": owed, "assigned": granted}


# --- user-disconnected ------------------------------------------------------------------


def user_disconnected(sv: Supervisor, event: Event) -> dict[str, Any]:
    """Drop the user; its frames go to the others, or users are demanded if none are left."""
    with sv.db.transaction() as session:
        workload = lock_workload(session, event.session_id)
        if workload is None:
            raise EventRefused("unknown-session", event.session_id)
        dropped = session.execute(
            update(WorkloadUser)
            .where(
                WorkloadUser.workload_id == workload.id,
                WorkloadUser.user_id == event.user_id,
                WorkloadUser.state == UserState.ACTIVE,
            )
            .values(state=UserState.DISCONNECTED, left_at=func.now())
            .returning(WorkloadUser.user_id)
        ).scalar_one_or_none()
        if dropped is None:
            known = session.scalar(
                select(WorkloadUser.state).where(
                    WorkloadUser.workload_id == workload.id,
                    WorkloadUser.user_id == event.user_id,
                )
            )
            if known is None:
                raise EventRefused("not-our-user", str(event.user_id))
            return {"ignored": True}
        freed = _unassign_user(session, workload.id, event.user_id or "")
        granted = distribute(session, workload, sv.settings.max_frames_per_assignment)
        demanded = 0
        if workload.status == WorkloadStatus.RUNNING and not _held_by_active_users(
            session, workload.id
        ):
            demanded = demand_missing_users(session, workload)
    _log("user disconnected", event, freed=freed, assigned=granted, demanded=demanded)
    send_outbox_soon(sv)
    return {"freed": freed, "assigned": granted, "demanded": demanded}


def _unassign_user(session: Session, workload_id: str, user_id: str) -> int:
    result = session.execute(
        update(Frame)
        .where(
            Frame.workload_id == workload_id,
            Frame.user_id == user_id,
            Frame.state == FrameState.ASSIGNED,
        )
        .values(state=FrameState.PENDING, user_id=None, assigned_at=None)
    )
    return result.rowcount or 0


# --- user-error-sending-frame -----------------------------------------------------------


def user_could_not_send(sv: Supervisor, event: Event) -> str:
    """Ask the user for the frame again; if it no longer has it, render it again."""
    view = _frame_view(sv, event)
    if view.frame_state == FrameState.RENDERED:
        return "already-rendered"
    if view.frame_state != FrameState.ASSIGNED or view.frame_user != event.user_id:
        raise EventRefused("frame-not-assigned-to-user", f"frame {event.frame_number}")
    with sv.db.session() as session:
        blend_hash = session.scalar(
            select(Workload.blend_file_hash).where(Workload.id == event.session_id)
        )
    acknowledged = sv.peers.users.send_with_ack(
        event.user_id or "",
        "retrieve-frame",
        {"frame-number": event.frame_number, "blend-file-hash": blend_hash or ""},
    )
    if acknowledged:
        _log("user will send the frame again", event)
        return "retrying"
    return _transfer_failed(sv, event, "user no longer has the frame")


def count_failure(session: Session, workload: Workload, user_id: str, limit: int) -> bool:
    """Count a failed frame against the user; past the limit it is released and banned."""
    failures = session.execute(
        update(WorkloadUser)
        .where(WorkloadUser.workload_id == workload.id, WorkloadUser.user_id == user_id)
        .values(failed_frames=WorkloadUser.failed_frames + 1)
        .returning(WorkloadUser.failed_frames, WorkloadUser.state)
    ).one_or_none()
    if failures is None or failures.state != UserState.ACTIVE or failures.failed_frames <= limit:
        return False
    release_users(session, workload.id, [user_id])
    session.execute(
        update(WorkloadUser)
        .where(WorkloadUser.workload_id == workload.id, WorkloadUser.user_id == user_id)
        .values(state=UserState.BANNED, left_at=func.now())
    )
    logger.warning(
        "user failed too many frames; released and banned from this workload",
        extra={"workload_id": workload.id, "user_id": user_id, "failures": failures[0]},
    )
    return True


HANDLERS = {
    "new-users": add_users,
    "user-frame-rendered": record_rendered_frame,
    "user-rendering-completed": user_finished_list,
    "user-disconnected": user_disconnected,
    "user-error-sending-frame": user_could_not_send,
}
