"""the dashboard's timeline, rendered counts per grid cell, each user's pace

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 21:20:00

`workload_events` is a workload's timeline (users added, released, disconnected, frames
re-queued, refusals), written in the transaction that made the change. `frame_buckets`
counts rendered frames per cell of the dashboard's grid, so the grid of a 1,000,000-frame
workload is read from at most 1,024 rows. A user's pace (a robust running frame time and
its spread) and the time from a list's start to its first frame feed the ETA. Failed frames
waiting to be rendered again are indexed, so the grid finds them without reading every
frame.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Cells of the grid and their size: supervisor/frames/grid.py (bucket_frames).
_CELLS = 1024


def upgrade() -> None:
    op.create_table(
        "workload_events",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("workload_id", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=True),
        sa.Column("frames", sa.Integer(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["workload_id"],
            ["workloads.id"],
            name=op.f("fk_workload_events_workload_id_workloads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workload_events")),
    )
    op.create_index("ix_workload_events_workload_id_id", "workload_events", ["workload_id", "id"])
    op.create_table(
        "frame_buckets",
        sa.Column("workload_id", sa.String(length=32), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("rendered", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["workload_id"],
            ["workloads.id"],
            name=op.f("fk_frame_buckets_workload_id_workloads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("workload_id", "bucket", name=op.f("pk_frame_buckets")),
    )
    # Workloads rendered before this revision: their cells, counted once.
    op.execute(
        sa.text(
            "INSERT INTO frame_buckets (workload_id, bucket, rendered) "
            "SELECT f.workload_id, ((f.number - w.frame_start) / w.frame_step) "
            "/ ((w.total_frames + :cells - 1) / :cells), count(*) "
            "FROM frames f JOIN workloads w ON w.id = f.workload_id "
            "WHERE f.state = 'rendered' GROUP BY 1, 2"
        ).bindparams(cells=_CELLS)
    )
    op.add_column("workload_users", sa.Column("pace_seconds", sa.Float(), nullable=True))
    op.add_column("workload_users", sa.Column("pace_spread", sa.Float(), nullable=True))
    op.add_column(
        "workload_users",
        sa.Column("pace_samples", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column("workload_users", sa.Column("list_start_seconds", sa.Float(), nullable=True))
    op.add_column(
        "workload_users",
        sa.Column("clock_from_list", sa.Boolean(), server_default="false", nullable=False),
    )
    op.create_index(
        "ix_frames_failed_waiting",
        "frames",
        ["workload_id", "number"],
        postgresql_where=sa.text("state = 'pending' AND last_error IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_frames_failed_waiting", table_name="frames")
    columns = ("clock_from_list", "list_start_seconds", "pace_samples", "pace_spread")
    for column in (*columns, "pace_seconds"):
        op.drop_column("workload_users", column)
    op.drop_table("frame_buckets")
    op.drop_index("ix_workload_events_workload_id_id", table_name="workload_events")
    op.drop_table("workload_events")
