"""Alembic environment: runs migrations on the connection `store.migrate` hands over."""

from alembic import context

from golioth_assets.store.schema import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `golioth-sync db upgrade` (golioth_assets.store.migrate)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table="golioth_sync_alembic_version",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
