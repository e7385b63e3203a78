"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-24 02:25:51.131154

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("workload_id", sa.String(length=32), nullable=True),
        sa.Column("destination", sa.String(length=32), nullable=False),
        sa.Column("topic", sa.String(length=64), nullable=False),
        sa.Column("body", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "available_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    op.create_table(
        "workloads",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("object_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("blend_file_path", sa.Text(), nullable=True),
        sa.Column("blend_file_hash", sa.Text(), nullable=True),
        sa.Column("scene_name", sa.Text(), nullable=True),
        sa.Column("frame_start", sa.Integer(), nullable=True),
        sa.Column("frame_end", sa.Integer(), nullable=True),
        sa.Column("frame_step", sa.Integer(), nullable=True),
        sa.Column("total_frames", sa.Integer(), server_default="0", nullable=False),
        sa.Column("rendered_frames", sa.Integer(), server_default="0", nullable=False),
        sa.Column("target_user_count", sa.Integer(), nullable=False),
        sa.Column("users_demanded", sa.Integer(), server_default="0", nullable=False),
        sa.Column("demanded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('initialized', 'running', 'completed', 'failed')",
            name=op.f("ck_workloads_status"),
        ),
        sa.CheckConstraint(
            "rendered_frames >= 0 AND rendered_frames <= total_frames",
            name=op.f("ck_workloads_counts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workloads")),
    )
    op.create_index(
        "ix_workloads_customer_created", "workloads", ["customer_id", "created_at"], unique=False
    )
    op.create_index(
        "uq_workloads_one_active_per_customer",
        "workloads",
        ["customer_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('initialized', 'running')"),
    )
    op.create_table(
        "frames",
        sa.Column("workload_id", sa.String(length=32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("final_key", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rendered_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'assigned', 'rendered')", name=op.f("ck_frames_state")
        ),
        sa.PrimaryKeyConstraint("workload_id", "number", name=op.f("pk_frames")),
    )
    op.create_index(
        "ix_frames_assigned_user",
        "frames",
        ["workload_id", "user_id", "number"],
        unique=False,
        postgresql_where=sa.text("state = 'assigned'"),
    )
    op.create_table(
        "workload_users",
        sa.Column("workload_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("failed_frames", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "joined_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column(
            "last_seen_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("left_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('active', 'released', 'disconnected', 'banned')",
            name=op.f("ck_workload_users_state"),
        ),
        sa.ForeignKeyConstraint(
            ["workload_id"],
            ["workloads.id"],
            name=op.f("fk_workload_users_workload_id_workloads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("workload_id", "user_id", name=op.f("pk_workload_users")),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("workload_users")
    op.drop_index(
        "ix_frames_assigned_user",
        table_name="frames",
        postgresql_where=sa.text("state = 'assigned'"),
    )
    op.drop_table("frames")
    op.drop_index(
        "uq_workloads_one_active_per_customer",
        table_name="workloads",
        postgresql_where=sa.text("status IN ('initialized', 'running')"),
    )
    op.drop_index("ix_workloads_customer_created", table_name="workloads")
    op.drop_table("workloads")
    op.drop_table("outbox")
