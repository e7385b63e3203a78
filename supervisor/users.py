"""What the supervisor does with the users the User Manager hands it and the events they
send (CONTRACT.md §6 and §7): users joining, finishing their list, disconnecting, and
failing to send a frame. (A rendered frame is frames.pipeline's; bans are bans.py's.)

Each handler locks the workload's row first and changes state with conditional
statements, so a repeated event changes nothing; messages to peers go through the outbox.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from supervisor import outbox, timeline
from supervisor.bans import may_return
from supervisor.frames.assignment import (
    distribute,
    lock_workload,
    queues,
    touch_users,
    unassign_user,
)
from supervisor.frames.pipeline import give_up_upload
from supervisor.messages import ErrorSendingFrame, NewUsers, RenderingCompleted, UserDisconnected
from supervisor.models import (
    ACTIVE_STATUSES,
    Frame,
    FrameState,
    UserState,
    Workload,
    WorkloadStatus,
    WorkloadUser,
)
from supervisor.refusals import Refused
from supervisor.workloads import demand_missing_users, end_late_users, send_outbox_soon
from supervisor.workloads.demand import active_user_ids
from supervisor.workloads.ending import release_with_registration

if TYPE_CHECKING:
    from supervisor.messages import Event
    from supervisor.services import Services

logger = logging.getLogger(__name__)


def _log(message: str, event: Event, **fields: Any) -> None:
    logger.info(message, extra={**event.log_fields(), **fields})


# --- new-users --------------------------------------------------------------------------


def add_users(sv: Services, event: NewUsers) -> dict[str, Any]:
    """Take the users the workload still lacks and give each a list; users beyond its
    count, and users banned from it (not yet forgiven), go back at once. Then ask for the
    users still missing: the User Manager forgot the rest of the demand."""
    forgiven_before = datetime.now(UTC) - timedelta(seconds=sv.settings.forgive_user_seconds)
    with sv.db.transaction() as session:
        workload = lock_workload(session, event.session_id)
        if workload is None:
            raise Refused("unknown-session", event.session_id)
        if workload.status not in ACTIVE_STATUSES:
            end_late_users(session, workload, list(event.user_ids))
            _log("users returned: workload has ended", event, users=len(event.user_ids))
            send_outbox_soon(sv)
            return {"added": 0, "returned": len(event.user_ids)}
        active = set(active_user_ids(session, workload.id))
        room = max(0, workload.target_user_count - len(active))
        newcomers = [user for user in dict.fromkeys(event.user_ids) if user not in active]
        wanted, surplus = newcomers[:room], newcomers[room:]
        added = _activate(session, workload.id, wanted, forgiven_before)
        refused = [user for user in wanted if user not in set(added)] + surplus
        timeline.note_users(session, workload.id, timeline.Kind.USERS_ADDED, added)
        timeline.note_users(session, workload.id, timeline.Kind.USER_RELEASED, refused)
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


def return_users_of_forgotten_sessions(sv: Services, events: list[NewUsers]) -> None:
    """Users handed to sessions we have forgotten (the User Manager answered after the grace
    period, or we read the answer that late) go back: left assigned, no supervisor would
    get them again. Each session is one we bound (its id came in the routing key), so a
    release only names our own sessions. One registration, release and clean-up per session
    and batch, and no `stop-work` (we never gave them work): a flood of such messages costs
    three outbox rows a session, however long its lists."""
    returned: dict[str, dict[str, None]] = {}
    for event in events:
        returned.setdefault(event.session_id, {}).update(dict.fromkeys(event.user_ids))
    returned = {session_id: users for session_id, users in returned.items() if users}
    if not returned:
        return
    with sv.db.transaction() as session:
        for session_id, user_ids in returned.items():
            release_with_registration(session, session_id, list(user_ids))
    for session_id, user_ids in returned.items():
        logger.warning(
            "users returned: session forgotten",
            extra={"workload_id": session_id, "users": len(user_ids)},
        )
    send_outbox_soon(sv)


def _activate(
    session: Session, workload_id: str, user_ids: list[str], forgiven_before: datetime
) -> list[str]:
    """Add users, or take back ones that left (bans.may_return)."""
    if not user_ids:
        return []
    statement = insert(WorkloadUser).values(
        [{"workload_id": workload_id, "user_id": user} for user in user_ids]
    )
    statement = statement.on_conflict_do_update(
        index_elements=["workload_id", "user_id"],
        set_={
            "state": UserState.ACTIVE,
            "left_at": None,
            "last_seen_at": func.now(),
            "failed_frames": 0,
        },
        where=may_return(WorkloadUser.__table__.c, forgiven_before),
    ).returning(WorkloadUser.user_id)
    return list(session.scalars(statement))


# --- user-rendering-completed -----------------------------------------------------------


def user_finished_list(sv: Services, event: RenderingCompleted) -> dict[str, Any]:
    """A user says it is done: ask for what it still owes, or give it more work. (The real
    User Manager never forwards this event, CONTRACT.md §7: nothing depends on it.)"""
    user_id = event.user_id
    with sv.db.transaction() as session:
        workload = lock_workload(session, event.session_id)
        if workload is None:
            raise Refused("unknown-session", event.session_id)
        user_state = session.scalar(
            select(WorkloadUser.state).where(
                WorkloadUser.workload_id == workload.id, WorkloadUser.user_id == user_id
            )
        )
        if user_state is None:
            raise Refused("not-our-user", user_id)
        if user_state != UserState.ACTIVE or workload.status != WorkloadStatus.RUNNING:
            return {"ignored": True}
        touch_users(session, [(workload.id, user_id)])
        owed = queues(session, workload.id, [user_id])[user_id]
        if owed:
            blend_hash = workload.blend_file_hash or ""
            outbox.to_users(
                session,
                workload.id,
                [user_id],
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


def user_disconnected(sv: Services, event: UserDisconnected) -> dict[str, Any]:
    """Drop the user; its frames go to the others, and a replacement is asked for."""
    with sv.db.transaction() as session:
        workload = lock_workload(session, event.session_id)
        if workload is None:
            raise Refused("unknown-session", event.session_id)
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
                raise Refused("not-our-user", event.user_id)
            return {"ignored": True}
        freed = unassign_user(session, workload.id, event.user_id)
        timeline.note(
            session,
            workload.id,
            timeline.Kind.USER_DISCONNECTED,
            user_id=event.user_id,
            frames=freed,
        )
        granted = distribute(session, workload, sv.settings.max_frames_per_assignment)
        demanded = demand_missing_users(session, workload, force=True)
    _log("user disconnected", event, freed=freed, assigned=granted, demanded=demanded)
    send_outbox_soon(sv)
    return {"freed": freed, "assigned": granted, "demanded": demanded}


# --- user-error-sending-frame -----------------------------------------------------------


def user_could_not_send(sv: Services, event: ErrorSendingFrame) -> str:
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
        raise Refused("unknown-session", event.session_id)
    blend_hash, frame_state, frame_user, user_state = row
    if user_state is None:
        raise Refused("not-our-user", event.user_id)
    if frame_state is None:
        raise Refused("frame-outside-workload", str(event.frame_number))
    if frame_state in (FrameState.RENDERED, FrameState.STORING):
        return "already-rendered"
    if frame_state != FrameState.ASSIGNED or frame_user != event.user_id:
        raise Refused("frame-not-assigned-to-user", f"frame {event.frame_number}")
    acknowledged = sv.peers.users.send_with_ack(
        event.user_id,
        "retrieve-frame",
        {"frame-number": event.frame_number, "blend-file-hash": blend_hash or ""},
    )
    if acknowledged:
        _log("user will send the frame again", event)
        return "retrying"
    return give_up_upload(sv, event, "user no longer has the frame")
