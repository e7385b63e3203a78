"""speculative second renders, and what each stored frame was checked against

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 11:40:00

A frame may be held by a second user (`backup_user_id`) rendering it speculatively; each
workload counts those second renders against its budget. A stored frame keeps the SHA-256
of its bytes and, when it was accepted despite failing a check, why (`flagged`). The users
whose uploads of a frame were refused are kept on the frame, so a frame every user fails is
accepted and flagged instead of being rendered forever; the last refused upload is kept, so
its redelivery is not checked and counted again. A workload keeps the output size and
format its .blend asks for, which every upload is checked against.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("frames", sa.Column("backup_user_id", sa.String(length=128), nullable=True))
    op.add_column("frames", sa.Column("backup_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("frames", sa.Column("sha256", sa.String(length=64), nullable=True))
    op.add_column("frames", sa.Column("flagged", sa.Text(), nullable=True))
    op.add_column(
        "frames",
        sa.Column(
            "refused_by",
            postgresql.ARRAY(sa.String(length=128)),
            server_default="{}",
            nullable=False,
        ),
    )
    op.add_column("frames", sa.Column("refused_key", sa.Text(), nullable=True))
    op.create_index(
        "ix_frames_backup_held",
        "frames",
        ["workload_id", "backup_user_id"],
        postgresql_where=sa.text("backup_user_id IS NOT NULL AND state = 'assigned'"),
    )
    op.add_column(
        "workloads",
        sa.Column("speculative_renders", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column("workloads", sa.Column("output_width", sa.Integer(), nullable=True))
    op.add_column("workloads", sa.Column("output_height", sa.Integer(), nullable=True))
    op.add_column("workloads", sa.Column("output_format", sa.String(length=32), nullable=True))


def downgrade() -> None:
    for column in ("output_format", "output_height", "output_width", "speculative_renders"):
        op.drop_column("workloads", column)
    op.drop_index("ix_frames_backup_held", table_name="frames")
    for column in ("refused_key", "refused_by", "flagged", "sha256", "backup_at", "backup_user_id"):
        op.drop_column("frames", column)
