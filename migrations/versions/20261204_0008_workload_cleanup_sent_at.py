"""when the User Manager last got a workload's cleanup-session

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 20:20:00

An ended workload stays bound to its session for a grace period, so that users the User
Manager hands over late are released again. That period now runs from the later of the
ending and the `cleanup-session` the outbox sent: when the outbox lags (a slow or absent
User Manager), the User Manager answers what we sent long after the ending. Nullable and
without a default, so adding it does not rewrite the table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "workloads", sa.Column("cleanup_sent_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("workloads", "cleanup_sent_at")
