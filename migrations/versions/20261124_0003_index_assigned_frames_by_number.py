"""index assigned frames by number

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 04:29:21.789129

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_frames_assigned_number",
            "frames",
            ["workload_id", "number"],
            unique=False,
            postgresql_where=sa.text("state = 'assigned'"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(
        "ix_frames_assigned_number",
        table_name="frames",
        postgresql_where=sa.text("state = 'assigned'"),
    )
