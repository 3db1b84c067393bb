"""indexes for the console's charts: webhook events and sync runs by time

Revision ID: 0005
Revises: 0001
Create Date: 2026-12-03
"""
from alembic import op

revision = '0005'
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The charts read a time window across every organization (the fleet view): without these,
    # each page load scans the whole inbox and the whole sync log.
    op.create_index('ix_webhook_events_received_at', 'webhook_events', ['received_at'])
    op.create_index('ix_golioth_sync_log_started_at', 'golioth_sync_log', ['started_at'])


def downgrade() -> None:
    op.drop_index('ix_golioth_sync_log_started_at', table_name='golioth_sync_log')
    op.drop_index('ix_webhook_events_received_at', table_name='webhook_events')
