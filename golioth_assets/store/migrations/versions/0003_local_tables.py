"""local tables: a service's mapping onto a product's own table, text device ids, apply intents

Revision ID: 0003
Revises: 0001
Create Date: 2026-12-02

- device_services.local_table: the mapping (NULL = the built-in `devices` table).
- Local device ids are text outside their table (a product's key may be uuid, bigint or text):
  assignments, conflicts, the plan and the audit entries. The assignments lose their foreign key
  to `devices`: a link may point into another database; a link whose local row is gone is what
  the planner already treats as "deleted locally".
- local_apply_intents: the record that ties a local write transaction (possibly in another
  database) to its bookkeeping here (docs/reliability.md, "Two databases").
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TEXT_IDS = (
    ("device_service_assignments", False),
    ("device_conflicts", True),
    ("sync_plan", True),
    ("golioth_sync_log_entries", True),
)


def upgrade() -> None:
    op.add_column("device_services", sa.Column("local_table", postgresql.JSONB(), nullable=True))
    op.drop_constraint(
        "fk_device_service_assignments_device_id_devices", "device_service_assignments", type_="foreignkey"
    )
    for table, _ in TEXT_IDS:
        op.alter_column(table, "device_id", type_=sa.Text(), postgresql_using="device_id::text")
    op.create_table(
        "local_apply_intents",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("service_id", sa.BigInteger(), nullable=False),
        sa.Column("sync_log_id", sa.BigInteger(), nullable=True),
        sa.Column("txid", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('pending','done','aborted')", name=op.f("ck_local_apply_intents_status")),
        sa.ForeignKeyConstraint(
            ["service_id"],
            ["device_services.id"],
            name=op.f("fk_local_apply_intents_service_id_device_services"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["sync_log_id"],
            ["golioth_sync_log.id"],
            name=op.f("fk_local_apply_intents_sync_log_id_golioth_sync_log"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_local_apply_intents")),
    )
    op.create_index(
        "ix_local_apply_intents_pending",
        "local_apply_intents",
        ["service_id"],
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_local_apply_intents_pending", table_name="local_apply_intents")
    op.drop_table("local_apply_intents")
    # Ids that are not uuids (rows of a product's own table) cannot go back: they are dropped.
    op.drop_index("uq_device_conflicts_open", table_name="device_conflicts")
    for table, nullable in TEXT_IDS:
        pattern = "'^[0-9a-fA-F-]{36}$'"
        if nullable:
            op.execute(f"UPDATE {table} SET device_id = NULL WHERE device_id !~ {pattern}")
        else:
            op.execute(f"DELETE FROM {table} WHERE device_id !~ {pattern}")
        op.alter_column(table, "device_id", type_=postgresql.UUID(as_uuid=False), postgresql_using="device_id::uuid")
    op.create_index(
        "uq_device_conflicts_open",
        "device_conflicts",
        ["service_id", sa.text("coalesce(device_id::text, '')"), sa.text("coalesce(golioth_device_id, '')"), "field"],
        unique=True,
        postgresql_where=sa.text("status IN ('pending','resolved')"),
    )
    op.execute("DELETE FROM device_service_assignments a WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = a.device_id)")
    op.create_foreign_key(
        "fk_device_service_assignments_device_id_devices",
        "device_service_assignments",
        "devices",
        ["device_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.drop_column("device_services", "local_table")
