"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('organizations',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'", name=op.f('ck_organizations_slug')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_organizations'))
    )
    op.create_table('device_services',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('organization_id', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('project_id', sa.Text(), nullable=False),
    sa.Column('base_url', sa.Text(), server_default='https://api.golioth.io', nullable=False),
    sa.Column('golioth_organization_id', sa.Text(), nullable=True),
    sa.Column('api_key_env', sa.Text(), nullable=False),
    sa.Column('sync_enabled', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('interval_seconds', sa.Integer(), server_default='300', nullable=False),
    sa.Column('direction', sa.Text(), server_default='bidirectional', nullable=False),
    sa.Column('conflict_policy', sa.Text(), server_default='manual', nullable=False),
    sa.Column('policy_overrides', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('field_groups', postgresql.ARRAY(sa.Text()), server_default='{identity,tags,blueprint,cohort,enabled,desired_state,observed}', nullable=False),
    sa.Column('allow_deletes', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('desired_state_path', sa.Text(), server_default='desired', nullable=False),
    sa.Column('webhook_enabled', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('webhook_secret_env', sa.Text(), nullable=True),
    sa.Column('webhook_secret_header', sa.Text(), server_default='x-golioth-sync-secret', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("api_key_env ~ '^[A-Za-z_][A-Za-z0-9_]*$'", name=op.f('ck_device_services_api_key_env_is_a_name')),
    sa.CheckConstraint("conflict_policy IN ('manual','local_wins','remote_wins','newest_wins')", name=op.f('ck_device_services_conflict_policy')),
    sa.CheckConstraint("direction IN ('import','export','bidirectional')", name=op.f('ck_device_services_direction')),
    sa.CheckConstraint('interval_seconds >= 60', name=op.f('ck_device_services_interval')),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], name=op.f('fk_device_services_organization_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_device_services')),
    sa.UniqueConstraint('organization_id', name=op.f('uq_device_services_organization_id'))
    )
    op.create_table('devices',
    sa.Column('id', sa.UUID(as_uuid=False), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('organization_id', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('hardware_ids', postgresql.ARRAY(sa.Text()), server_default='{}', nullable=False),
    sa.Column('tags', postgresql.ARRAY(sa.Text()), server_default='{}', nullable=False),
    sa.Column('blueprint', sa.Text(), nullable=True),
    sa.Column('cohort', sa.Text(), nullable=True),
    sa.Column('enabled', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('desired_state', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('status', sa.Text(), nullable=True),
    sa.Column('last_seen_online', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_seen_offline', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_report', sa.DateTime(timezone=True), nullable=True),
    sa.Column('firmware_versions', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('settings_status', sa.Text(), nullable=True),
    sa.Column('reported_state', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('observed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('owner', sa.Text(), nullable=True),
    sa.Column('version', sa.BigInteger(), server_default='1', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], name=op.f('fk_devices_organization_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_devices'))
    )
    op.create_index('ix_devices_hardware_ids', 'devices', ['hardware_ids'], unique=False, postgresql_using='gin')
    op.create_index('ix_devices_org_live', 'devices', ['organization_id'], unique=False, postgresql_where=sa.text('deleted_at IS NULL'))
    op.create_index('ix_devices_org_name', 'devices', ['organization_id', 'name'], unique=False)
    op.create_table('golioth_inventory',
    sa.Column('organization_id', sa.Text(), nullable=False),
    sa.Column('golioth_device_id', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('hardware_ids', postgresql.ARRAY(sa.Text()), server_default='{}', nullable=False),
    sa.Column('tag_ids', postgresql.ARRAY(sa.Text()), server_default='{}', nullable=False),
    sa.Column('tags', postgresql.ARRAY(sa.Text()), server_default='{}', nullable=False),
    sa.Column('blueprint_id', sa.Text(), nullable=True),
    sa.Column('blueprint', sa.Text(), nullable=True),
    sa.Column('cohort_id', sa.Text(), nullable=True),
    sa.Column('cohort', sa.Text(), nullable=True),
    sa.Column('enabled', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('desired_state', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('status', sa.Text(), nullable=True),
    sa.Column('last_seen_online', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_seen_offline', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_report', sa.DateTime(timezone=True), nullable=True),
    sa.Column('firmware_versions', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('settings_status', sa.Text(), nullable=True),
    sa.Column('metadata', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('golioth_created_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('golioth_updated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('fetched_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], name=op.f('fk_golioth_inventory_organization_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('organization_id', 'golioth_device_id', name=op.f('pk_golioth_inventory'))
    )
    op.create_table('golioth_references',
    sa.Column('organization_id', sa.Text(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('golioth_id', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('fetched_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], name=op.f('fk_golioth_references_organization_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('organization_id', 'kind', 'golioth_id', name=op.f('pk_golioth_references'))
    )
    op.create_table('device_service_assignments',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('service_id', sa.BigInteger(), nullable=False),
    sa.Column('device_id', sa.UUID(as_uuid=False), nullable=False),
    sa.Column('golioth_device_id', sa.Text(), nullable=False),
    sa.Column('sync_status', sa.Text(), server_default='synced', nullable=False),
    sa.Column('last_synced_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('base_snapshot', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], name=op.f('fk_device_service_assignments_device_id_devices'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['service_id'], ['device_services.id'], name=op.f('fk_device_service_assignments_service_id_device_services'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_device_service_assignments')),
    sa.UniqueConstraint('service_id', 'device_id', name=op.f('uq_device_service_assignments_service_id_device_id')),
    sa.UniqueConstraint('service_id', 'golioth_device_id', name=op.f('uq_device_service_assignments_service_id_golioth_device_id'))
    )
    op.create_index('ix_device_service_assignments_device_id', 'device_service_assignments', ['device_id'], unique=False)
    op.create_table('golioth_sync_log',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('organization_id', sa.Text(), nullable=False),
    sa.Column('service_id', sa.BigInteger(), nullable=True),
    sa.Column('dagster_run_id', sa.Text(), nullable=True),
    sa.Column('trigger', sa.Text(), server_default='manual', nullable=False),
    sa.Column('direction', sa.Text(), nullable=False),
    sa.Column('policy', sa.Text(), nullable=False),
    sa.Column('dry_run', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('scope', postgresql.ARRAY(sa.Text()), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.Text(), server_default='running', nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('fetched_remote', sa.Integer(), server_default='0', nullable=False),
    sa.Column('fetched_local', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_local', sa.Integer(), server_default='0', nullable=False),
    sa.Column('updated_local', sa.Integer(), server_default='0', nullable=False),
    sa.Column('deleted_local', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_remote', sa.Integer(), server_default='0', nullable=False),
    sa.Column('updated_remote', sa.Integer(), server_default='0', nullable=False),
    sa.Column('deleted_remote', sa.Integer(), server_default='0', nullable=False),
    sa.Column('conflicts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('failures', sa.Integer(), server_default='0', nullable=False),
    sa.Column('skipped', sa.Integer(), server_default='0', nullable=False),
    sa.Column('api_requests', sa.Integer(), server_default='0', nullable=False),
    sa.Column('api_retries', sa.Integer(), server_default='0', nullable=False),
    sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], name=op.f('fk_golioth_sync_log_organization_id_organizations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['service_id'], ['device_services.id'], name=op.f('fk_golioth_sync_log_service_id_device_services'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_golioth_sync_log'))
    )
    op.create_index('ix_golioth_sync_log_dagster_run_id', 'golioth_sync_log', ['dagster_run_id'], unique=False)
    op.create_index('ix_golioth_sync_log_org_started', 'golioth_sync_log', ['organization_id', sa.literal_column('started_at DESC')], unique=False)
    op.create_table('webhook_events',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('service_id', sa.BigInteger(), nullable=False),
    sa.Column('organization_id', sa.Text(), nullable=False),
    sa.Column('event_id', sa.Text(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('event_type', sa.Text(), nullable=False),
    sa.Column('golioth_device_id', sa.Text(), nullable=True),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('status', sa.Text(), server_default='pending', nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('claimed_by', sa.Text(), nullable=True),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.CheckConstraint("status IN ('pending','claimed','processed','failed','dead')", name=op.f('ck_webhook_events_status')),
    sa.ForeignKeyConstraint(['service_id'], ['device_services.id'], name=op.f('fk_webhook_events_service_id_device_services'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_events')),
    sa.UniqueConstraint('service_id', 'event_id', name=op.f('uq_webhook_events_service_id_event_id'))
    )
    op.create_index('ix_webhook_events_claimed_by', 'webhook_events', ['claimed_by'], unique=False)
    op.create_index('ix_webhook_events_status_id', 'webhook_events', ['status', 'id'], unique=False)
    op.create_table('device_conflicts',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('organization_id', sa.Text(), nullable=False),
    sa.Column('service_id', sa.BigInteger(), nullable=False),
    sa.Column('device_id', sa.UUID(as_uuid=False), nullable=True),
    sa.Column('golioth_device_id', sa.Text(), nullable=True),
    sa.Column('field', sa.Text(), nullable=False),
    sa.Column('conflict_type', sa.Text(), nullable=False),
    sa.Column('base_value', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('local_value', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('remote_value', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('status', sa.Text(), server_default='pending', nullable=False),
    sa.Column('resolution', sa.Text(), nullable=True),
    sa.Column('resolved_value', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('resolved_by', sa.Text(), nullable=True),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('applied_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('detected_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('sync_log_id', sa.BigInteger(), nullable=True),
    sa.CheckConstraint("conflict_type IN ('field','delete_vs_modify','identity')", name=op.f('ck_device_conflicts_conflict_type')),
    sa.CheckConstraint("status IN ('pending','resolved','applied','superseded')", name=op.f('ck_device_conflicts_status')),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], name=op.f('fk_device_conflicts_organization_id_organizations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['service_id'], ['device_services.id'], name=op.f('fk_device_conflicts_service_id_device_services'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['sync_log_id'], ['golioth_sync_log.id'], name=op.f('fk_device_conflicts_sync_log_id_golioth_sync_log'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_device_conflicts'))
    )
    op.create_index('ix_device_conflicts_org_status', 'device_conflicts', ['organization_id', 'status'], unique=False)
    op.create_index('uq_device_conflicts_open', 'device_conflicts', ['service_id', sa.literal_column("coalesce(device_id::text, '')"), sa.literal_column("coalesce(golioth_device_id, '')"), 'field'], unique=True, postgresql_where=sa.text("status IN ('pending','resolved')"))
    op.create_table('golioth_sync_log_entries',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('sync_log_id', sa.BigInteger(), nullable=False),
    sa.Column('organization_id', sa.Text(), nullable=False),
    sa.Column('device_id', sa.UUID(as_uuid=False), nullable=True),
    sa.Column('golioth_device_id', sa.Text(), nullable=True),
    sa.Column('side', sa.Text(), nullable=False),
    sa.Column('action', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), server_default='ok', nullable=False),
    sa.Column('changes', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('changed_by', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['sync_log_id'], ['golioth_sync_log.id'], name=op.f('fk_golioth_sync_log_entries_sync_log_id_golioth_sync_log'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_golioth_sync_log_entries'))
    )
    op.create_index('ix_golioth_sync_log_entries_device', 'golioth_sync_log_entries', ['device_id', sa.literal_column('created_at DESC')], unique=False)
    op.create_index('ix_golioth_sync_log_entries_golioth_device', 'golioth_sync_log_entries', ['golioth_device_id', sa.literal_column('created_at DESC')], unique=False)
    op.create_index('ix_golioth_sync_log_entries_sync_log_id', 'golioth_sync_log_entries', ['sync_log_id'], unique=False)
    op.create_table('sync_plan',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('sync_log_id', sa.BigInteger(), nullable=False),
    sa.Column('organization_id', sa.Text(), nullable=False),
    sa.Column('device_id', sa.UUID(as_uuid=False), nullable=True),
    sa.Column('golioth_device_id', sa.Text(), nullable=True),
    sa.Column('field', sa.Text(), nullable=False),
    sa.Column('action', sa.Text(), nullable=False),
    sa.Column('side', sa.Text(), nullable=False),
    sa.Column('old_value', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('new_value', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('status', sa.Text(), server_default='planned', nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('conflict_id', sa.BigInteger(), nullable=True),
    sa.Column('changed_by', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['sync_log_id'], ['golioth_sync_log.id'], name=op.f('fk_sync_plan_sync_log_id_golioth_sync_log'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sync_plan'))
    )
    op.create_index('ix_sync_plan_sync_log_id', 'sync_plan', ['sync_log_id', 'side'], unique=False)


    # `version`/`updated_at` move only when a synced field changes (see store/schema.py: devices).
    op.execute(DEVICES_TOUCH_FUNCTION)
    op.execute(
        "CREATE TRIGGER devices_touch BEFORE UPDATE ON devices "
        "FOR EACH ROW EXECUTE FUNCTION golioth_sync_devices_touch()"
    )


DEVICES_TOUCH_FUNCTION = """
CREATE OR REPLACE FUNCTION golioth_sync_devices_touch() RETURNS trigger AS $$
BEGIN
    IF (NEW.name, NEW.hardware_ids, NEW.tags, NEW.blueprint, NEW.cohort, NEW.enabled,
        NEW.desired_state, NEW.deleted_at)
       IS DISTINCT FROM
       (OLD.name, OLD.hardware_ids, OLD.tags, OLD.blueprint, OLD.cohort, OLD.enabled,
        OLD.desired_state, OLD.deleted_at) THEN
        NEW.version := OLD.version + 1;
        IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
            NEW.updated_at := now();
        END IF;
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql
"""

def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS devices_touch ON devices")
    op.execute("DROP FUNCTION IF EXISTS golioth_sync_devices_touch()")
    op.drop_index('ix_sync_plan_sync_log_id', table_name='sync_plan')
    op.drop_table('sync_plan')
    op.drop_index('ix_golioth_sync_log_entries_sync_log_id', table_name='golioth_sync_log_entries')
    op.drop_index('ix_golioth_sync_log_entries_golioth_device', table_name='golioth_sync_log_entries')
    op.drop_index('ix_golioth_sync_log_entries_device', table_name='golioth_sync_log_entries')
    op.drop_table('golioth_sync_log_entries')
    op.drop_index('uq_device_conflicts_open', table_name='device_conflicts', postgresql_where=sa.text("status IN ('pending','resolved')"))
    op.drop_index('ix_device_conflicts_org_status', table_name='device_conflicts')
    op.drop_table('device_conflicts')
    op.drop_index('ix_webhook_events_status_id', table_name='webhook_events')
    op.drop_index('ix_webhook_events_claimed_by', table_name='webhook_events')
    op.drop_table('webhook_events')
    op.drop_index('ix_golioth_sync_log_org_started', table_name='golioth_sync_log')
    op.drop_index('ix_golioth_sync_log_dagster_run_id', table_name='golioth_sync_log')
    op.drop_table('golioth_sync_log')
    op.drop_index('ix_device_service_assignments_device_id', table_name='device_service_assignments')
    op.drop_table('device_service_assignments')
    op.drop_table('golioth_references')
    op.drop_table('golioth_inventory')
    op.drop_index('ix_devices_org_name', table_name='devices')
    op.drop_index('ix_devices_org_live', table_name='devices', postgresql_where=sa.text('deleted_at IS NULL'))
    op.drop_index('ix_devices_hardware_ids', table_name='devices', postgresql_using='gin')
    op.drop_table('devices')
    op.drop_table('device_services')
    op.drop_table('organizations')
