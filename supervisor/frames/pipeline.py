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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import String, any_, case, func, literal, select, text, update
from sqlalchemy.orm import Session

from supervisor import metrics, outbox, timeline
from supervisor.bans import count_failure
from supervisor.errors import PeerError
from supervisor.frames import grid, latest, speculation
from supervisor.frames.assignment import (
    distribute,
    drop_lost_frames,
    lock_workload,
    lock_workloads,
)
from supervisor.frames.claims import Claim, claim_uploads, frame_of
from supervisor.frames.validation import FrameCheck, FrameReport, InvalidFrame
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


@dataclass(frozen=True)
class Copied:
    """An upload copied to its final key, with what its checks found (None: not checked)."""

    final_key: str
    report: FrameReport | None

    @property
    def sha256(self) -> str | None:
        return self.report.sha256 if self.report else None

    @property
    def flagged(self) -> str | None:
        """Why the frame was stored although it failed a check (it was not enforced)."""
        if self.report is None or self.report.problem is None:
            return None
        return f"{self.report.problem.reason}: {self.report.problem.detail}"


def _copy_all(
    sv: Services, batch: Sequence[FrameRendered], claims: dict[int, Claim]
) -> tuple[dict[int, Copied], dict[int, Outcome]]:
    """Copy the claimed uploads temp -> final concurrently. Returns the final key of each
    upload copied, and the outcome of each that failed: a permanent failure gives the claim
    up; a transient one keeps it for the retry. Both by batch index."""

    def copy(index: int) -> Copied:
        event = batch[index]
        claim = claims[index]
        expect = claim.expect
        started = time.perf_counter()
        transferred = sv.peers.blob.transfer_temp_to_final(
            temp_key=event.temp_key,
            final_key=claim.final_key,
            extension=event.extension,
            max_bytes=sv.settings.max_frame_bytes,
            check=None if expect is None else lambda: FrameCheck(expect, enforce=claim.enforce),
        )
        metrics.TRANSFER_SECONDS.observe(time.perf_counter() - started)
        metrics.TRANSFER_BYTES.observe(transferred.size)
        return Copied(claim.final_key, transferred.report)

    copied: dict[int, Copied] = {}
    failed: dict[int, Outcome] = {}
    workers = max(1, min(COPY_CONCURRENCY, len(claims)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="frame-copy") as pool:
        futures = {index: pool.submit(copy, index) for index in claims}
    for index, future in futures.items():
        error = future.exception()
        if error is None:
            copied[index] = future.result()
        elif isinstance(error, InvalidFrame):
            failed[index] = give_up_upload(sv, batch[index], str(error), invalid=error)
        elif isinstance(error, PeerError) and not error.transient:
            failed[index] = give_up_upload(sv, batch[index], str(error))
        else:
            failed[index] = error
    return copied, failed


# --- mark --------------------------------------------------------------------------------


_MARK_STORED = text(
    "UPDATE frames AS f SET state = 'rendered', final_key = m.final_key, rendered_at = now(), "
    "claim_key = NULL, last_error = NULL, sha256 = m.sha256, flagged = m.flagged "
    "FROM unnest(CAST(:workloads AS varchar[]), CAST(:numbers AS integer[]), "
    "CAST(:keys AS varchar[]), CAST(:finals AS varchar[]), CAST(:digests AS varchar[]), "
    "CAST(:flags AS text[])) AS m(workload_id, number, claim_key, final_key, sha256, flagged) "
    "WHERE f.workload_id = m.workload_id AND f.number = m.number "
    "AND f.state = 'storing' AND f.claim_key = m.claim_key "
    "RETURNING f.workload_id, f.number, f.user_id, f.backup_user_id"
)


def _mark_all(
    sv: Services, batch: Sequence[FrameRendered], copied: dict[int, Copied]
) -> dict[int, Outcome]:
    """One transaction: mark rendered every copied frame whose claim is still this upload's,
    move the counters, queue catalog records and temp deletions, and tell the frame's other
    holder, if a straggler had two, to drop it. The workload completes later, when the
    catalog has confirmed every record (outbox.drain). Returns "stored" or "claim-lost" for
    each copied upload, by batch index."""
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
                "finals": [copy.final_key for copy in copied.values()],
                "digests": [copy.sha256 for copy in copied.values()],
                "flags": [copy.flagged for copy in copied.values()],
            },
        ).all()
        stored = {(row.workload_id, row.number): row for row in rows}
        losers: dict[str, dict[str, list[int]]] = {}
        for index, copy in copied.items():
            event = batch[index]
            workload = workloads.get(event.session_id)
            row = stored.get(frame_of(event))
            if workload is None or row is None:
                marked[index] = "claim-lost"
                outbox.delete_temp_blob(session, event.session_id, event.temp_key)
                continue
            marked[index] = "stored"
            _queue_stored_frame(session, workload, event, copy.final_key)
            if copy.report is not None and copy.report.problem is not None:
                _note_flagged(session, event, copy.report.problem)
            if row.backup_user_id is not None:
                for holder in {row.user_id, row.backup_user_id} - {event.user_id, None}:
                    losers.setdefault(workload.id, {}).setdefault(holder, []).append(
                        event.frame_number
                    )
        policy = speculation.Policy.from_settings(sv.settings)
        for workload_id, lost in sorted(losers.items()):
            drop_lost_frames(
                session,
                workloads[workload_id],
                lost,
                sv.settings.max_frames_per_assignment,
                policy,
            )
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
    for index, copy in copied.items():
        event = batch[index]
        if marked[index] == "stored":
            logger.info(
                "frame stored",
                extra={**event.log_fields(), "final_key": copy.final_key, "sha256": copy.sha256},
            )
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


def _note_flagged(session: Session, event: FrameRendered, problem: InvalidFrame) -> None:
    """A frame stored although it failed a check: enough users' uploads of it were
    refused, so it is kept and flagged rather than rendered forever."""
    metrics.FRAMES_INVALID.labels(reason=problem.reason, action="flagged").inc()
    timeline.note(
        session,
        event.session_id,
        timeline.Kind.FRAME_FLAGGED,
        user_id=event.user_id,
        detail=f"frame {event.frame_number}: {problem.reason}: {problem.detail}",
    )
    logger.warning(
        "frame failed its checks again and is stored flagged",
        extra={**event.log_fields(), "reason": problem.reason, "detail": problem.detail[:300]},
    )


# --- give up -----------------------------------------------------------------------------


def give_up_upload(
    sv: Services,
    event: FrameRendered | ErrorSendingFrame,
    reason: str,
    *,
    invalid: InvalidFrame | None = None,
) -> str:
    """This frame's upload will not be stored (its copy failed for good, the user no
    longer has the frame, retries are spent, or it failed a check: `invalid`): give its
    claim up so another upload can win. A frame its holder failed goes to its second
    holder if a straggler has one, else back to be rendered, counted against that user.

    An invalid upload counts against its sender whoever holds the frame, and the sender is
    remembered on the frame: once `max_frame_refusals` users have failed it, the next
    upload is stored flagged instead (frames.claims)."""
    upload = event.temp_key if isinstance(event, FrameRendered) else None
    with sv.db.transaction() as session:
        workload = lock_workload(session, event.session_id)
        if workload is None:
            return "workload-ended"
        row = session.execute(
            select(Frame.state, Frame.user_id, Frame.backup_user_id, Frame.claim_key).where(
                Frame.workload_id == event.session_id, Frame.number == event.frame_number
            )
        ).one_or_none()
        if row is None or row.state == FrameState.RENDERED:
            return "already-rendered"
        ours = row.state == FrameState.STORING and row.claim_key == upload
        holders = {row.user_id, row.backup_user_id}
        held = row.state == FrameState.ASSIGNED and event.user_id in holders
        if not ours and not held:
            return "not-ours"
        values = _released(session, event.session_id, row, event.user_id)
        if invalid is not None:
            values["refused_key"] = upload
            sender = literal(event.user_id, String)
            values["refused_by"] = case(
                (sender == any_(Frame.refused_by), Frame.refused_by),
                else_=func.array_append(Frame.refused_by, sender),
            )
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
        if invalid is not None or row.user_id == event.user_id:
            count_failure(session, workload, event.user_id, sv.settings.max_user_failures)
        distribute(
            session,
            workload,
            sv.settings.max_frames_per_assignment,
            skip=[event.user_id] if invalid is not None else (),
        )
        if invalid is not None and upload is not None:
            outbox.delete_temp_blob(session, event.session_id, upload)
    if invalid is not None:
        metrics.FRAMES_INVALID.labels(reason=invalid.reason, action="refused").inc()
    logger.warning(
        "upload refused; the frame will be rendered again"
        if invalid is not None
        else "upload given up; the frame will be rendered again",
        extra={
            "workload_id": event.session_id,
            "user_id": event.user_id,
            "frame": event.frame_number,
            "reason": reason[:300],
        },
    )
    send_outbox_soon(sv)
    return "refused-invalid" if invalid is not None else "requeued"


def _released(session: Session, workload_id: str, row: Any, sender: str) -> dict[str, Any]:
    """Who holds a frame once `sender`'s upload of it is given up: its second holder if the
    sender was its first; its first holder while active if the sender was the second or
    an earlier holder; else nobody, and it waits to be rendered again."""
    first, second = row.user_id, row.backup_user_id
    if sender == second:
        second = None
    if first == sender or not _is_active(session, workload_id, first):
        first, second = second, None
    if first is not None and not _is_active(session, workload_id, first):
        first = None
    if first is None:
        return {"state": FrameState.PENDING, "user_id": None, "backup_user_id": None}
    return {"state": FrameState.ASSIGNED, "user_id": first, "backup_user_id": second}


def _is_active(session: Session, workload_id: str, user_id: str | None) -> bool:
    if user_id is None:
        return False
    state = session.scalar(
        select(WorkloadUser.state).where(
            WorkloadUser.workload_id == workload_id, WorkloadUser.user_id == user_id
        )
    )
    return state == UserState.ACTIVE
