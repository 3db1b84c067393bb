"""The tables golioth-sync is built around (SQLAlchemy Core).

Alembic migrations in `store/migrations/` create and evolve these; this module is what queries use.
Timestamps are `timestamptz`. JSON is `jsonb`. Lists of names/ids are `text[]`.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

from golioth_assets.core.vocabulary import ConflictStatus, ConflictType, Direction, FieldGroup, Policy, sql_in, values

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _now() -> sa.TextClause:
    return sa.text("now()")


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now())


def _updated_at() -> sa.Column:
    return sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now())


TextArray = ARRAY(sa.Text)

FIELD_GROUPS = values(FieldGroup)
# Columns naming the variables of webhook secrets (api_key_env has its own, older constraint).
SECRET_NAME_COLUMNS = (
    "webhook_secret_env",
    "webhook_signing_key_env",
    "webhook_secret_previous_env",
    "webhook_signing_key_previous_env",
)

organizations = sa.Table(
    "organizations",
    metadata,
    # The slug doubles as the Dagster partition key, so it is short and URL-safe.
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    _created_at(),
    _updated_at(),
    sa.CheckConstraint(r"id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'", name="slug"),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", UUID(as_uuid=False), primary_key=True, server_default=sa.text("gen_random_uuid()")),
    sa.Column("organization_id", sa.Text, sa.ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    # Synced, editable on both sides.
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("hardware_ids", TextArray, nullable=False, server_default="{}"),
    sa.Column("tags", TextArray, nullable=False, server_default="{}"),
    sa.Column("blueprint", sa.Text),
    sa.Column("cohort", sa.Text),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("desired_state", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    # Observed: Golioth owns these; imported only, never a conflict.
    sa.Column("status", sa.Text),  # online / offline / unknown
    sa.Column("last_seen_online", sa.DateTime(timezone=True)),
    sa.Column("last_seen_offline", sa.DateTime(timezone=True)),
    sa.Column("last_report", sa.DateTime(timezone=True)),
    sa.Column("firmware_versions", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("settings_status", sa.Text),
    sa.Column("reported_state", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("observed_at", sa.DateTime(timezone=True)),
    # Local only: never sent to Golioth.
    sa.Column("owner", sa.Text),
    # `version` and `updated_at` move (by trigger) only when a synced field changes, so that
    # observed-field updates from webhooks don't look like local edits, and so that local writes
    # by the sync can be compare-and-set against the version it read.
    sa.Column("version", sa.BigInteger, nullable=False, server_default="1"),
    _created_at(),
    _updated_at(),
    sa.Column("deleted_at", sa.DateTime(timezone=True)),
    sa.Index("ix_devices_org_live", "organization_id", postgresql_where=sa.text("deleted_at IS NULL")),
    sa.Index("ix_devices_org_name", "organization_id", "name"),
    sa.Index("ix_devices_hardware_ids", "hardware_ids", postgresql_using="gin"),
)

device_services = sa.Table(
    "device_services",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    # One Golioth connection per organization.
    sa.Column(
        "organization_id",
        sa.Text,
        sa.ForeignKey("organizations.id", ondelete="CASCADE"),
        nullable=False,
        unique=True,
    ),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("project_id", sa.Text, nullable=False),
    sa.Column("base_url", sa.Text, nullable=False, server_default="https://api.golioth.io"),
    # Cohorts live under /v1/organizations/{org}/projects/{p}; without it the cohort group is skipped.
    sa.Column("golioth_organization_id", sa.Text),
    # The NAME of the environment variable holding the key: the key itself is never stored.
    sa.Column("api_key_env", sa.Text, nullable=False),
    sa.Column("sync_enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("interval_seconds", sa.Integer, nullable=False, server_default="300"),
    sa.Column("direction", sa.Text, nullable=False, server_default="bidirectional"),
    sa.Column("conflict_policy", sa.Text, nullable=False, server_default="manual"),
    sa.Column("policy_overrides", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column(
        "field_groups",
        TextArray,
        nullable=False,
        server_default="{" + ",".join(FIELD_GROUPS) + "}",
    ),
    sa.Column("allow_deletes", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("desired_state_path", sa.Text, nullable=False, server_default="desired"),
    sa.Column("webhook_enabled", sa.Boolean, nullable=False, server_default=sa.false()),
    # The NAME of the environment variable holding the Golioth pipelines' static header secret.
    sa.Column("webhook_secret_env", sa.Text),
    sa.Column("webhook_secret_header", sa.Text, nullable=False, server_default="x-golioth-sync-secret"),
    # The mapping onto the product's own device table (store/local_table/mapping.py); NULL: `devices`.
    sa.Column("local_table", JSONB(none_as_null=True)),
    _created_at(),
    _updated_at(),
    # The NAME of the variable holding the Standard Webhooks signing key (never the pipeline secret).
    sa.Column("webhook_signing_key_env", sa.Text),
    # During a rotation the previous variable is accepted too, until the window ends.
    sa.Column("webhook_secret_previous_env", sa.Text),
    sa.Column("webhook_secret_previous_until", sa.DateTime(timezone=True)),
    sa.Column("webhook_signing_key_previous_env", sa.Text),
    sa.Column("webhook_signing_key_previous_until", sa.DateTime(timezone=True)),
    sa.CheckConstraint(sql_in("direction", Direction), name="direction"),
    sa.CheckConstraint(sql_in("conflict_policy", Policy), name="conflict_policy"),
    sa.CheckConstraint("interval_seconds >= 60", name="interval"),
    sa.CheckConstraint(r"api_key_env ~ '^[A-Za-z_][A-Za-z0-9_]*$'", name="api_key_env_is_a_name"),
    *(
        sa.CheckConstraint(rf"{column} ~ '^[A-Za-z_][A-Za-z0-9_]*$'", name=f"{column}_is_a_name")
        for column in SECRET_NAME_COLUMNS
    ),
    sa.CheckConstraint("webhook_secret_env <> webhook_signing_key_env", name="one_secret_per_webhook_format"),
)

device_service_assignments = sa.Table(
    "device_service_assignments",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("service_id", sa.BigInteger, sa.ForeignKey("device_services.id", ondelete="CASCADE"), nullable=False),
    # Local ids are text: a product's key may be a uuid, a bigint or text, in another database (no FK).
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("golioth_device_id", sa.Text, nullable=False),
    # synced | pending | failed | conflict
    sa.Column("sync_status", sa.Text, nullable=False, server_default="synced"),
    sa.Column("last_synced_at", sa.DateTime(timezone=True)),
    sa.Column("last_error", sa.Text),
    # The last state both sides agreed on, field by field: the base of the three-way merge.
    sa.Column("base_snapshot", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    _created_at(),
    _updated_at(),
    sa.UniqueConstraint("service_id", "device_id"),
    sa.UniqueConstraint("service_id", "golioth_device_id"),
    sa.Index("ix_device_service_assignments_device_id", "device_id"),
)

golioth_sync_log = sa.Table(
    "golioth_sync_log",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("organization_id", sa.Text, sa.ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    sa.Column("service_id", sa.BigInteger, sa.ForeignKey("device_services.id", ondelete="SET NULL")),
    sa.Column("dagster_run_id", sa.Text),
    sa.Column("trigger", sa.Text, nullable=False, server_default="manual"),  # schedule/sensor/manual/cli/...
    sa.Column("direction", sa.Text, nullable=False),
    sa.Column("policy", sa.Text, nullable=False),
    sa.Column("dry_run", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("scope", TextArray),  # device ids of a targeted sync; NULL for a full sync
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("status", sa.Text, nullable=False, server_default="running"),  # running/success/partial/failed
    sa.Column("error", sa.Text),
    sa.Column("fetched_remote", sa.Integer, nullable=False, server_default="0"),
    sa.Column("fetched_local", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_local", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_local", sa.Integer, nullable=False, server_default="0"),
    sa.Column("deleted_local", sa.Integer, nullable=False, server_default="0"),
    # Devices whose observed fields (last seen, firmware, ...) this run wrote locally.
    sa.Column("observed_local", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_remote", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_remote", sa.Integer, nullable=False, server_default="0"),
    sa.Column("deleted_remote", sa.Integer, nullable=False, server_default="0"),
    sa.Column("conflicts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("skipped", sa.Integer, nullable=False, server_default="0"),
    sa.Column("api_requests", sa.Integer, nullable=False, server_default="0"),
    sa.Column("api_retries", sa.Integer, nullable=False, server_default="0"),
    sa.Column("details", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Index("ix_golioth_sync_log_org_started", "organization_id", sa.text("started_at DESC")),
    sa.Index("ix_golioth_sync_log_dagster_run_id", "dagster_run_id"),
    sa.Index("ix_golioth_sync_log_started_at", "started_at"),  # the charts' fleet view (0005)
)

golioth_sync_log_entries = sa.Table(
    "golioth_sync_log_entries",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("sync_log_id", sa.BigInteger, sa.ForeignKey("golioth_sync_log.id", ondelete="CASCADE"), nullable=False),
    sa.Column("organization_id", sa.Text, nullable=False),
    sa.Column("device_id", sa.Text),
    sa.Column("golioth_device_id", sa.Text),
    sa.Column("side", sa.Text, nullable=False),  # local / remote
    sa.Column("action", sa.Text, nullable=False),  # create / update / delete / unlink / link
    sa.Column("status", sa.Text, nullable=False, server_default="ok"),  # ok / failed / skipped
    # {field: {"old": ..., "new": ...}}
    sa.Column("changes", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("error", sa.Text),
    sa.Column("changed_by", sa.Text),  # set when an operator's conflict resolution caused the change
    _created_at(),
    sa.Index("ix_golioth_sync_log_entries_device", "device_id", sa.text("created_at DESC")),
    sa.Index("ix_golioth_sync_log_entries_golioth_device", "golioth_device_id", sa.text("created_at DESC")),
    sa.Index("ix_golioth_sync_log_entries_sync_log_id", "sync_log_id"),
)

device_conflicts = sa.Table(
    "device_conflicts",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("organization_id", sa.Text, sa.ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    sa.Column("service_id", sa.BigInteger, sa.ForeignKey("device_services.id", ondelete="CASCADE"), nullable=False),
    sa.Column("device_id", sa.Text),
    sa.Column("golioth_device_id", sa.Text),
    sa.Column("field", sa.Text, nullable=False),
    sa.Column("conflict_type", sa.Text, nullable=False),  # field / delete_vs_modify / identity
    sa.Column("base_value", JSONB),
    sa.Column("local_value", JSONB),
    sa.Column("remote_value", JSONB),
    # pending → resolved → applied; or pending → superseded when both sides converge on their own
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("resolution", sa.Text),  # local / remote / value
    sa.Column("resolved_value", JSONB),
    sa.Column("resolved_by", sa.Text),
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
    sa.Column("applied_at", sa.DateTime(timezone=True)),
    sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.Column("sync_log_id", sa.BigInteger, sa.ForeignKey("golioth_sync_log.id", ondelete="SET NULL")),
    sa.CheckConstraint(sql_in("status", ConflictStatus), name="status"),
    sa.CheckConstraint(sql_in("conflict_type", ConflictType), name="conflict_type"),
    # At most one open conflict per device and field.
    sa.Index(
        "uq_device_conflicts_open",
        "service_id",
        sa.text("coalesce(device_id::text, '')"),
        sa.text("coalesce(golioth_device_id, '')"),
        "field",
        unique=True,
        postgresql_where=sa.text("status IN ('pending','resolved')"),
    ),
    sa.Index("ix_device_conflicts_org_status", "organization_id", "status"),
)

webhook_events = sa.Table(
    "webhook_events",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("service_id", sa.BigInteger, sa.ForeignKey("device_services.id", ondelete="CASCADE"), nullable=False),
    sa.Column("organization_id", sa.Text, nullable=False),
    # webhook-id, else Ce-Id, else a hash of service, device, type and body: the idempotency key.
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),  # golioth_pipeline / signed
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("golioth_device_id", sa.Text),
    # A change captured in the local table (source 'local_capture'): the row's key, as text (0007).
    sa.Column("device_id", sa.Text),
    sa.Column("payload", JSONB, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    # pending → claimed → processed; or → failed (attempts += 1) → ... → dead
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("claimed_at", sa.DateTime(timezone=True)),
    sa.Column("claimed_by", sa.Text),  # the Dagster run key / run id that owns it
    sa.Column("processed_at", sa.DateTime(timezone=True)),
    sa.Column("last_error", sa.Text),
    sa.UniqueConstraint("service_id", "event_id"),
    sa.CheckConstraint("status IN ('pending','claimed','processed','failed','dead')", name="status"),
    sa.Index("ix_webhook_events_status_id", "status", "id"),
    sa.Index("ix_webhook_events_claimed_by", "claimed_by"),
    sa.Index("ix_webhook_events_received_at", "received_at"),  # the charts (0005)
)

golioth_inventory = sa.Table(
    "golioth_inventory",
    metadata,
    # The latest full fetch of an organization's Golioth devices, as the inventory asset saw it.
    # Later steps (and other processes) read it from here instead of from a pickle.
    sa.Column("organization_id", sa.Text, sa.ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("golioth_device_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("hardware_ids", TextArray, nullable=False, server_default="{}"),
    sa.Column("tag_ids", TextArray, nullable=False, server_default="{}"),
    sa.Column("tags", TextArray, nullable=False, server_default="{}"),
    sa.Column("blueprint_id", sa.Text),
    sa.Column("blueprint", sa.Text),
    sa.Column("cohort_id", sa.Text),
    sa.Column("cohort", sa.Text),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("desired_state", JSONB),
    # Observed fields, derived from Golioth's `metadata` the same way for every reader.
    sa.Column("status", sa.Text),
    sa.Column("last_seen_online", sa.DateTime(timezone=True)),
    sa.Column("last_seen_offline", sa.DateTime(timezone=True)),
    sa.Column("last_report", sa.DateTime(timezone=True)),
    sa.Column("firmware_versions", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("settings_status", sa.Text),
    sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("golioth_created_at", sa.DateTime(timezone=True)),
    sa.Column("golioth_updated_at", sa.DateTime(timezone=True)),
    sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    # A hash of the fetched values above (store/inventory.py `fingerprints`): a full fetch compares
    # it to find the rows to rewrite. NULL (rows from before migration 0008) always differs.
    sa.Column("fingerprint", sa.BigInteger),
)

golioth_references = sa.Table(
    "golioth_references",
    metadata,
    # Golioth tags, blueprints and cohorts by id and name, per organization (refreshed each fetch).
    sa.Column("organization_id", sa.Text, sa.ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("kind", sa.Text, primary_key=True),  # tag / blueprint / cohort
    sa.Column("golioth_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
)

sync_plan = sa.Table(
    "sync_plan",
    metadata,
    # The plan of one sync run: one row per device, field and action.
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("sync_log_id", sa.BigInteger, sa.ForeignKey("golioth_sync_log.id", ondelete="CASCADE"), nullable=False),
    sa.Column("organization_id", sa.Text, nullable=False),
    sa.Column("device_id", sa.Text),
    sa.Column("golioth_device_id", sa.Text),
    sa.Column("field", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("side", sa.Text, nullable=False),  # local / remote / both / none
    sa.Column("old_value", JSONB),
    sa.Column("new_value", JSONB),
    sa.Column("reason", sa.Text),  # for operators; made from kind
    sa.Column("kind", sa.Text),  # why the row exists: a core.vocabulary.Reason (null in plans before 0002)
    # planned / applied / failed / skipped (changed concurrently) / blocked (the direction forbids it)
    sa.Column("status", sa.Text, nullable=False, server_default="planned"),
    sa.Column("error", sa.Text),
    sa.Column("conflict_id", sa.BigInteger),  # the operator's resolution that caused this change
    sa.Column("changed_by", sa.Text),
    sa.Index("ix_sync_plan_sync_log_id", "sync_log_id", "side"),
)

local_apply_intents = sa.Table(
    "local_apply_intents",
    metadata,
    # One local write transaction (maybe in the product's own database) and the bookkeeping it owes
    # here: committed before that transaction commits, done after (docs/reliability.md).
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("service_id", sa.BigInteger, sa.ForeignKey("device_services.id", ondelete="CASCADE"), nullable=False),
    sa.Column("sync_log_id", sa.BigInteger, sa.ForeignKey("golioth_sync_log.id", ondelete="SET NULL")),
    sa.Column("txid", sa.BigInteger, nullable=False),  # txid_current() of the local transaction
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),  # pending / done / aborted
    sa.Column("payload", JSONB, nullable=False),  # the bookkeeping to apply once that commit is known
    _created_at(),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint("status IN ('pending','done','aborted')", name="status"),
    sa.Index("ix_local_apply_intents_pending", "service_id", postgresql_where=sa.text("status = 'pending'")),
)

# Console sign-ins: server-side, so they expire and can be revoked. Only a hash of the session
# cookie is stored: whoever reads this table cannot sign in with it.
console_sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("id_hash", sa.Text, primary_key=True),
    # Which console token the session was opened with (a hash): a new token ends every older session.
    sa.Column("token_hash", sa.Text, nullable=False),
    _created_at(),
    sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Index("ix_console_sessions_expires_at", "expires_at"),
)
