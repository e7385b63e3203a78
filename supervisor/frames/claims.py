"""Claiming the frames of a batch of uploads (the first stage of frames.pipeline): each
upload is judged against the locked state, and the first valid upload of a frame claims
it (`storing`, with the upload's temporary key), so only that upload is copied."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, select, text, tuple_
from sqlalchemy.orm import Session

from supervisor import eta, outbox
from supervisor.frames import speculation
from supervisor.frames.assignment import distribute, lock_workloads, touch_users
from supervisor.frames.validation import Expectation
from supervisor.keys import final_frame_key
from supervisor.messages import FrameRendered
from supervisor.models import Frame, FrameState, Workload, WorkloadStatus, WorkloadUser
from supervisor.refusals import Refused

if TYPE_CHECKING:
    from supervisor.config import Settings
    from supervisor.services import Services

logger = logging.getLogger(__name__)

# Refusals whose upload can never be stored: its temporary image is deleted.
_UNUSABLE_UPLOADS = frozenset({"workload-not-running", "frame-outside-workload"})


@dataclass(frozen=True)
class Claim:
    """An upload the batch copies to the final store, the holder it took over from, and
    what the upload is checked against: `enforce` is False once enough users' uploads of
    the frame were refused (max_frame_refusals), and the frame is then stored and flagged."""

    final_key: str
    holder: str | None
    expect: Expectation | None = None
    enforce: bool = True


@dataclass(frozen=True)
class _FrameRow:
    state: str
    user_id: str | None
    claim_key: str | None
    refusals: int = 0
    refused_key: str | None = None


def claim_uploads(
    sv: Services, batch: Sequence[FrameRendered]
) -> tuple[dict[int, Claim], dict[int, str | Refused]]:
    """One transaction: judge every upload against the locked state, claim the frames of
    the first valid uploads, discard the uploads that are not needed, and hand a new list
    to each user whose list is now all in. Returns the claims to copy and the outcomes of
    the uploads settled here, both by batch index."""
    claims: dict[int, Claim] = {}
    settled: dict[int, str | Refused] = {}
    unwanted: list[FrameRendered] = []
    with sv.db.transaction() as session:
        workloads = lock_workloads(session, (event.session_id for event in batch))
        frames, users = _read_frames_and_users(session, batch)
        taken: dict[tuple[str, int], str] = {}
        for index, event in enumerate(batch):
            try:
                claim = _judge(event, workloads, frames, users, taken, sv.settings)
            except Refused as exc:
                settled[index] = exc
                if exc.reason in _UNUSABLE_UPLOADS:
                    unwanted.append(event)
                continue
            if claim is None:
                settled[index] = "duplicate"
                if taken.get(frame_of(event)) != event.temp_key:
                    unwanted.append(event)
                continue
            taken[frame_of(event)] = event.temp_key
            claims[index] = claim
        _take_claims(session, [(batch[index], claim) for index, claim in claims.items()])
        _count_work(session, [(batch[index].session_id, batch[index].user_id) for index in claims])
        touch_users(session, {(event.session_id, event.user_id) for event in batch})
        for event in unwanted:
            outbox.delete_temp_blob(session, event.session_id, event.temp_key)
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
                distribute(
                    session,
                    workload,
                    sv.settings.max_frames_per_assignment,
                    steal=True,
                    speculate=speculation.Policy.from_settings(sv.settings),
                )
    for event in unwanted:
        logger.info(
            "upload not needed; discarded", extra={**event.log_fields(), "temp_key": event.temp_key}
        )
    return claims, settled


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


def _read_frames_and_users(
    session: Session, batch: Sequence[FrameRendered]
) -> tuple[dict[tuple[str, int], _FrameRow], dict[tuple[str, str], str]]:
    """The frames and users the batch names, in two reads."""
    frame_keys = {frame_of(event) for event in batch}
    user_keys = {(event.session_id, event.user_id) for event in batch}
    frames: dict[tuple[str, int], _FrameRow] = {}
    if frame_keys:
        for row in session.execute(
            select(
                Frame.workload_id,
                Frame.number,
                Frame.state,
                Frame.user_id,
                Frame.claim_key,
                func.cardinality(Frame.refused_by).label("refusals"),
                Frame.refused_key,
            ).where(tuple_(Frame.workload_id, Frame.number).in_(list(frame_keys)))
        ):
            frames[(row.workload_id, row.number)] = _FrameRow(
                row.state, row.user_id, row.claim_key, row.refusals, row.refused_key
            )
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
    event: FrameRendered,
    workloads: dict[str, Workload],
    frames: dict[tuple[str, int], _FrameRow],
    users: dict[tuple[str, str], str],
    taken: dict[tuple[str, int], str],
    settings: Settings,
) -> Claim | None:
    """The claim this upload makes; None when it is not needed (the frame is rendered,
    another upload holds it, or this upload was refused already); Refused when it does not
    fit our state. Any user the session has had may deliver (one that just disconnected, or
    whose list tail moved)."""
    workload = workloads.get(event.session_id)
    if workload is None:
        raise Refused("unknown-session", event.session_id)
    if (event.session_id, event.user_id) not in users:
        raise Refused("not-our-user", event.user_id)
    frame = frames.get(frame_of(event))
    if workload.status != WorkloadStatus.RUNNING:
        raise Refused("workload-not-running", workload.status)
    if frame is None:
        raise Refused("frame-outside-workload", str(event.frame_number))
    if frame_of(event) in taken:
        return None
    if frame.state == FrameState.RENDERED:
        return None
    if frame.state == FrameState.STORING and frame.claim_key != event.temp_key:
        return None
    if frame.refused_key == event.temp_key:
        return None  # a redelivery of the upload refused last: checked and counted once
    key = final_frame_key(
        workload.customer_id, workload.object_id, event.frame_number, event.extension
    )
    return Claim(
        final_key=key,
        holder=frame.user_id,
        expect=expectation(workload, settings),
        enforce=frame.refusals < settings.max_frame_refusals,
    )


# Output formats that are movies: a farm's nodes render them as stills of a format we do not
# know, so only their size is checked.
_MOVIE_FORMATS = frozenset({"FFMPEG", "AVI_JPEG", "AVI_RAW"})


def expectation(workload: Workload, settings: Settings) -> Expectation | None:
    """What a workload's uploads are checked against; None when checks are off."""
    if not settings.validate_frames:
        return None
    movie = workload.output_format in _MOVIE_FORMATS
    return Expectation(
        file_format=None if movie else workload.output_format,
        width=workload.output_width,
        height=workload.output_height,
        content_max_bytes=settings.frame_content_check_max_bytes,
    )


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


def _take_claims(session: Session, claims: list[tuple[FrameRendered, Claim]]) -> None:
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


# Each sender's uploads in this batch (t.n) took the time since its clock started: since its
# last upload, or since its list started (`clock_from_list`: that time includes start-up, such
# as the .blend download, so it counts for the rate but is not folded into the pace). The
# pace folds in the time per frame, once per batch: eta.fold in SQL (on SET's right-hand side
# every u.* is the row's old value).
_ELAPSED = "GREATEST(0, EXTRACT(EPOCH FROM now() - u.clock_at))"
_FRAME_TIME = f"({_ELAPSED} / t.n)"
_SPREAD = "COALESCE(u.pace_spread, u.pace_seconds * :spread_start)"
_DEVIATION = (
    f"(LEAST(GREATEST({_FRAME_TIME}, u.pace_seconds / :clip), "
    f"u.pace_seconds + GREATEST(:spreads * {_SPREAD}, (:clip - 1) * u.pace_seconds)) "
    "- u.pace_seconds)"
)
_FIRST = "u.pace_samples = 0 OR u.pace_seconds IS NULL"
# The first upload of a list: its start-up and one frame (eta.fold_list_start); the other
# frames of the batch are taken off at the user's pace.
_LIST_START = f"GREATEST(0, {_ELAPSED} - (t.n - 1) * COALESCE(u.pace_seconds, 0))"
_COUNT_WORK = text(
    "UPDATE workload_users AS u SET frames_done = u.frames_done + t.n, "  # noqa: S608 (constant fragments, values are bound)
    f"busy_seconds = u.busy_seconds + {_ELAPSED}, "
    "pace_seconds = CASE WHEN u.clock_from_list THEN u.pace_seconds "
    f" WHEN {_FIRST} THEN {_FRAME_TIME} "
    f" ELSE u.pace_seconds + GREATEST(:alpha, 1.0 / (u.pace_samples + 1)) * {_DEVIATION} END, "
    "pace_spread = CASE WHEN u.clock_from_list THEN u.pace_spread "
    f" WHEN {_FIRST} THEN {_FRAME_TIME} * :spread_start "
    f" ELSE {_SPREAD} + GREATEST(:spread_alpha, 1.0 / (u.pace_samples + 1)) "
    f" * (ABS({_DEVIATION}) - {_SPREAD}) END, "
    "pace_samples = u.pace_samples + CASE WHEN u.clock_from_list THEN 0 ELSE 1 END, "
    "list_start_seconds = CASE WHEN NOT u.clock_from_list THEN u.list_start_seconds "
    f" WHEN u.list_start_seconds IS NULL THEN {_LIST_START} "
    f" ELSE u.list_start_seconds + :list_start_alpha * ({_LIST_START} - u.list_start_seconds) END, "
    "clock_from_list = false, clock_at = now() "
    "FROM unnest(CAST(:workload_ids AS varchar[]), CAST(:user_ids AS varchar[]), "
    "CAST(:counts AS integer[])) AS t(workload_id, user_id, n) "
    "WHERE u.workload_id = t.workload_id AND u.user_id = t.user_id AND u.clock_at IS NOT NULL"
)


def _count_work(session: Session, senders: Iterable[tuple[str, str]]) -> None:
    """Count each sender's frames and measure its rate and pace from the time since its
    list started or its last upload (several uploads of one user in a batch share it)."""
    counts = Counter(senders)
    if counts:
        pairs = sorted(counts)
        session.execute(
            _COUNT_WORK,
            {
                "workload_ids": [w for w, _ in pairs],
                "user_ids": [u for _, u in pairs],
                "counts": [counts[pair] for pair in pairs],
                "alpha": eta.PACE_ALPHA,
                "clip": eta.PACE_CLIP,
                "spreads": eta.PACE_CLIP_SPREADS,
                "spread_alpha": eta.SPREAD_ALPHA,
                "spread_start": eta.SPREAD_START,
                "list_start_alpha": eta.LIST_START_ALPHA,
            },
        )


def frame_of(event: FrameRendered) -> tuple[str, int]:
    return (event.session_id, event.frame_number)
