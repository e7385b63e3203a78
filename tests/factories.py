"""Rows for tests: a workload, its users and its frames, with defaults a test overrides.

Each takes the session of the caller's unit of work and only adds (and flushes): the caller
commits, so the rows go with whatever else the test writes in that transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.orm import Session

from supervisor.models import FrameState, UserState, Workload, WorkloadUser


def workload(session: Session, **values: Any) -> Workload:
    """A workload of customer "c" and object "o" wanting one user, in the model's default
    state unless `values` say otherwise; flushed, so its id is known."""
    row = Workload(**{"customer_id": "c", "object_id": "o", "target_user_count": 1, **values})
    session.add(row)
    session.flush()
    return row


def users(
    session: Session, workload_id: str, *user_ids: str, state: str = UserState.ACTIVE, **values: Any
) -> None:
    """The workload's users, all in `state`, with `values` for the other columns."""
    session.execute(
        insert(WorkloadUser),
        [{"workload_id": workload_id, "user_id": u, "state": state, **values} for u in user_ids],
    )


def frames(
    session: Session,
    workload_id: str,
    first: int,
    last: int,
    *,
    state: str = FrameState.PENDING,
    user_id: str | None = None,
) -> None:
    """Frames first..last in one statement, as start_workload makes them (any count costs
    one round trip), all in `state` and held by `user_id`."""
    session.execute(
        text(
            "INSERT INTO frames (workload_id, number, state, user_id) "
            "SELECT :workload_id, n, :state, :user_id "
            "FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS n"
        ),
        {
            "workload_id": workload_id,
            "state": str(state),
            "user_id": user_id,
            "first": first,
            "last": last,
        },
    )
