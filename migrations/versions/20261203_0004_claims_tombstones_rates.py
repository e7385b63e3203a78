"""claims before copies, stopped tombstones, catalog-confirmed counts, user rates

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 12:40:00

A frame is claimed ('storing') by the first valid upload before its image is copied, so the
final store is written once per frame. A stopped workload stays as a 'stopped' row for the
unbind grace period, so late users are released again and its overview still answers.
`recorded_frames` counts catalog records confirmed; the workload completes on the last one.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.drop_constraint(op.f("ck_workloads_status"), "workloads", type_="check")
    op.create_check_constraint(
        "status",
        "workloads",
        "status IN ('initialized', 'running', 'completed', 'failed', 'stopped')",
    )
    op.add_column(
        "workloads", sa.Column("recorded_frames", sa.Integer(), server_default="0", nullable=False)
    )
    # Workloads that completed before this revision had every record sent already.
    op.execute("UPDATE workloads SET recorded_frames = rendered_frames WHERE status = 'completed'")
    op.drop_constraint(op.f("ck_workloads_counts"), "workloads", type_="check")
    op.create_check_constraint(
        "counts",
        "workloads",
        "rendered_frames >= 0 AND rendered_frames <= total_frames "
        "AND recorded_frames >= 0 AND recorded_frames <= rendered_frames",
    )
    for column in ("registered_at", "progress_at", "unbound_at"):
        op.add_column("workloads", sa.Column(column, _TIMESTAMP, nullable=True))
    op.add_column(
        "workloads", sa.Column("registrations", sa.Integer(), server_default="0", nullable=False)
    )

    op.drop_constraint(op.f("ck_frames_state"), "frames", type_="check")
    op.create_check_constraint(
        "state", "frames", "state IN ('pending', 'assigned', 'storing', 'rendered')"
    )
    op.add_column("frames", sa.Column("claim_key", sa.Text(), nullable=True))
    op.add_column("frames", sa.Column("claimed_by", sa.String(length=128), nullable=True))
    op.add_column("frames", sa.Column("claimed_at", _TIMESTAMP, nullable=True))
    op.create_index(
        "ix_frames_storing_claimed_at",
        "frames",
        ["claimed_at"],
        postgresql_where=sa.text("state = 'storing'"),
    )

    op.create_index(
        "ix_outbox_stop_work",
        "outbox",
        ["workload_id", "id"],
        postgresql_where=sa.text("topic = 'stop-work'"),
    )

    op.add_column(
        "workload_users",
        sa.Column("frames_done", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column(
        "workload_users",
        sa.Column("busy_seconds", sa.Float(), server_default="0", nullable=False),
    )
    op.add_column("workload_users", sa.Column("clock_at", _TIMESTAMP, nullable=True))


def downgrade() -> None:
    op.drop_index("ix_outbox_stop_work", table_name="outbox")
    op.drop_column("workload_users", "clock_at")
    op.drop_column("workload_users", "busy_seconds")
    op.drop_column("workload_users", "frames_done")
    op.drop_index("ix_frames_storing_claimed_at", table_name="frames")
    op.execute("UPDATE frames SET state = 'assigned' WHERE state = 'storing'")
    op.drop_column("frames", "claimed_at")
    op.drop_column("frames", "claimed_by")
    op.drop_column("frames", "claim_key")
    op.drop_constraint(op.f("ck_frames_state"), "frames", type_="check")
    op.create_check_constraint("state", "frames", "state IN ('pending', 'assigned', 'rendered')")
    op.drop_column("workloads", "registrations")
    for column in ("unbound_at", "progress_at", "registered_at"):
        op.drop_column("workloads", column)
    op.drop_constraint(op.f("ck_workloads_counts"), "workloads", type_="check")
    op.create_check_constraint(
        "counts", "workloads", "rendered_frames >= 0 AND rendered_frames <= total_frames"
    )
    op.drop_column("workloads", "recorded_frames")
    op.execute("DELETE FROM workloads WHERE status = 'stopped'")
    op.drop_constraint(op.f("ck_workloads_status"), "workloads", type_="check")
    op.create_check_constraint(
        "status", "workloads", "status IN ('initialized', 'running', 'completed', 'failed')"
    )
