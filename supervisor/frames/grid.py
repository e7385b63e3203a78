"""The dashboard's frame grid: a workload's frames in at most GRID_CELLS consecutive cells.

A workload of up to GRID_CELLS frames has one cell per frame; a larger one has cells of
`bucket_frames` frames each. The rendered frames of each cell are counted in the
transaction that marks them (frame_buckets), so the grid of a 1,000,000-frame workload is
read from at most GRID_CELLS rows; frames out with users, or failed and waiting, are few and
read through their partial indexes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.orm import Session

from supervisor.models import Workload

GRID_CELLS = 1024


def bucket_frames(total_frames: int) -> int:
    """Frames per cell: 1 up to GRID_CELLS frames, then as few as fit GRID_CELLS cells.
    (Migration 0006 computes the same to count frames rendered before it.)"""
    return max(1, -(-total_frames // GRID_CELLS))


def cell_count(total_frames: int) -> int:
    return -(-total_frames // bucket_frames(total_frames)) if total_frames > 0 else 0


def bucket_of(workload: Workload, number: int) -> int:
    """The cell of frame `number` (frames are frame_start, frame_start + step, ...)."""
    index = (number - (workload.frame_start or 0)) // (workload.frame_step or 1)
    return index // bucket_frames(workload.total_frames)


_COUNT_RENDERED = text(
    "INSERT INTO frame_buckets (workload_id, bucket, rendered) "
    "SELECT * FROM unnest(CAST(:workloads AS varchar[]), CAST(:buckets AS integer[]), "
    "CAST(:counts AS integer[])) "
    "ON CONFLICT (workload_id, bucket) "
    "DO UPDATE SET rendered = frame_buckets.rendered + excluded.rendered"
)


def count_rendered(session: Session, rendered: Iterable[tuple[Workload, int]]) -> None:
    """Add these newly rendered frames (workload, frame number) to their cells, in one
    statement, in the caller's transaction (which holds the workloads' row locks)."""
    counts = Counter((workload.id, bucket_of(workload, number)) for workload, number in rendered)
    if not counts:
        return
    keys = sorted(counts)
    session.execute(
        _COUNT_RENDERED,
        {
            "workloads": [workload_id for workload_id, _ in keys],
            "buckets": [bucket for _, bucket in keys],
            "counts": [counts[key] for key in keys],
        },
    )
