"""Change capture on a product's own table (examples/) and on the built-in `devices` table, in real
PostgreSQL: their app's edits of synced columns are recorded, the sync's own writes and edits of
other columns are not, and uninstall leaves their database exactly as it was."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from golioth_assets.cli.main import cli
from golioth_assets.store import database, migrate
from golioth_assets.store.local_table import capture
from golioth_assets.store.local_table.check import Misfit, run_check
from golioth_assets.store.local_table.mapping import TableMapping, builtin_mapping
from tests.fixtures.database import _drop_database, _server_url, fresh_database
from tests.fixtures.local_tables import catalog_snapshot
from tests.test_local_check import ACME_GRANTS


def run(*args: str):
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "250"})


def as_writer(sql: str) -> str:
    """SQL wrapped the way the sync marks its own writes."""
    return f"BEGIN; SET LOCAL golioth_sync.writer = 'on'; {sql}; COMMIT;"


def changes(product, mapping=None):
    with product.engine.connect() as conn:
        return capture.pending_changes(conn, mapping or product.mapping)


def acme_id(product, name: str) -> str:
    return product.scalar("SELECT id::text FROM app.devices WHERE display_name = %(n)s", {"n": name})


def test_their_edits_of_synced_columns_are_captured_and_nothing_else(product_database):
    product = product_database("acme_fleet")
    result = run("local", "install-capture", "--mapping", str(product.mapping_path))
    assert result.exit_code == 0, result.output
    boiler, roof, probe = (acme_id(product, n) for n in ("Boiler room sensor", "Roof gateway", "Cold store probe"))
    audit_before = product.scalar("SELECT count(*) FROM app.audit_log")

    product.execute("UPDATE app.devices SET notes = 'ladder needed' WHERE display_name = 'Roof gateway'")  # unmapped
    product.execute(
        "UPDATE app.devices SET metadata = metadata || '{\"site\": \"Paris\"}' WHERE display_name = 'Roof gateway'"
    )
    product.execute("UPDATE app.devices SET connectivity = 'ONLINE' WHERE display_name = 'Roof gateway'")  # observed
    product.execute(as_writer(f"UPDATE app.devices SET display_name = 'Boiler (sync)' WHERE id = '{boiler}'"))
    assert changes(product) == []

    product.execute("UPDATE app.devices SET display_name = 'Roof GW' WHERE display_name = 'Roof gateway'")
    product.execute(
        f"UPDATE app.devices SET metadata = jsonb_set(metadata, '{{tags}}', '[\"boiler\"]') WHERE id = '{boiler}'"
    )
    product.execute(f"UPDATE app.devices SET deleted_at = now() WHERE id = '{probe}'")
    product.execute("UPDATE app.devices SET display_name = 'Globex meter one' WHERE display_name = 'Globex meter 1'")
    product.execute(
        "INSERT INTO app.devices (organization_id, display_name, device_type)"
        " SELECT id, 'Basement sensor', 'sensor' FROM app.organizations WHERE slug = 'acme'"
    )
    product.execute(f"DELETE FROM app.devices WHERE id = '{probe}'")
    basement = acme_id(product, "Basement sensor")

    acme = product.scalar("SELECT id::text FROM app.organizations WHERE slug = 'acme'")
    seen = changes(product)
    assert [(c.row_key, c.operation) for c in seen] == [
        (roof, "update"),
        (boiler, "update"),
        (probe, "update"),  # the soft delete
        (basement, "insert"),
        (probe, "delete"),
    ]
    assert {c.tenant for c in seen} == {acme}  # Globex's edit is captured for Globex, not here
    assert [c.id for c in seen] == sorted(c.id for c in seen)
    assert product.scalar("SELECT count(*) FROM golioth_sync.changes WHERE tenant <> %(t)s", {"t": acme}) == 1
    # Their own triggers still fire on every write, ours and theirs.
    assert product.scalar("SELECT count(*) FROM app.audit_log") == audit_before + 10
    assert product.scalar(f"SELECT updated_at > created_at FROM app.devices WHERE id = '{roof}'")


def test_a_row_moving_to_another_tenant_leaves_one_and_joins_the_other(product_database):
    product = product_database("acme_fleet")
    with product.engine.begin() as conn:
        capture.install_capture(conn, product.mapping)
    roof = acme_id(product, "Roof gateway")
    product.execute(
        f"UPDATE app.devices SET organization_id = (SELECT id FROM app.organizations WHERE slug = 'globex') WHERE id = '{roof}'"
    )
    assert [(c.row_key, c.operation) for c in changes(product)] == [(roof, "delete")]
    globex = product.mapping.model_copy(
        update={
            "tenant": product.mapping.tenant.model_copy(
                update={"lookup": product.mapping.tenant.lookup.model_copy(update={"where": {"slug": "globex"}})}
            )
        }
    )
    assert [(c.row_key, c.operation) for c in changes(product, globex)] == [(roof, "insert")]


def test_a_consumer_pages_and_deletes_in_batches(product_database):
    product = product_database("hydro_meters")
    with product.engine.begin() as conn:
        capture.install_capture(conn, product.mapping)
    product.execute("UPDATE meters SET label = label || ' (A)' WHERE utility = 'hydro-north'")  # 3 rows
    product.execute("UPDATE meters SET status = 'disabled' WHERE serial = 'HN-1001'")
    product.execute("UPDATE meters SET fw = '9.9.9', last_contact = now()")  # observed only: not captured
    with product.engine.begin() as conn:
        first = capture.pending_changes(conn, product.mapping, limit=2)
        second = capture.pending_changes(conn, product.mapping, after_id=first[-1].id, limit=2)
        assert len(first) == 2 and len(second) == 2
        assert {c.tenant for c in first + second} == {"hydro-north"}
        assert capture.delete_changes(conn, [c.id for c in first]) == 2
        assert capture.delete_changes(conn, []) == 0
    with product.engine.connect() as conn:
        assert capture.pending_changes(conn, product.mapping) == second
    hn1001 = product.scalar("SELECT id::text FROM meters WHERE serial = 'HN-1001'")
    assert (second[-1].row_key, second[-1].operation) == (hn1001, "update")


def test_install_is_idempotent_and_uninstall_restores_the_catalog(product_database):
    product = product_database("acme_fleet")
    before = product.catalog()
    assert run("local", "install-capture", "--mapping", str(product.mapping_path)).exit_code == 0
    installed = product.catalog()
    assert run("local", "install-capture", "--mapping", str(product.mapping_path)).exit_code == 0
    assert product.catalog() == installed

    # Their tables gained one trigger and nothing else; everything new is in schema golioth_sync.
    def theirs(catalog):
        return {k: [r for r in rows if "golioth_sync" not in " ".join(map(str, r))] for k, rows in catalog.items()}

    assert theirs(installed) == theirs(before)
    assert [r[:2] for r in installed["triggers"] if r not in before["triggers"]] == [
        ("app.devices", "golioth_sync_capture")
    ]
    assert ("golioth_sync",) in installed["schemas"]

    product.execute("UPDATE app.devices SET display_name = display_name || '!'")
    result = run("local", "uninstall-capture", "--mapping", str(product.mapping_path))
    assert result.exit_code == 0, result.output
    assert product.catalog() == before
    assert run("local", "uninstall-capture", "--mapping", str(product.mapping_path)).exit_code == 0


def test_dry_run_prints_the_sql_and_changes_nothing(product_database):
    product = product_database("acme_fleet")
    before = product.catalog()
    result = run("local", "install-capture", "--mapping", str(product.mapping_path), "--dry-run")
    assert result.exit_code == 0, result.output
    assert product.catalog() == before
    assert "\n".join(result.output.splitlines()[1:]) == capture.script(capture.install_statements(product.mapping))
    assert (
        'CREATE OR REPLACE TRIGGER golioth_sync_capture AFTER INSERT OR UPDATE OR DELETE ON "app"."devices"'
        in result.output
    )

    assert run("local", "install-capture", "--mapping", str(product.mapping_path)).exit_code == 0
    installed = product.catalog()
    result = run("local", "uninstall-capture", "--mapping", str(product.mapping_path), "--dry-run")
    assert result.exit_code == 0
    assert 'DROP TRIGGER IF EXISTS golioth_sync_capture ON "app"."devices"' in result.output
    assert product.catalog() == installed


def test_the_printed_sql_is_what_runs(product_database):
    """A DBA can paste the dry run into psql instead: same result as install-capture."""
    product = product_database("hydro_meters")
    before = product.catalog()
    with product.engine.connect() as conn:
        conn.connection.driver_connection.autocommit = True
        conn.connection.driver_connection.cursor().execute(capture.script(capture.install_statements(product.mapping)))
    with product.engine.connect() as conn:
        assert capture.capture_status(conn, product.mapping) is capture.CaptureStatus.current
    product.execute("UPDATE meters SET label = 'Main street 12b' WHERE serial = 'HN-1001'")
    assert len(changes(product)) == 1
    with product.engine.connect() as conn:
        conn.connection.driver_connection.autocommit = True
        conn.connection.driver_connection.cursor().execute(
            capture.script(capture.uninstall_statements(product.mapping))
        )
    assert product.catalog() == before


def test_check_sees_capture_and_a_stale_one(product_database):
    product = product_database("hydro_meters")
    with product.engine.connect() as conn:
        assert Misfit.no_change_tracking in {p.code for p in run_check(conn, product.mapping).warnings}
    with product.engine.begin() as conn:
        capture.install_capture(conn, product.mapping)
    with product.engine.connect() as conn:
        codes = {p.code for p in run_check(conn, product.mapping).warnings}
        assert Misfit.no_change_tracking not in codes and Misfit.capture_stale not in codes
    fewer = product.mapping.model_copy(
        update={"fields": {k: v for k, v in product.mapping.fields.items() if k != "tags"}}
    )
    with product.engine.connect() as conn:
        assert Misfit.capture_stale in {p.code for p in run_check(conn, fewer).warnings}
        assert capture.capture_installed(conn, product.mapping)
        assert capture.capture_status(conn, product.mapping) is capture.CaptureStatus.current
        assert capture.capture_status(conn, fewer) is capture.CaptureStatus.stale


def test_odd_json_keys_are_quoted_all_the_way(product_database):
    """A JSON key with %, a quote, a comma and a brace reaches the trigger intact (and the SQL is safe)."""
    product = product_database("acme_fleet")
    key = "la'bels, {100%}"
    raw = yaml.safe_load(product.mapping_path.read_text())
    raw["fields"]["tags"] = {"column": "metadata", "path": [key]}
    mapping = TableMapping.model_validate(raw)
    with product.engine.begin() as conn:
        capture.install_capture(conn, mapping)
    with product.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE app.devices SET metadata = metadata || jsonb_build_object('tags', '[1]'::jsonb)"
            " WHERE display_name = 'Roof gateway'"
        )
        conn.exec_driver_sql(
            "UPDATE app.devices SET metadata = metadata || jsonb_build_object(%(k)s, '[2]'::jsonb)"
            " WHERE display_name = 'Boiler room sensor'",
            {"k": key},
        )
    assert [c.row_key for c in changes(product, mapping)] == [acme_id(product, "Boiler room sensor")]
    with product.engine.connect() as conn:
        assert capture.capture_status(conn, mapping) is capture.CaptureStatus.current
    with product.engine.begin() as conn:
        capture.uninstall_capture(conn, mapping)


def test_install_refuses_a_mapping_that_does_not_fit(product_database):
    product = product_database("acme_fleet")
    product.execute("ALTER TABLE app.devices RENAME COLUMN is_active TO active")
    before = product.catalog()
    result = run("local", "install-capture", "--mapping", str(product.mapping_path))
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: column is_active: does not exist in app.devices; run `golioth-sync local check`"
    )
    assert product.catalog() == before


def test_two_captured_tables_share_the_schema_until_the_last_goes(product_database, tmp_path):
    product = product_database("acme_fleet")
    before = product.catalog()
    product.execute(
        "CREATE TABLE app.gateways (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text NOT NULL)"
    )
    with_gateways = product.catalog()
    gateways = product.mapping.model_copy(
        update={
            "table": product.mapping.table.model_copy(update={"name": "gateways"}),
            "tenant": None,
            "fields": {"name": product.mapping.fields["name"].model_copy(update={"column": "title"})},
            "observed": {},
            "insert_defaults": {},
            "soft_delete": None,
            "updated_at": None,
        }
    )
    with product.engine.begin() as conn:
        capture.install_capture(conn, product.mapping)
        capture.install_capture(conn, gateways)
    product.execute("INSERT INTO app.gateways (title) VALUES ('north')")
    with product.engine.begin() as conn:
        capture.uninstall_capture(conn, product.mapping)
    product.execute("INSERT INTO app.gateways (title) VALUES ('south')")
    assert [(c.row_key, c.tenant, c.operation) for c in changes(product, gateways)] == [
        ("1", None, "insert"),
        ("2", None, "insert"),
    ]
    with product.engine.begin() as conn:
        capture.uninstall_capture(conn, gateways)
    assert product.catalog() == with_gateways
    assert before != with_gateways


def test_the_documented_grants_install_capture_and_their_app_needs_none(product_database, monkeypatch):
    product = product_database("acme_fleet")
    role, app_role = (f"gs_{what}_{uuid.uuid4().hex[:8]}" for what in ("sync", "app"))
    product.execute(f"CREATE ROLE {role} LOGIN; CREATE ROLE {app_role} LOGIN")
    product.execute(ACME_GRANTS.format(role=role))
    product.execute(
        f"GRANT TRIGGER ON app.devices TO {role}; GRANT CREATE ON DATABASE {product.url.database} TO {role}"
    )
    product.execute(
        f"GRANT USAGE ON SCHEMA app TO {app_role}; GRANT SELECT, UPDATE ON app.devices, app.audit_log TO {app_role};"
        f" GRANT INSERT ON app.audit_log TO {app_role}; GRANT USAGE ON SEQUENCE app.audit_log_id_seq TO {app_role}"
    )
    try:
        monkeypatch.setenv("ACME_DATABASE_URL", product.url.set(username=role).render_as_string(hide_password=False))
        result = run("local", "install-capture", "--mapping", str(product.mapping_path))
        assert result.exit_code == 0, result.output
        app = sa.create_engine(product.url.set(username=app_role), poolclass=sa.NullPool)
        with app.begin() as conn:  # their app's role has no grant on golioth_sync: SECURITY DEFINER
            conn.exec_driver_sql("UPDATE app.devices SET display_name = 'Roof GW' WHERE display_name = 'Roof gateway'")
        app.dispose()
        assert [c.operation for c in changes(product)] == ["update"]
        # Dropping a trigger takes the table's owner: the sync's role is told so, in one line.
        result = run("local", "uninstall-capture", "--mapping", str(product.mapping_path))
        assert result.exit_code == 1
        assert result.output.strip().endswith(
            "must be owner of relation devices; run it with --dry-run and have the table's owner run that SQL"
        )
        monkeypatch.setenv("ACME_DATABASE_URL", product.url.render_as_string(hide_password=False))
        assert run("local", "uninstall-capture", "--mapping", str(product.mapping_path)).exit_code == 0
        assert product.scalar("SELECT to_regnamespace('golioth_sync') IS NULL")
    finally:
        with product.engine.begin() as conn:
            capture.uninstall_capture(conn, product.mapping)
        for name in (role, app_role):
            product.execute(f"DROP OWNED BY {name}; DROP ROLE {name}")


# -- the built-in table ----------------------------------------------------------------------------


@pytest.fixture
def builtin_database(request: pytest.FixtureRequest) -> Iterator[sa.engine.Engine]:
    """A fresh, migrated golioth-sync database: capture on `devices` must not touch the shared one."""
    url = fresh_database(_server_url(request))
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    migrate.upgrade(database.engine_for(url))
    database.engine_for(url).dispose()
    yield engine
    engine.dispose()
    _drop_database(url)


def test_capture_on_the_builtin_devices_table(builtin_database):
    """Migration 0007 installs capture on `devices` through capture.py, for every organization."""
    engine = builtin_database
    mapping = builtin_mapping("acme")
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO organizations (id, name) VALUES ('acme', 'Acme'), ('globex', 'Globex')")
        assert capture.capture_status(conn, mapping) is capture.CaptureStatus.current
        assert capture.capture_status(conn, builtin_mapping("globex")) is capture.CaptureStatus.current
        before = catalog_snapshot(conn)
    with engine.begin() as conn:
        device = conn.exec_driver_sql(
            "INSERT INTO devices (organization_id, name) VALUES ('acme', 'd1') RETURNING id::text"
        ).scalar()
        conn.exec_driver_sql("INSERT INTO devices (organization_id, name) VALUES ('globex', 'g1')")
    with engine.begin() as conn:  # observed fields, as the webhook receiver writes them
        conn.exec_driver_sql("UPDATE devices SET status = 'online', last_seen_online = now(), observed_at = now()")
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL golioth_sync.writer = 'on'")
        conn.exec_driver_sql("UPDATE devices SET tags = '{from-golioth}'")
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE devices SET tags = '{boiler}', owner = 'alice' WHERE name = 'd1'")
    with engine.connect() as conn:
        seen = capture.pending_changes(conn, mapping)
        assert [(c.row_key, c.tenant, c.operation) for c in seen] == [
            (device, "acme", "insert"),
            (device, "acme", "update"),
        ]
        # The built-in version trigger still moves on synced edits, ours included.
        assert conn.exec_driver_sql("SELECT version FROM devices WHERE id = %(d)s", {"d": device}).scalar() == 3
    with engine.connect() as conn:
        assert run_check(conn, mapping).ok
    with engine.begin() as conn:
        capture.uninstall_capture(conn, mapping)
        assert capture.capture_status(conn, mapping) is capture.CaptureStatus.absent
    with engine.begin() as conn:  # what `db upgrade` installed, the same code installs again
        capture.install_capture(conn, mapping)
    with engine.connect() as conn:
        assert catalog_snapshot(conn) == before
