"""The rendered-frame pipeline: a batch of `user-frame-rendered` uploads is claimed, copied
to the final store, and marked rendered; an upload that cannot be stored is given up.

A rendered frame is claimed before its image is copied: the first valid upload of a frame,
from whichever of the session's users, marks the frame `storing` with its temporary key,
and only that upload is copied to the final store, so the final store is written once per
frame. A claim whose copy fails for good is given up, and another upload can win.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from supervisor import metrics, outbox, timeline
from supervisor.bans import count_failure
from supervisor.errors import PeerError
from supervisor.frames import grid, latest
from supervisor.frames.assignment import distribute, lock_workload, lock_workloads
from supervisor.frames.claims import Claim, claim_uploads, frame_of
from supervisor.messages import ErrorSendingFrame, FrameRendered
from supervisor.models import Frame, FrameState, UserState, Workload, WorkloadUser
from supervisor.workloads import send_outbox_soon

if TYPE_CHECKING:
    from supervisor.services import Services

logger = logging.getLogger(__name__)

COPY_CONCURRENCY = 8

# What each upload of a batch came to: "stored", "duplicate", "claim-lost", a give-up's
# outcome, or the exception to settle it with (Refused to refuse it, PeerError to retry it).
Outcome = str | Exception


def record_rendered_frame(sv: Services, event: FrameRendered) -> str:
    """Claim the frame for this upload, copy it temp -> final, mark the frame rendered.

    The copy is idempotent (same bytes, same key), and a claim is taken again by the same
    upload, so a crash anywhere leaves a frame to claim or copy again, or a rendered frame
    with its image. The catalog record and the temp deletion leave through the outbox after
    the commit. One event is a batch of one: Refused refuses it, a transient PeerError
    retries it."""
    [outcome] = record_rendered_frames(sv, [event])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def record_rendered_frames(sv: Services, batch: Sequence[FrameRendered]) -> list[Outcome]:
    """Many user-frame-rendered events at once, with record_rendered_frame's outcomes and
    guarantees: one transaction claims them all, the copies run concurrently, one
    transaction marks them all. An event the batch cannot settle comes back as an
    exception (Refused to refuse it, PeerError to retry it alone)."""
    claims, judged = claim_uploads(sv, batch)
    copied, failed = _copy_all(sv, batch, claims)
    marked = _mark_all(sv, batch, copied)
    send_outbox_soon(sv)
    outcomes = {**judged, **failed, **marked}
    return [outcomes.get(index, "duplicate") for index in range(len(batch))]


# --- copy --------------------------------------------------------------------------------


def _copy_all(
    sv: Services, batch: Sequence[FrameRendered], claims: dict[int, Claim]
) -> tuple[dict[int, str], dict[int, Outcome]]:
    """Copy the claimed uploads temp -> final concurrently. Returns the final key of each
    upload copied, and the outcome of each that failed: a permanent failure gives the claim
    up; a transient one keeps it for the retry. Both by batch index."""

    def copy(index: int) -> int:
        event = batch[index]
        started = time.perf_counter()
        size = sv.peers.blob.transfer_temp_to_final(
            temp_key=event.temp_key,
            final_key=claims[index].final_key,
            extension=event.extension,
            max_bytes=sv.settings.max_frame_bytes,
        )
        metrics.TRANSFER_SECONDS.observe(time.perf_counter() - started)
        metrics.TRANSFER_BYTES.observe(size)
        return size

    copied: dict[int, str] = {}
    failed: dict[int, Outcome] = {}
    workers = max(1, min(COPY_CONCURRENCY, len(claims)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="frame-copy") as pool:
        futures = {index: pool.submit(copy, index) for index in claims}
    for index, future in futures.items():
        error = future.exception()
        if error is None:
            copied[index] = claims[index].final_key
        elif isinstance(error, PeerError) and not error.transient:
            failed[index] = give_up_upload(sv, batch[index], str(error))
        else:
            failed[index] = error
    return copied, failed


# --- mark --------------------------------------------------------------------------------


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
    sv: Services, batch: Sequence[FrameRendered], copied: dict[int, str]
) -> dict[int, Outcome]:
    """One transaction: mark rendered every copied frame whose claim is still this upload's,
    move the counters, queue catalog records and temp deletions. The workload completes
    later, when the catalog has confirmed every record (outbox.drain). Returns "stored" or
    "claim-lost" for each copied upload, by batch index."""
    if not copied:
        return {}
    marked: dict[int, Outcome] = {}
    with sv.db.transaction() as session:
        workloads = lock_workloads(session, (batch[index].session_id for index in copied))
        rows = session.execute(
            _MARK_STORED,
            {
                "workloads": [batch[index].session_id for index in copied],
                "numbers": [batch[index].frame_number for index in copied],
                "keys": [batch[index].temp_key for index in copied],
                "finals": list(copied.values()),
            },
        ).all()
        stored = {(row.workload_id, row.number) for row in rows}
        for index, final_key in copied.items():
            event = batch[index]
            workload = workloads.get(event.session_id)
            if workload is None or frame_of(event) not in stored:
                marked[index] = "claim-lost"
                outbox.delete_temp_blob(session, event.session_id, event.temp_key)
            else:
                marked[index] = "stored"
                _queue_stored_frame(session, workload, event, final_key)
        grid.count_rendered(
            session,
            (
                (workloads[batch[index].session_id], batch[index].frame_number)
                for index, outcome in marked.items()
                if outcome == "stored"
            ),
        )
    newly_stored = [batch[index] for index, outcome in marked.items() if outcome == "stored"]
    metrics.FRAMES_STORED.inc(len(newly_stored))
    latest.remember(
        sv.redis, ((event.session_id, event.frame_number, event.user_id) for event in newly_stored)
    )
    for index, final_key in copied.items():
        event = batch[index]
        if marked[index] == "stored":
            logger.info("frame stored", extra={**event.log_fields(), "final_key": final_key})
        else:
            logger.warning(
                "frame copied but its claim had been given up; another upload stores it",
                extra={"workload_id": event.session_id, "frame": event.frame_number},
            )
    return marked


def _queue_stored_frame(
    session: Session, workload: Workload, event: FrameRendered, key: str
) -> None:
    """What follows a frame marked rendered, in its transaction: the counter, the catalog
    record and the temp deletion."""
    workload.rendered_frames += 1
    outbox.record_in_catalog(
        session,
        workload.id,
        object_id=workload.object_id,
        customer_id=workload.customer_id,
        frame_number=event.frame_number,
        image_file_path=key,
    )
    outbox.delete_temp_blob(session, workload.id, event.temp_key)


# --- give up -----------------------------------------------------------------------------


def give_up_upload(sv: Services, event: FrameRendered | ErrorSendingFrame, reason: str) -> str:
    """This frame's upload will not be stored (its copy failed for good, the user no
    longer has the frame, or retries are spent): give its claim up so another upload can
    win, and if it came from the frame's holder, the frame goes back to be rendered,
    counted against that user."""
    upload = event.temp_key if isinstance(event, FrameRendered) else None
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
        ours = row.state == FrameState.STORING and row.claim_key == upload
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
        timeline.note(
            session,
            workload.id,
            timeline.Kind.FRAME_REFUSED,
            user_id=event.user_id,
            detail=f"frame {event.frame_number}: {reason}",
        )
        if from_holder:
            count_failure(session, workload, event.user_id, sv.settings.max_user_failures)
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
