"""Starting a workload: the API's quick part (the row, the catalog's blend file) and the
worker's slow part (the frame range, the frames, the registration and the first demand).
Both are safe to run again after any failure."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from supervisor import timeline
from supervisor.blendfile import read_scene_range
from supervisor.errors import (
    BlendFileError,
    InvalidInput,
    ObjectNotRenderable,
    PeerError,
    WorkloadAlreadyActive,
)
from supervisor.keys import validate_id
from supervisor.models import Workload, WorkloadStatus
from supervisor.workloads.demand import demand_missing_users
from supervisor.workloads.ending import fail_workload
from supervisor.workloads.handoff import send_outbox_soon, unbind_quietly

if TYPE_CHECKING:
    from supervisor.services import Services

logger = logging.getLogger(__name__)

ACTIVE_UNIQUE_INDEX = "uq_workloads_one_active_per_customer"


def start_workload(sv: Services, customer_id: str, object_id: str) -> str:
    """Create the workload row, resolve the object, and hand the slow part to the worker."""
    validate_id("customer_id", customer_id)
    validate_id("object_id", object_id)
    try:
        with sv.db.transaction() as session:
            workload = Workload(
                customer_id=customer_id,
                object_id=object_id,
                target_user_count=sv.settings.initial_user_count,
            )
            session.add(workload)
            session.flush()
            workload_id = workload.id
    except IntegrityError as exc:
        if ACTIVE_UNIQUE_INDEX in str(exc.orig):
            raise WorkloadAlreadyActive(customer_id) from None
        raise
    logger.info(
        "workload created",
        extra={"workload_id": workload_id, "customer_id": customer_id, "object_id": object_id},
    )

    try:
        ref = sv.peers.catalog.get_blend_file(object_id, customer_id)
    except Exception as exc:
        # The preparation, which binds and registers the session, is handed out only below.
        fail_workload(sv, workload_id, f"catalog: {exc}", bound=False)
        raise
    with sv.db.transaction() as session:
        session.execute(
            update(Workload)
            .where(Workload.id == workload_id, Workload.status == WorkloadStatus.INITIALIZED)
            .values(blend_file_path=ref.path, blend_file_hash=ref.hash)
        )
    try:
        sv.jobs.prepare_workload(workload_id)
    except Exception as exc:
        fail_workload(sv, workload_id, f"could not hand the workload to a worker: {exc}")
        raise
    return workload_id


@dataclass(frozen=True)
class _PrepareInput:
    customer_id: str
    object_id: str
    blend_file_path: str
    target_user_count: int
    frames_created: bool


def prepare_workload(sv: Services, workload_id: str) -> None:
    """The worker's part of start: read the frame range, create the frames, register with
    the User Manager and demand users. Safe to run again after any failure."""
    with sv.db.transaction() as session:
        workload = session.get(Workload, workload_id)
        if workload is None or workload.status != WorkloadStatus.INITIALIZED:
            logger.info("prepare skipped: workload not waiting", extra={"workload_id": workload_id})
            return
        if workload.blend_file_path is None:
            logger.info("prepare skipped: no blend file yet", extra={"workload_id": workload_id})
            return
        job = _PrepareInput(
            customer_id=workload.customer_id,
            object_id=workload.object_id,
            blend_file_path=workload.blend_file_path,
            target_user_count=workload.target_user_count,
            frames_created=workload.total_frames > 0,
        )

    if not job.frames_created:
        try:
            _create_frames(sv, workload_id, job)
        except (BlendFileError, ObjectNotRenderable, InvalidInput) as exc:
            fail_workload(sv, workload_id, str(exc))
            return
        except PeerError as exc:
            if not exc.transient:
                fail_workload(sv, workload_id, str(exc))
                return
            raise

    sv.bindings.bind(workload_id)
    with sv.db.transaction() as session:
        workload = session.scalars(
            select(Workload).where(Workload.id == workload_id).with_for_update()
        ).one_or_none()
        demanded: int | None = None
        if workload is not None and workload.status == WorkloadStatus.INITIALIZED:
            demanded = _run(session, workload)
        else:
            # An unbinding runs under this lock (end_grace): a workload gone or unbound now
            # was unbound before our bind, which is then left to undo. One merely ended is
            # unbound after it, at the end of its grace period.
            orphaned = workload is None or workload.unbound_at is not None
    if demanded is None:
        logger.info(
            "prepare skipped after binding: workload no longer waiting",
            extra={"workload_id": workload_id, "unbinding": orphaned},
        )
        if orphaned:
            unbind_quietly(sv, workload_id)
        return
    logger.info("workload running", extra={"workload_id": workload_id, "users_demanded": demanded})
    send_outbox_soon(sv)


def _run(session: Session, workload: Workload) -> int:
    """Mark a prepared workload running, register and demand its first users; return how
    many were asked for."""
    workload.status = WorkloadStatus.RUNNING
    workload.started_at = func.now()
    workload.progress_at = func.now()
    demanded = demand_missing_users(session, workload, force=True, register=True)
    timeline.note(
        session,
        workload.id,
        timeline.Kind.STARTED,
        frames=workload.total_frames,
        detail=f"scene {workload.scene_name}, {demanded} users asked for",
    )
    return demanded


def _create_frames(sv: Services, workload_id: str, job: _PrepareInput) -> None:
    settings = sv.settings
    with tempfile.TemporaryDirectory(prefix="blend-") as folder:
        local = Path(folder) / "scene.blend"
        size = sv.peers.blob.download_blend(
            job.blend_file_path, local, max_bytes=settings.max_blend_bytes
        )
        scene = read_scene_range(
            local,
            timeout=settings.blend_parse_timeout_seconds,
            memory_limit=settings.blend_parse_memory_bytes,
        )
    frames = scene.frame_numbers()
    if len(frames) == 0:
        raise BlendFileError(f"scene {scene.name!r} has no frames to render")
    if len(frames) > settings.max_frames:
        raise BlendFileError(
            f"scene {scene.name!r} has {len(frames)} frames, more than the limit of "
            f"{settings.max_frames}"
        )
    with sv.db.transaction() as session:
        claimed = session.execute(
            update(Workload)
            .where(
                Workload.id == workload_id,
                Workload.status == WorkloadStatus.INITIALIZED,
                Workload.total_frames == 0,
            )
            .values(
                scene_name=scene.name,
                frame_start=scene.frame_start,
                frame_end=scene.frame_end,
                frame_step=scene.frame_step,
                total_frames=len(frames),
                output_width=scene.output_width,
                output_height=scene.output_height,
                output_format=scene.file_format,
            )
            .returning(Workload.id)
        ).scalar_one_or_none()
        if claimed is None:
            return
        session.execute(
            text(
                "INSERT INTO frames (workload_id, number) "
                "SELECT :workload_id, n FROM generate_series("
                "CAST(:first AS integer), CAST(:last AS integer), CAST(:step AS integer)) AS n"
            ),
            {
                "workload_id": workload_id,
                "first": frames[0],
                "last": frames[-1],
                "step": frames.step,
            },
        )
    logger.info(
        "frames created",
        extra={
            "workload_id": workload_id,
            "scene": scene.name,
            "frame_start": scene.frame_start,
            "frame_end": scene.frame_end,
            "frame_step": scene.frame_step,
            "total_frames": len(frames),
            "output": f"{scene.output_width}x{scene.output_height} {scene.file_format}",
            "blend_bytes": size,
        },
    )
