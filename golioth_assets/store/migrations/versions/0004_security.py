"""security: one secret per webhook format with rotation windows; server-side console sessions

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-27

Existing services keep `webhook_secret_env` as their Golioth pipeline secret. Their signing key is
left unset on purpose: the old variable served both formats, which is the weakness this revision
removes, so signed events are refused (401) until the operator names a separate `whsec_` key
(`golioth-sync services update --webhook-signing-key-env GOLIOTH_…`).
"""
from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

SECRET_NAME_COLUMNS = (
    'webhook_secret_env',
    'webhook_signing_key_env',
    'webhook_secret_previous_env',
    'webhook_signing_key_previous_env',
)


def upgrade() -> None:
    op.add_column('device_services', sa.Column('webhook_signing_key_env', sa.Text(), nullable=True))
    op.add_column('device_services', sa.Column('webhook_secret_previous_env', sa.Text(), nullable=True))
    op.add_column('device_services', sa.Column('webhook_secret_previous_until', sa.DateTime(timezone=True), nullable=True))
    op.add_column('device_services', sa.Column('webhook_signing_key_previous_env', sa.Text(), nullable=True))
    op.add_column('device_services', sa.Column('webhook_signing_key_previous_until', sa.DateTime(timezone=True), nullable=True))
    for column in SECRET_NAME_COLUMNS:
        op.create_check_constraint(
            op.f(f'ck_device_services_{column}_is_a_name'), 'device_services', f"{column} ~ '^[A-Za-z_][A-Za-z0-9_]*$'"
        )
    op.create_check_constraint(
        op.f('ck_device_services_one_secret_per_webhook_format'),
        'device_services',
        'webhook_secret_env <> webhook_signing_key_env',
    )
    op.create_table('console_sessions',
    sa.Column('id_hash', sa.Text(), nullable=False),
    sa.Column('token_hash', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id_hash', name=op.f('pk_console_sessions'))
    )
    op.create_index('ix_console_sessions_expires_at', 'console_sessions', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_console_sessions_expires_at', table_name='console_sessions')
    op.drop_table('console_sessions')
    op.drop_constraint(op.f('ck_device_services_one_secret_per_webhook_format'), 'device_services', type_='check')
    for column in SECRET_NAME_COLUMNS:
        op.drop_constraint(op.f(f'ck_device_services_{column}_is_a_name'), 'device_services', type_='check')
    for column in (
        'webhook_signing_key_previous_until',
        'webhook_signing_key_previous_env',
        'webhook_secret_previous_until',
        'webhook_secret_previous_env',
        'webhook_signing_key_env',
    ):
        op.drop_column('device_services', column)
