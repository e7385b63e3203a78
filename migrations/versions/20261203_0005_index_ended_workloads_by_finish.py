"""index ended workloads by when they finished

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 18:00:00

Beat removes ended workloads once WORKLOAD_RETENTION_SECONDS have passed, oldest first, and
looks for ended ones still bound after their grace period: both read ended workloads by
`finished_at`. Built concurrently, so a release does not block the API on a large table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ENDED = sa.text("status IN ('completed', 'failed', 'stopped')")


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_workloads_ended_finished_at",
            "workloads",
            ["finished_at"],
            unique=False,
            postgresql_where=_ENDED,
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_workloads_ended_finished_at",
            table_name="workloads",
            postgresql_concurrently=True,
        )
