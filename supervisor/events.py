"""What the supervisor does with each User Manager event (CONTRACT.md §6 and §7).

Handlers are safe under at-least-once delivery and any number of worker processes:
- every state change is a conditional statement, so a repeated event changes nothing;
- everything that touches a workload's assignments first locks its row (`FOR UPDATE`),
  so two workers never hand the same frames to different users;
- messages to peers are written to the outbox in the same transaction.

A rendered frame is claimed before its image is copied: the first valid upload of a frame,
from whichever of the session's users, marks the frame `storing` with its temporary key,
and only that upload is copied to the final store, so the final store is written once per
frame. A claim whose copy fails for good is given up, and another upload can win.
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
from supervisor.keys import final_frame_key
from supervisor.models import (
    ACTIVE_STATUSES,
    Frame,
    FrameState,
    InboxEvent,
    UserState,
    Workload,
    WorkloadStatus,
    WorkloadUser,
)
from supervisor.workloads import (
    demand_missing_users,
    end_late_users,
    release_users,
    send_outbox_soon,
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


def _uploads_waiting(session: Session, workload_id: str) -> set[int]:
    """Frames whose upload is already in the inbox but not yet handled: rendered, only
    not yet stored. The inbox holds only events in flight, so this stays small."""
    numbers = session.scalars(
        select(InboxEvent.body["frame_number"].as_integer()).where(
            InboxEvent.workload_id == workload_id, InboxEvent.topic == "user-frame-rendered"
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
        .values(clock_at=func.now())
    )


def distribute(
    session: Session,
    workload: Workload,
    cap: int,
    *,
    skip: Iterable[str] = (),
    steal: bool = False,
) -> dict[str, int]:
    """Give a list to every active user that holds nothing: its fair share of the lowest
    unassigned frames (scheduling.list_sizes). With `steal`, users still empty when
    nothing is unassigned take the tail half of the longest lists; the donor is not sent
    a new list (that would make it render its frame in hand again): the frames go to the
    first upload, from either. Users in `skip` get nothing. The caller holds the lock."""
    if workload.status != WorkloadStatus.RUNNING:
        return {}
    held = _held_by_active_users(session, workload.id)
    skipped = set(skip)
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
    if steal and empty:
        holders = [user for user, count in held.items() if count > 0] + list(lists)
        # A frame whose upload waits in the inbox is done; moving it would render it twice.
        waiting = _uploads_waiting(session, workload.id)
        queues = {
            user: [frame for frame in frames if frame not in waiting]
            for user, frames in _queues(session, workload.id, holders).items()
        }
        moves = scheduling.steal_plan(empty, queues, min_queue=2)
        stolen = scheduling.stolen_lists(moves)
        _assign(session, workload.id, stolen)
        moved = {frame for frames in stolen.values() for frame in frames}
        lists = {user: [f for f in frames if f not in moved] for user, frames in lists.items()}
        lists.update(stolen)
        if moves:
            logger.info(
                "list tails moved to idle users",
                extra={"workload_id": workload.id, "moves": len(moves)},
            )
    _send_lists(session, workload, lists)
    return {user: len(frames) for user, frames in lists.items()}


# --- new-users --------------------------------------------------------------------------


def add_users(sv: Supervisor, event: Event) -> dict[str, Any]:
    """Take the users the workload still lacks and give each a list; users beyond its
    count, and users banned from it (not yet forgiven), go back at once. Then ask for the
    users still missing: the User Manager forgot the rest of the demand."""
    forgiven_before = datetime.now(UTC) - timedelta(seconds=sv.settings.forgive_user_seconds)
    with sv.db.transaction() as session:
        workload = lock_workload(session, event.session_id)
        if workload is None:
            raise EventRefused("unknown-session", event.session_id)
        if workload.status not in ACTIVE_STATUSES:
            end_late_users(session, workload, list(event.user_ids))
            _log("users returned: workload has ended", event, users=len(event.user_ids))
            send_outbox_soon(sv)
            return {"added": 0, "returned": len(event.user_ids)}
        active = set(_active_users(session, workload.id))
        room = max(0, workload.target_user_count - len(active))
        newcomers = [user for user in dict.fromkeys(event.user_ids) if user not in active]
        wanted, surplus = newcomers[:room], newcomers[room:]
        added = _activate(session, workload.id, wanted, forgiven_before)
        refused = [user for user in wanted if user not in set(added)] + surplus
        if refused:
            outbox.to_user_manager(session, workload.id, "users-released", {"user_list": refused})
        granted = distribute(session, workload, sv.settings.max_frames_per_assignment, steal=True)
        missing = demand_missing_users(session, workload, force=True)
    _log(
        "users added",
        event,
        added=len(added),
        returned=len(refused),
        assigned=granted,
        still_missing=missing,
    )
    send_outbox_soon(sv)
    return {"added": len(added), "refused": refused, "assigned": granted, "missing": missing}


def _active_users(session: Session, workload_id: str) -> list[str]:
    return list(
        session.scalars(
            select(WorkloadUser.user_id).where(
                WorkloadUser.workload_id == workload_id, WorkloadUser.state == UserState.ACTIVE
            )
        )
    )


def _activate(
    session: Session, workload_id: str, user_ids: list[str], forgiven_before: datetime
) -> list[str]:
    """Add users, or take back ones that left; banned ones only once forgiven."""
    if not user_ids:
        return []
    statement = insert(WorkloadUser).values(
        [{"workload_id": workload_id, "user_id": user} for user in user_ids]
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
    return list(session.scalars(statement))


# --- user-frame-rendered ----------------------------------------------------------------


@dataclass(frozen=True)
class _Claim:
    """An upload this batch copies to the final store, and the holder it took over from."""

    final_key: str
    holder: str | None


def record_rendered_frame(sv: Supervisor, event: Event) -> str:
    """Claim the frame for this upload, copy it temp -> final, mark the frame rendered.

    The copy is idempotent (same bytes, same key), and a claim is taken again by the same
    upload, so a crash anywhere leaves a frame to claim or copy again, or a rendered frame
    with its image. The catalog record and the temp deletion leave through the outbox after
    the commit. One event is a batch of one: EventRefused refuses it, a transient PeerError
    retries it."""
    [outcome] = record_rendered_frames(sv, [event])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def record_rendered_frames(sv: Supervisor, batch: Sequence[Event]) -> list[str | Exception]:
    """Many user-frame-rendered events at once, with record_rendered_frame's outcomes and
    guarantees: one transaction claims them all, the copies run concurrently, one
    transaction marks them all. An event the batch cannot settle comes back as an
    exception (EventRefused to refuse it, PeerError to retry it alone)."""
    outcomes: list[str | Exception | None] = [None] * len(batch)
    claims = _claim_all(sv, batch, outcomes)
    copied = _copy_all(sv, batch, claims, outcomes)
    _mark_all(sv, batch, copied, outcomes)
    send_outbox_soon(sv)
    return [outcome if outcome is not None else "duplicate" for outcome in outcomes]


def _lock_workloads(session: Session, workload_ids: Iterable[str]) -> dict[str, Workload]:
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


def _claim_all(
    sv: Supervisor, batch: Sequence[Event], outcomes: list[str | Exception | None]
) -> dict[int, _Claim]:
    """One transaction: judge every upload against the locked state, claim the frames of
    the first valid uploads, discard the uploads that are not needed, and hand a new list
    to each user whose list is now all in. Returns the claims to copy, by batch index."""
    claims: dict[int, _Claim] = {}
    unwanted: list[Event] = []
    with sv.db.transaction() as session:
        workloads = _lock_workloads(session, (event.session_id for event in batch))
        frames, users = _read_frames_and_users(session, batch)
        taken: dict[tuple[str, int], str] = {}
        for index, event in enumerate(batch):
            try:
                claim = _judge(event, workloads, frames, users, taken)
            except EventRefused as exc:
                outcomes[index] = exc
                if exc.discard_upload:
                    unwanted.append(event)
                continue
            if claim is None:
                outcomes[index] = "duplicate"
                if taken.get(_frame_of(event)) != event.temp_key:
                    unwanted.append(event)
                continue
            taken[_frame_of(event)] = event.temp_key or ""
            claims[index] = claim
        _take_claims(session, [(batch[index], claim) for index, claim in claims.items()])
        senders = {(batch[index].session_id, batch[index].user_id or "") for index in claims}
        _count_work(session, senders)
        _touch_users(session, {(e.session_id, e.user_id or "") for e in batch if e.user_id})
        for event in unwanted:
            outbox.delete_temp_blob(session, event.session_id, event.temp_key or "")
        cap = sv.settings.max_frames_per_assignment
        for workload_id in sorted({batch[index].session_id for index in claims}):
            workload = workloads[workload_id]
            workload.progress_at = func.now()
            involved = {
                user
                for index, claim in claims.items()
                if batch[index].session_id == workload_id
                for user in (claim.holder, batch[index].user_id)
                if user
            }
            if _any_emptied(session, workload_id, involved):
                distribute(session, workload, cap, steal=True)
    for event in unwanted:
        _log("upload not needed; discarded", event, temp_key=event.temp_key)
    return claims


def _any_emptied(session: Session, workload_id: str, users: set[str]) -> bool:
    """Whether one of these users (the senders and former holders of claimed frames) now
    holds nothing: only then is there a list to hand out, so the full distribution (which
    counts every user's frames) runs only then, not on every batch."""
    if not users:
        return False
    holding = set(
        session.scalars(
            select(Frame.user_id)
            .where(
                Frame.workload_id == workload_id,
                Frame.state == FrameState.ASSIGNED,
                Frame.user_id.in_(sorted(users)),
            )
            .distinct()
        )
    )
    return bool(users - holding)


def _frame_of(event: Event) -> tuple[str, int]:
    return (event.session_id, event.frame_number or 0)


@dataclass(frozen=True)
class _FrameRow:
    state: str
    user_id: str | None
    claim_key: str | None


def _read_frames_and_users(
    session: Session, batch: Sequence[Event]
) -> tuple[dict[tuple[str, int], _FrameRow], dict[tuple[str, str], str]]:
    """The frames and users the batch names, in two reads."""
    frame_keys = {(e.session_id, e.frame_number) for e in batch if e.frame_number is not None}
    user_keys = {(e.session_id, e.user_id) for e in batch if e.user_id}
    frames: dict[tuple[str, int], _FrameRow] = {}
    if frame_keys:
        for row in session.execute(
            select(
                Frame.workload_id, Frame.number, Frame.state, Frame.user_id, Frame.claim_key
            ).where(tuple_(Frame.workload_id, Frame.number).in_(list(frame_keys)))
        ):
            frames[(row.workload_id, row.number)] = _FrameRow(row.state, row.user_id, row.claim_key)
    users: dict[tuple[str, str], str] = {}
    if user_keys:
        for row in session.execute(
            select(WorkloadUser.workload_id, WorkloadUser.user_id, WorkloadUser.state).where(
                tuple_(WorkloadUser.workload_id, WorkloadUser.user_id).in_(list(user_keys))
            )
        ):
            users[(row.workload_id, row.user_id)] = row.state
    return frames, users


def _judge(
    event: Event,
    workloads: dict[str, Workload],
    frames: dict[tuple[str, int], _FrameRow],
    users: dict[tuple[str, str], str],
    taken: dict[tuple[str, int], str],
) -> _Claim | None:
    """The claim this upload makes; None when it is not needed (the frame is rendered, or
    another upload holds it); EventRefused when it does not fit our state. Any user the
    session has had may deliver (one that just disconnected, or whose list tail moved)."""
    if event.frame_number is None or not event.temp_key or not event.extension:
        raise EventRefused("incomplete-event", event.topic)
    workload = workloads.get(event.session_id)
    if workload is None:
        raise EventRefused("unknown-session", event.session_id)
    if (event.session_id, event.user_id) not in users:
        raise EventRefused("not-our-user", str(event.user_id))
    frame = frames.get(_frame_of(event))
    if workload.status != WorkloadStatus.RUNNING:
        raise EventRefused("workload-not-running", workload.status, discard_upload=True)
    if frame is None:
        raise EventRefused("frame-outside-workload", str(event.frame_number), discard_upload=True)
    if _frame_of(event) in taken:
        return None
    if frame.state == FrameState.RENDERED:
        return None
    if frame.state == FrameState.STORING and frame.claim_key != event.temp_key:
        return None
    key = final_frame_key(
        workload.customer_id, workload.object_id, event.frame_number, event.extension
    )
    return _Claim(final_key=key, holder=frame.user_id)


_TAKE_CLAIMS = text(
    "UPDATE frames AS f SET state = 'storing', claim_key = c.claim_key, "
    "claimed_by = c.user_id, claimed_at = now() "
    "FROM unnest(CAST(:workloads AS varchar[]), CAST(:numbers AS integer[]), "
    "CAST(:users AS varchar[]), CAST(:keys AS varchar[])) AS c(workload_id, number, user_id, "
    "claim_key) "
    "WHERE f.workload_id = c.workload_id AND f.number = c.number "
    "AND (f.state IN ('pending', 'assigned') "
    "OR (f.state = 'storing' AND f.claim_key = c.claim_key))"
)


def _take_claims(session: Session, claims: list[tuple[Event, _Claim]]) -> None:
    """Claim, in one statement, the frames judged free (the workload locks keep them so)."""
    if claims:
        session.execute(
            _TAKE_CLAIMS,
            {
                "workloads": [event.session_id for event, _ in claims],
                "numbers": [event.frame_number for event, _ in claims],
                "users": [event.user_id for event, _ in claims],
                "keys": [event.temp_key for event, _ in claims],
            },
        )


_COUNT_WORK = text(
    "UPDATE workload_users AS u SET frames_done = u.frames_done + 1, "
    "busy_seconds = u.busy_seconds + GREATEST(0, EXTRACT(EPOCH FROM now() - u.clock_at)), "
    "clock_at = now() "
    "FROM unnest(CAST(:workload_ids AS varchar[]), CAST(:user_ids AS varchar[])) "
    "AS t(workload_id, user_id) "
    "WHERE u.workload_id = t.workload_id AND u.user_id = t.user_id AND u.clock_at IS NOT NULL"
)


def _count_work(session: Session, senders: Iterable[tuple[str, str]]) -> None:
    """Measure each sender's rate: the time since its list started or its last upload.
    (Several uploads of one user in a batch count as one: their time is not separable.)"""
    pairs = sorted(set(senders))
    if pairs:
        session.execute(
            _COUNT_WORK,
            {"workload_ids": [w for w, _ in pairs], "user_ids": [u for _, u in pairs]},
        )


def _copy_all(
    sv: Supervisor,
    batch: Sequence[Event],
    claims: dict[int, _Claim],
    outcomes: list[str | Exception | None],
) -> dict[int, str]:
    """Copy the claimed uploads temp -> final concurrently; the indexes copied, with keys.
    A permanent failure gives the claim up; a transient one keeps it for the retry."""

    def copy(index: int) -> int:
        event = batch[index]
        return sv.peers.blob.transfer_temp_to_final(
            temp_key=event.temp_key or "",
            final_key=claims[index].final_key,
            extension=event.extension or "",
            max_bytes=sv.settings.max_frame_bytes,
        )

    copied: dict[int, str] = {}
    workers = max(1, min(COPY_CONCURRENCY, len(claims)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="frame-copy") as pool:
        futures = {index: pool.submit(copy, index) for index in claims}
    for index, future in futures.items():
        error = future.exception()
        if error is None:
            copied[index] = claims[index].final_key
        elif isinstance(error, PeerError) and not error.transient:
            outcomes[index] = give_up_upload(sv, batch[index], str(error))
        else:
            outcomes[index] = error
    return copied


_MARK_STORED = text(
    "UPDATE frames AS f SET state = 'rendered', final_key = m.final_key, rendered_at = now(), "
    "claim_key = NULL, last_error = NULL "
    "FROM unnest(CAST(:workloads AS varchar[]), CAST(:numbers AS integer[]), "
    "CAST(:keys AS varchar[]), CAST(:finals AS varchar[])) AS m(workload_id, number, "
    "claim_key, final_key) "
    "WHERE f.workload_id = m.workload_id AND f.number = m.number "
    "AND f.state = 'storing' AND f.claim_key = m.claim_key "
    "RETURNING f.workload_id, f.number"
)


def _mark_all(
    sv: Supervisor,
    batch: Sequence[Event],
    copied: dict[int, str],
    outcomes: list[str | Exception | None],
) -> None:
    """One transaction: mark rendered every copied frame whose claim is still this upload's,
    move the counters, queue catalog records and temp deletions. The workload completes
    later, when the catalog has confirmed every record (outbox.drain)."""
    if not copied:
        return
    with sv.db.transaction() as session:
        workloads = _lock_workloads(session, (batch[index].session_id for index in copied))
        rows = session.execute(
            _MARK_STORED,
            {
                "workloads": [batch[index].session_id for index in copied],
                "numbers": [batch[index].frame_number for index in copied],
                "keys": [batch[index].temp_key for index in copied],
                "finals": list(copied.values()),
            },
        ).all()
        marked = {(row.workload_id, row.number) for row in rows}
        for index, final_key in copied.items():
            event = batch[index]
            workload = workloads.get(event.session_id)
            if workload is None or _frame_of(event) not in marked:
                outcomes[index] = "claim-lost"
                outbox.delete_temp_blob(session, event.session_id, event.temp_key or "")
            else:
                outcomes[index] = "stored"
                _queue_stored_frame(session, workload, event, final_key)
    for index, final_key in copied.items():
        event = batch[index]
        if outcomes[index] == "stored":
            _log("frame stored", event, final_key=final_key)
        else:
            logger.warning(
                "frame copied but its claim had been given up; another upload stores it",
                extra={"workload_id": event.session_id, "frame": event.frame_number},
            )


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


def give_up_upload(sv: Supervisor, event: Event, reason: str) -> str:
    """This upload will not be stored (its copy failed for good, or retries are spent):
    give its claim up so another upload can win, and if it came from the frame's holder,
    the frame goes back to be rendered, counted against that user."""
    with sv.db.transaction() as session:
        workload = lock_workload(session, event.session_id)
        if workload is None:
            return "workload-ended"
        row = session.execute(
            select(Frame.state, Frame.user_id, Frame.claim_key).where(
                Frame.workload_id == event.session_id, Frame.number == event.frame_number
            )
        ).one_or_none()
        if row is None or row.state == FrameState.RENDERED:
            return "already-rendered"
        ours = row.state == FrameState.STORING and row.claim_key == event.temp_key
        held = row.state == FrameState.ASSIGNED and row.user_id == event.user_id
        if not ours and not held:
            return "not-ours"
        from_holder = row.user_id == event.user_id
        if from_holder or not _is_active(session, event.session_id, row.user_id):
            values: dict[str, Any] = {"state": FrameState.PENDING, "user_id": None}
        else:
            values = {"state": FrameState.ASSIGNED}
        session.execute(
            update(Frame)
            .where(Frame.workload_id == event.session_id, Frame.number == event.frame_number)
            .values(claim_key=None, claimed_by=None, claimed_at=None, last_error=reason, **values)
        )
        if from_holder:
            count_failure(session, workload, event.user_id or "", sv.settings.max_user_failures)
        distribute(session, workload, sv.settings.max_frames_per_assignment)
    logger.warning(
        "upload given up; the frame will be rendered again",
        extra={
            "workload_id": event.session_id,
            "user_id": event.user_id,
            "frame": event.frame_number,
            "reason": reason[:300],
        },
    )
    send_outbox_soon(sv)
    return "requeued"


def _is_active(session: Session, workload_id: str, user_id: str | None) -> bool:
    if user_id is None:
        return False
    state = session.scalar(
        select(WorkloadUser.state).where(
            WorkloadUser.workload_id == workload_id, WorkloadUser.user_id == user_id
        )
    )
    return state == UserState.ACTIVE


def give_up_on_frame(sv: Supervisor, event: Event, reason: str) -> str:
    """Retries are spent (a frame upload, or asking a user for a frame again)."""
    return give_up_upload(sv, event, reason)


# --- user-rendering-completed -----------------------------------------------------------


def user_finished_list(sv: Supervisor, event: Event) -> dict[str, Any]:
    """A user says it is done: ask for what it still owes, or give it more work. (The real
    User Manager never forwards this event, CONTRACT.md §7: nothing depends on it.)"""
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
    """Drop the user; its frames go to the others, and a replacement is asked for."""
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
        freed = unassign_user(session, workload.id, event.user_id or "")
        granted = distribute(session, workload, sv.settings.max_frames_per_assignment)
        demanded = demand_missing_users(session, workload, force=True)
    _log("user disconnected", event, freed=freed, assigned=granted, demanded=demanded)
    send_outbox_soon(sv)
    return {"freed": freed, "assigned": granted, "demanded": demanded}


def unassign_user(session: Session, workload_id: str, user_id: str) -> int:
    """The user's frames not yet uploaded go back to be rendered by others."""
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
    """Ask the user for the frame again; if it no longer has it, render it again. (The
    real User Service sends this event with an empty `blend-file-hash`; the hash is not
    needed here.)"""
    with sv.db.session() as session:
        row = session.execute(
            select(Workload.blend_file_hash, Frame.state, Frame.user_id, WorkloadUser.state)
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
    if row is None:
        raise EventRefused("unknown-session", event.session_id)
    blend_hash, frame_state, frame_user, user_state = row
    if user_state is None:
        raise EventRefused("not-our-user", str(event.user_id))
    if frame_state is None:
        raise EventRefused("frame-outside-workload", str(event.frame_number))
    if frame_state in (FrameState.RENDERED, FrameState.STORING):
        return "already-rendered"
    if frame_state != FrameState.ASSIGNED or frame_user != event.user_id:
        raise EventRefused("frame-not-assigned-to-user", f"frame {event.frame_number}")
    acknowledged = sv.peers.users.send_with_ack(
        event.user_id or "",
        "retrieve-frame",
        {"frame-number": event.frame_number, "blend-file-hash": blend_hash or ""},
    )
    if acknowledged:
        _log("user will send the frame again", event)
        return "retrying"
    return give_up_upload(sv, event, "user no longer has the frame")


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
