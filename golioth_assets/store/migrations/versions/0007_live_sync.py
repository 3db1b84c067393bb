"""live sync: change capture on the built-in devices table; the inbox holds captured local changes

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

The built-in `devices` table is one more mapping (store/local_table/mapping.py), so it gets the
same capture as a product's own table, by the same code (store/local_table/capture.py): the trigger,
`golioth_sync.changes` (the outbox) and `golioth_sync.row_changes`, in golioth-sync's database.
The trigger's arguments name the tenant column, not one organization: one trigger serves them all.

`webhook_events` becomes the inbox of both sources: a captured change is copied there with the
row's key in `device_id` (source `local_capture`), so the sensor's claim, the targeted run, the
failure sensor and the dead letters treat it exactly like a webhook registry event.
"""

import sqlalchemy as sa
from alembic import op

from golioth_assets.store.local_table import capture
from golioth_assets.store.local_table.mapping import builtin_mapping

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Any organization: the trigger is the same for all of them (its tenant value is never an argument).
_DEVICES = builtin_mapping("any")


def upgrade() -> None:
    op.add_column("webhook_events", sa.Column("device_id", sa.Text(), nullable=True))
    capture.install_capture(op.get_bind(), _DEVICES)


def downgrade() -> None:
    capture.uninstall_capture(op.get_bind(), _DEVICES)
    op.drop_column("webhook_events", "device_id")
