"""observed_local: a run's count of devices whose observed fields it wrote locally

Revision ID: 0006
Revises: 0001
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("golioth_sync_log", sa.Column("observed_local", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    op.drop_column("golioth_sync_log", "observed_local")
