"""Speculative second renders of stragglers (MapReduce's backup tasks, a farm's "endgame").

When nothing is left to hand out and users sit idle, the frame a user has been rendering for
too long is given to an idle user as well; the first valid upload wins (frames.claims) and
the other holder is told to drop it (`release_losers`). A frame has at most one second
holder (`frames.backup_user_id`), and a workload renders at most `extra_percent` of its
frames twice.

A frame in hand is a straggler when
- it has been held longer than `after_paces` times its holder's typical frame time (the
  farm's when the holder has none yet): a user that hung, or slowed down; or
- its holder, at its own typical pace, still needs more than `after_paces` of the farm's
  frame times for it: a user slow from the start, which the first rule never flags since
  it is slow by its own standard.
The longest-held go first, each to the fastest idle user that would finish before the
holder is expected to.

The decisions are pure (`stragglers`, `pair`); `speculate` reads their inputs and applies
them. The caller holds the workload's row lock.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from supervisor import eta, metrics, timeline
from supervisor.models import Frame, FrameState, UserState, Workload, WorkloadUser

if TYPE_CHECKING:
    from supervisor.config import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    """How eagerly stragglers are duplicated; `extra_percent` 0 turns speculation off."""

    extra_percent: int
    after_paces: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(settings.speculative_extra_percent, settings.speculate_after_paces)

    def budget(self, total_frames: int) -> int:
        """How many second renders a workload of `total_frames` may have in all."""
        return math.floor(total_frames * self.extra_percent / 100)


@dataclass(frozen=True)
class InHand:
    """The frame a user renders now, and what is known of how long it takes that user."""

    frame: int
    user_id: str
    elapsed: float
    pace: float | None
    start_up: float = 0.0

    @property
    def working(self) -> float:
        """Seconds spent on the frame itself (a new list's clock includes its start-up)."""
        return max(0.0, self.elapsed - self.start_up)


def farm_pace(paces: Iterable[float | None]) -> float | None:
    """The typical frame time of the farm: the median of the users' measured paces."""
    known = [pace for pace in paces if pace]
    return statistics.median(known) if known else None


def expected_left(held: InHand, farm: float | None, after_paces: float) -> float:
    """Seconds its holder still needs for the frame at its typical pace; infinite once the
    frame is overdue (held past `after_paces` of them: nothing says when, if ever, it will
    deliver)."""
    typical = held.pace or farm
    if typical is None:
        return 0.0
    if held.working > after_paces * typical:
        return math.inf
    return max(0.0, typical - held.working)


def stragglers(held: Sequence[InHand], farm: float | None, after_paces: float) -> list[InHand]:
    """The frames in hand worth a second render, longest held first (see the module)."""
    found = []
    for frame in held:
        typical = frame.pace or farm
        if typical is None:
            continue
        overdue = frame.working > after_paces * typical
        slow = farm is not None and expected_left(frame, farm, after_paces) > after_paces * farm
        if overdue or slow:
            found.append(frame)
    return sorted(found, key=lambda f: (-f.working, f.frame))


def pair(
    candidates: Sequence[InHand],
    receivers: dict[str, float | None],
    farm: float | None,
    budget: int,
    after_paces: float,
) -> dict[str, int]:
    """Give each candidate, in order, to the fastest receiver left (`receivers`: idle user
    -> its pace, None when unknown) that would finish it before its holder is expected to;
    at most `budget` frames. Returns receiver -> frame."""
    if budget <= 0 or farm is None:
        return {}
    free = sorted(receivers, key=lambda user: (receivers[user] or farm, user))
    plan: dict[str, int] = {}
    for candidate in candidates:
        if len(plan) >= budget:
            break
        left = expected_left(candidate, farm, after_paces)
        for user in free:
            if user != candidate.user_id and (receivers[user] or farm) < left:
                plan[user] = candidate.frame
                free.remove(user)
                break
    return plan


_IN_HAND = text(
    "SELECT DISTINCT ON (f.user_id) f.user_id, f.number, f.backup_user_id, "
    "EXTRACT(EPOCH FROM now() - u.clock_at) AS elapsed, u.pace_seconds, u.pace_samples, "
    "u.clock_from_list, u.list_start_seconds "
    "FROM frames f JOIN workload_users u "
    "ON u.workload_id = f.workload_id AND u.user_id = f.user_id "
    "WHERE f.workload_id = :workload_id AND f.state = 'assigned' AND u.state = 'active' "
    "AND u.clock_at IS NOT NULL "
    "ORDER BY f.user_id, f.number"
)


def speculate(
    session: Session,
    workload: Workload,
    receivers: Sequence[str],
    policy: Policy,
    *,
    paces: dict[str, float],
    uploads_waiting: set[int],
) -> dict[str, list[int]]:
    """Give stragglers to idle `receivers` (active users holding nothing) of a workload with
    nothing unassigned, given the users' `measured_paces`. Returns each receiver's one-frame
    list, to be sent by the caller."""
    budget = policy.budget(workload.total_frames) - workload.speculative_renders
    if budget <= 0 or not receivers:
        return {}
    farm = farm_pace(paces.values())
    if farm is None:
        return {}
    rows = session.execute(_IN_HAND, {"workload_id": workload.id}).all()
    held = [
        InHand(
            frame=row.number,
            user_id=row.user_id,
            elapsed=float(row.elapsed),
            pace=row.pace_seconds if row.pace_samples else None,
            start_up=(
                _start_up(row.list_start_seconds, row.pace_seconds) if row.clock_from_list else 0.0
            ),
        )
        for row in rows
        if row.backup_user_id is None and row.number not in uploads_waiting
    ]
    plan = pair(
        stragglers(held, farm, policy.after_paces),
        {user: paces.get(user) for user in receivers},
        farm,
        budget,
        policy.after_paces,
    )
    if not plan:
        return {}
    holders = {h.frame: h for h in held}
    for receiver, frame in sorted(plan.items()):
        session.execute(
            update(Frame)
            .where(
                Frame.workload_id == workload.id,
                Frame.number == frame,
                Frame.state == FrameState.ASSIGNED,
                Frame.backup_user_id.is_(None),
            )
            .values(backup_user_id=receiver, backup_at=text("now()"))
        )
        straggler = holders[frame]
        timeline.note(
            session,
            workload.id,
            timeline.Kind.FRAME_DUPLICATED,
            user_id=receiver,
            frames=1,
            detail=f"frame {frame}, held {straggler.working:.1f} s by {straggler.user_id}",
        )
        logger.info(
            "straggler frame handed to an idle user as well",
            extra={
                "workload_id": workload.id,
                "user_id": receiver,
                "frame": frame,
                "holder": straggler.user_id,
                "held_seconds": round(straggler.working, 3),
            },
        )
    workload.speculative_renders += len(plan)
    metrics.SPECULATIVE_RENDERS.inc(len(plan))
    return {receiver: [frame] for receiver, frame in plan.items()}


def _start_up(list_start_seconds: float | None, pace_seconds: float | None) -> float:
    """What a new list's first frame takes beyond a frame: its start-up (the .blend's
    download), as the user's list starts measured it, else a default."""
    if list_start_seconds is None:
        return eta.START_UP_SECONDS
    return max(0.0, list_start_seconds - (pace_seconds or 0.0))


def measured_paces(session: Session, workload_id: str) -> dict[str, float]:
    """Each active user's typical frame time, for those measured."""
    return dict(
        session.execute(
            select(WorkloadUser.user_id, WorkloadUser.pace_seconds).where(
                WorkloadUser.workload_id == workload_id,
                WorkloadUser.state == UserState.ACTIVE,
                WorkloadUser.pace_samples > 0,
                WorkloadUser.pace_seconds.is_not(None),
            )
        ).all()
    )


def slow_users(paces: dict[str, float], policy: Policy) -> set[str]:
    """Of these users' typical frame times (`measured_paces`), those more than `after_paces`
    times the farm's: in the endgame they are given no list tails, which they would finish
    last."""
    farm = farm_pace(paces.values())
    if policy.extra_percent <= 0 or farm is None:
        return set()
    return {user for user, pace in paces.items() if pace > policy.after_paces * farm}


def backup_holders(session: Session, workload_id: str) -> set[str]:
    """Users rendering a second copy of a frame still held by another."""
    return set(
        session.scalars(
            select(Frame.backup_user_id)
            .where(
                Frame.workload_id == workload_id,
                Frame.backup_user_id.is_not(None),
                Frame.state == FrameState.ASSIGNED,
            )
            .distinct()
        )
    )


def backup_frames(
    session: Session, workload_id: str, user_ids: Iterable[str]
) -> dict[str, list[int]]:
    """The frames each of these users renders as a second holder, in order."""
    users = sorted(set(user_ids))
    held: dict[str, list[int]] = {}
    if not users:
        return held
    for user_id, number in session.execute(
        select(Frame.backup_user_id, Frame.number)
        .where(
            Frame.workload_id == workload_id,
            Frame.backup_user_id.in_(users),
            Frame.state == FrameState.ASSIGNED,
        )
        .order_by(Frame.backup_user_id, Frame.number)
    ):
        held.setdefault(user_id, []).append(number)
    return held
