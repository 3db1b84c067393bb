"""golioth_inventory.fingerprint: a hash of each row's fetched values, so a full fetch finds the
rows that changed without sending every row to the server to compare

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

Rows stored before this revision have none: the first full fetch after it rewrites them once.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("golioth_inventory", sa.Column("fingerprint", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("golioth_inventory", "fingerprint")
