"""Who renders what: lists of frames handed to users, taken back, and moved between them.

The rules for list sizes and steals are pure (supervisor/scheduling.py); this module reads
the numbers they need and applies their decisions. Everything that touches a workload's
assignments first locks its row (`lock_workload`, `FOR UPDATE`), so two workers never hand
the same frames to different users.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import and_, func, select, text, update
from sqlalchemy.orm import Session

from supervisor import outbox, scheduling, timeline
from supervisor.frames import speculation
from supervisor.messages import FrameRendered
from supervisor.models import (
    Frame,
    FrameState,
    InboxEvent,
    UserState,
    Workload,
    WorkloadStatus,
    WorkloadUser,
)

logger = logging.getLogger(__name__)


def lock_workload(session: Session, workload_id: str) -> Workload | None:
    return session.scalars(
        select(Workload).where(Workload.id == workload_id).with_for_update()
    ).one_or_none()


def lock_workloads(session: Session, workload_ids: Iterable[str]) -> dict[str, Workload]:
    """Lock the workloads in id order, so two batches never wait on each other in a cycle."""
    ids = sorted(set(workload_ids))
    if not ids:
        return {}
    return {
        workload.id: workload
        for workload in session.scalars(
            select(Workload).where(Workload.id.in_(ids)).order_by(Workload.id).with_for_update()
        )
    }


_TOUCH_USERS = text(
    "UPDATE workload_users AS u SET last_seen_at = now() "
    "FROM unnest(CAST(:workload_ids AS varchar[]), CAST(:user_ids AS varchar[])) "
    "AS t(workload_id, user_id) "
    "WHERE u.workload_id = t.workload_id AND u.user_id = t.user_id"
)


def touch_users(session: Session, senders: Iterable[tuple[str, str]]) -> None:
    """Note that these (workload, user) pairs were heard from, in one statement (a user
    not heard from for long loses its frames, see maintenance.reclaim_stale_frames)."""
    pairs = sorted(set(senders))
    if pairs:
        session.execute(
            _TOUCH_USERS,
            {"workload_ids": [w for w, _ in pairs], "user_ids": [u for _, u in pairs]},
        )


def queues(session: Session, workload_id: str, user_ids: Iterable[str]) -> dict[str, list[int]]:
    """The frames each of these users holds and has not uploaded yet, in order."""
    held: dict[str, list[int]] = {user_id: [] for user_id in user_ids}
    if not held:
        return held
    rows = session.execute(
        select(Frame.user_id, Frame.number)
        .where(
            Frame.workload_id == workload_id,
            Frame.state == FrameState.ASSIGNED,
            Frame.user_id.in_(list(held)),
        )
        .order_by(Frame.user_id, Frame.number)
    )
    for user_id, number in rows:
        held[user_id].append(number)
    return held


def unassign_user(session: Session, workload_id: str, user_id: str) -> int:
    """The user's frames not yet uploaded go back to be rendered by others: to their second
    holder where there is one, else to be handed out again. Frames it rendered as a second
    holder stay with their first."""
    held = (
        Frame.workload_id == workload_id,
        Frame.state == FrameState.ASSIGNED,
    )
    session.execute(
        update(Frame)
        .where(*held, Frame.backup_user_id == user_id)
        .values(backup_user_id=None, backup_at=None)
    )
    session.execute(
        update(Frame)
        .where(*held, Frame.user_id == user_id, Frame.backup_user_id.is_not(None))
        .values(user_id=Frame.backup_user_id, backup_user_id=None, backup_at=None)
    )
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


def distribute(
    session: Session,
    workload: Workload,
    cap: int,
    *,
    skip: Iterable[str] = (),
    steal: bool = False,
    speculate: speculation.Policy | None = None,
) -> dict[str, int]:
    """Give a list to every active user that holds nothing: its fair share of the lowest
    unassigned frames (scheduling.list_sizes). With `steal`, users still empty when
    nothing is unassigned take the tail half of the longest lists; the donor is not sent
    a new list (that would make it render its frame in hand again): the frames go to the
    first upload, from either. Users still empty then render stragglers a second time
    under the `speculate` policy (frames.speculation). Users in `skip` get nothing. The
    caller holds the lock."""
    if workload.status != WorkloadStatus.RUNNING:
        return {}
    held = _held_by_active_users(session, workload.id)
    skipped = set(skip) | speculation.backup_holders(session, workload.id)
    receivers = sorted(user for user, count in held.items() if count == 0 and user not in skipped)
    if not receivers:
        return {}
    unassigned = (
        workload.total_frames
        - workload.rendered_frames
        - sum(held.values())
        - _storing(session, workload.id)
    )
    lists: dict[str, list[int]] = {}
    if unassigned > 0:
        rates = _rates(session, workload.id)
        expected = max(workload.target_user_count, len(held))
        sizes = scheduling.list_sizes(unassigned, receivers, rates, expected, cap)
        frames = session.scalars(
            select(Frame.number)
            .where(Frame.workload_id == workload.id, Frame.state == FrameState.PENDING)
            .order_by(Frame.number)
            .limit(sum(sizes.values()))
        ).all()
        lists = scheduling.split_runs(frames, sizes)
        _assign_pending_runs(session, workload.id, lists)
    empty = [user for user in receivers if user not in lists]
    takers = empty
    paces: dict[str, float] = {}
    if steal and empty and speculate:
        # In the endgame a user far slower than the farm would only hold up the tails it took.
        paces = speculation.measured_paces(session, workload.id)
        slow = speculation.slow_users(paces, speculate)
        takers = [user for user in empty if user not in slow]
    if steal and takers:
        stolen = _steal(
            session, workload.id, takers, [u for u, n in held.items() if n] + list(lists)
        )
        moved = {frame for frames in stolen.values() for frame in frames}
        lists = {user: [f for f in frames if f not in moved] for user, frames in lists.items()}
        lists.update(stolen)
    idle = [user for user in empty if not lists.get(user)]
    if steal and speculate and idle and unassigned <= 0:
        lists.update(
            speculation.speculate(
                session,
                workload,
                idle,
                speculate,
                paces=paces,
                uploads_waiting=_uploads_waiting(session, workload.id),
            )
        )
    _send_lists(session, workload, lists)
    return {user: len(frames) for user, frames in lists.items()}


def drop_lost_frames(
    session: Session,
    workload: Workload,
    losers: dict[str, list[int]],
    cap: int,
    policy: speculation.Policy,
) -> None:
    """The other holders of frames just stored (user -> the frames it lost the race for)
    drop them: a user with frames left gets a new list of those (it replaces the one it
    renders), a user left with nothing gets new work or else `stop-work`. Losing a race
    costs the user nothing."""
    if not losers:
        return
    users = sorted(losers)
    left = queues(session, workload.id, users)
    for user, frames in speculation.backup_frames(session, workload.id, users).items():
        left[user] = sorted(left[user] + frames)
    relisted = {user: frames for user, frames in left.items() if frames}
    _send_lists(session, workload, relisted)
    granted = distribute(session, workload, cap, steal=True, speculate=policy)
    stopped = sorted(user for user in users if user not in relisted and user not in granted)
    if stopped:
        outbox.to_users(session, workload.id, stopped, "stop-work", lambda _user: {})
    logger.info(
        "other holders told to drop the frames stored",
        extra={
            "workload_id": workload.id,
            "relisted": sorted(relisted),
            "stopped": stopped,
            "frames": sorted(f for frames in losers.values() for f in frames)[:50],
        },
    )


def _steal(
    session: Session, workload_id: str, empty: list[str], holders: list[str]
) -> dict[str, list[int]]:
    """Move list tails from the holders to the empty users (scheduling.steal_plan): each
    receiver's new list."""
    # A frame whose upload waits in the inbox is done; moving it would render it twice.
    waiting = _uploads_waiting(session, workload_id)
    held = {
        user: [frame for frame in frames if frame not in waiting]
        for user, frames in queues(session, workload_id, holders).items()
    }
    moves = scheduling.steal_plan(empty, held, min_queue=2)
    stolen = scheduling.stolen_lists(moves)
    _assign(session, workload_id, stolen)
    for donor, receiver, frames in moves:
        timeline.note(
            session,
            workload_id,
            timeline.Kind.TAILS_MOVED,
            user_id=receiver,
            frames=len(frames),
            detail=f"from {donor}",
        )
    if moves:
        logger.info(
            "list tails moved to idle users",
            extra={"workload_id": workload_id, "moves": len(moves)},
        )
    return stolen


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


def _rates(session: Session, workload_id: str) -> dict[str, float | None]:
    """Each active user's measured rate (frames per second), None until it has one."""
    rows = session.execute(
        select(WorkloadUser.user_id, WorkloadUser.frames_done, WorkloadUser.busy_seconds).where(
            WorkloadUser.workload_id == workload_id, WorkloadUser.state == UserState.ACTIVE
        )
    ).all()
    return {
        row.user_id: (row.frames_done / row.busy_seconds if row.busy_seconds > 0 else None)
        for row in rows
    }


def _uploads_waiting(session: Session, workload_id: str) -> set[int]:
    """Frames whose upload is already in the inbox but not yet handled: rendered, only
    not yet stored. The inbox holds only events in flight, so this stays small. (The
    inbox body is FrameRendered.to_body.)"""
    numbers = session.scalars(
        select(InboxEvent.body["frame_number"].as_integer()).where(
            InboxEvent.workload_id == workload_id, InboxEvent.topic == FrameRendered.topic
        )
    )
    return {number for number in numbers if number is not None}


def _storing(session: Session, workload_id: str) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Frame)
            .where(Frame.workload_id == workload_id, Frame.state == FrameState.STORING)
        )
        or 0
    )


def _assign(session: Session, workload_id: str, plan: dict[str, list[int]]) -> None:
    """Give these assigned frames to new holders (a steal: the donor is not told, see
    distribute); the frames must still be assigned."""
    numbers = [n for frames in plan.values() for n in frames]
    owners = [user for user, frames in plan.items() for _ in frames]
    if not numbers:
        return
    session.execute(
        text(
            "UPDATE frames AS f SET user_id = a.user_id, assigned_at = now(), "
            "attempts = f.attempts + 1 "
            "FROM unnest(CAST(:numbers AS integer[]), CAST(:owners AS varchar[])) "
            "AS a(number, user_id) "
            "WHERE f.workload_id = :workload_id AND f.number = a.number "
            "AND f.state = 'assigned'"
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


def _send_lists(session: Session, workload: Workload, lists: dict[str, list[int]]) -> None:
    """Send each receiver its new list, and start the clock its rate is measured by."""
    lists = {user: frames for user, frames in lists.items() if frames}
    if not lists:
        return
    blend_hash = workload.blend_file_hash or ""
    outbox.to_users(
        session,
        workload.id,
        sorted(lists),
        "start-rendering",
        lambda user: {"blend_file_hash": blend_hash, "frame_list": lists[user]},
    )
    session.execute(
        update(WorkloadUser)
        .where(WorkloadUser.workload_id == workload.id, WorkloadUser.user_id.in_(list(lists)))
        .values(clock_at=func.now(), clock_from_list=True)
    )
