"""sync_plan.kind: why each plan row exists, as a structured kind (core.vocabulary.Reason)

The operator-facing `reason` text stays beside it; code decides on `kind`. Nullable: plans stored
before this revision have none.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""
from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('sync_plan', sa.Column('kind', sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column('sync_plan', 'kind')
