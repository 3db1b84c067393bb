"""`golioth-sync local check` against the example product schemas (examples/), in real PostgreSQL:
both pass as shipped, and each way of breaking one is reported as exactly one line naming the column."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import URL

from golioth_assets.cli.main import cli
from golioth_assets.store import services
from golioth_assets.store.local_table.check import Misfit, check_mapping, run_check
from golioth_assets.store.local_table.mapping import load_mapping
from tests.fixtures.database import _drop_database, _server_url
from tests.fixtures.local_tables import EXAMPLE_NAMES, EXAMPLES, load_example


def run(*args: str):
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "250"})


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error: ")]


# (example, what their migration did, the one line `local check` prints for it)
BREAKS = [
    # acme_fleet: uuid key, tenant looked up by slug, enum status, tags inside jsonb metadata
    (
        "acme_fleet",
        "ALTER TABLE app.devices DROP COLUMN last_offline_at",
        "column last_offline_at: does not exist in app.devices (observed.last_seen_offline)",
    ),
    (
        "acme_fleet",
        "ALTER TABLE app.devices RENAME COLUMN last_online_at TO last_online",
        "column last_online_at: does not exist in app.devices (observed.last_seen_online); did you mean last_online?",
    ),
    (
        "acme_fleet",
        "ALTER TABLE app.devices DROP CONSTRAINT devices_device_type_known,"
        " ADD CONSTRAINT devices_device_type_known CHECK (device_type IN ('sensor', 'gateway'))",
        "column device_type: value 'unclassified' (insert_defaults) is not allowed by CHECK devices_device_type_known",
    ),
    (
        "acme_fleet",
        "ALTER TYPE app.connectivity RENAME VALUE 'OFFLINE' TO 'DISCONNECTED'",
        "column connectivity: value 'OFFLINE' (status=offline) is not a label of enum app.connectivity"
        " (ONLINE, DISCONNECTED, UNREACHABLE)",
    ),
    (
        "acme_fleet",
        "ALTER TABLE app.devices ADD COLUMN site_code text NOT NULL DEFAULT 'LYS';"
        " ALTER TABLE app.devices ALTER COLUMN site_code DROP DEFAULT",
        "column site_code: NOT NULL without a default, and the mapping gives it no value on insert"
        " (map it, or add it to insert_defaults)",
    ),
    (
        "acme_fleet",
        "UPDATE app.organizations SET slug = 'acme-corp' WHERE slug = 'acme'",
        "column organization_id: the tenant lookup finds no row of app.organizations where slug = 'acme'",
    ),
    (
        "acme_fleet",
        "ALTER TABLE app.devices DROP CONSTRAINT devices_pkey",
        "column id: the key is neither the primary key nor unique in app.devices",
    ),
    (
        "acme_fleet",
        "ALTER TABLE app.devices ALTER COLUMN config TYPE text",
        "column config: desired_state needs jsonb or a JSON path, but it is text",
    ),
    (
        "acme_fleet",
        "ALTER TABLE app.devices ALTER COLUMN metadata TYPE text",
        "column metadata: tags at a JSON path needs jsonb, but it is text",
    ),
    (
        "acme_fleet",
        "ALTER TABLE app.devices RENAME TO equipment",
        "table app.devices: does not exist (or this role cannot see it)",
    ),
    # hydro_meters: bigint identity key, constant tenant, CHECK-constrained status, link column
    (
        "hydro_meters",
        "ALTER TABLE meters DROP COLUMN fw",
        "column fw: does not exist in public.meters (observed.firmware_version)",
    ),
    (
        "hydro_meters",
        "ALTER TABLE meters RENAME COLUMN last_contact TO last_contact_at",
        "column last_contact: does not exist in public.meters (observed.last_seen_online); did you mean last_contact_at?",
    ),
    (
        "hydro_meters",
        "ALTER TABLE meters DROP CONSTRAINT meters_status_check,"
        " ADD CONSTRAINT meters_status_check CHECK (status IN ('active', 'retired')) NOT VALID",
        "column status: value 'disabled' (enabled=false) is not allowed by CHECK meters_status_check",
    ),
    (
        "hydro_meters",
        "ALTER TABLE meters ADD COLUMN region text NOT NULL DEFAULT 'north'; ALTER TABLE meters ALTER COLUMN region DROP DEFAULT",
        "column region: NOT NULL without a default, and the mapping gives it no value on insert"
        " (map it, or add it to insert_defaults)",
    ),
    (
        "hydro_meters",
        "UPDATE meters SET utility = 'hydro-nord' WHERE utility = 'hydro-north'",
        "column utility: the tenant utility = 'hydro-north' selects no row of public.meters"
        " (values present: 'hydro-nord', 'hydro-south')",
    ),
    (
        "hydro_meters",
        "ALTER TABLE meters DROP CONSTRAINT meters_pkey",
        "column id: the key is neither the primary key nor unique in public.meters",
    ),
    (
        "hydro_meters",
        "ALTER TABLE meters DROP CONSTRAINT meters_utility_golioth_id; ALTER TABLE meters ALTER COLUMN golioth_id TYPE bigint USING NULL",
        "column golioth_id: the link holds Golioth device ids (text), but it is bigint",
    ),
    (
        "hydro_meters",
        "ALTER TABLE meters ALTER COLUMN utility TYPE integer USING 0",
        "column utility: value 'hydro-north' (tenant) does not fit integer: invalid input syntax for type integer: \"hydro-north\"",
    ),
]


@pytest.fixture(scope="module")
def example_urls(request: pytest.FixtureRequest) -> Iterator[dict[str, URL]]:
    """Each example loaded once for this module; every break below is rolled back."""
    urls = {name: load_example(_server_url(request), name) for name in EXAMPLE_NAMES}
    yield urls
    for url in urls.values():
        _drop_database(url)


@pytest.mark.parametrize(("example", "ddl", "expected"), BREAKS, ids=[f"{b[0]}:{b[1][:48]}" for b in BREAKS])
def test_each_misfit_is_one_line_naming_the_column(example_urls, example, ddl, expected):
    mapping = load_mapping(EXAMPLES / example / "mapping.yaml")
    engine = sa.create_engine(example_urls[example], poolclass=sa.NullPool)
    with engine.connect() as conn:
        with conn.begin() as transaction:
            conn.exec_driver_sql(ddl)
            broken = check_mapping(conn, mapping)
            transaction.rollback()
        unbroken = run_check(conn, mapping)
    engine.dispose()
    assert error_lines("\n".join(broken.lines())) == [f"error: {expected}"]
    assert unbroken.ok, unbroken.lines()


@pytest.mark.parametrize("example", EXAMPLE_NAMES)
def test_the_examples_pass_as_shipped(product_database, example):
    product = product_database(example)
    before = product.catalog()
    result = run("local", "check", "--mapping", str(product.mapping_path))
    assert result.exit_code == 0, result.output
    assert error_lines(result.output) == []
    assert result.output.splitlines()[-1].startswith(f"{product.mapping.table} in postgresql")
    assert "fits the mapping: 0 error(s)" in result.output
    assert product.catalog() == before


def test_the_cli_prints_each_misfit_and_exits_1(product_database):
    product = product_database("acme_fleet")
    product.execute("ALTER TABLE app.devices DROP COLUMN last_offline_at")
    result = run("local", "check", "--mapping", str(product.mapping_path))
    assert result.exit_code == 1, result.output
    assert error_lines(result.output) == [
        "error: column last_offline_at: does not exist in app.devices (observed.last_seen_offline)"
    ]
    assert "does not fit the mapping: 1 error(s)" in result.output


def test_json_lists_errors_and_warnings_apart(product_database):
    product = product_database("hydro_meters")
    product.execute("ALTER TABLE meters DROP COLUMN fw")
    result = run("local", "check", "--mapping", str(product.mapping_path), "--json")
    assert result.exit_code == 1, result.output
    body = json.loads(result.output)
    assert (body["table"], body["ok"], body["errors"]) == ("public.meters", False, 1)
    errors = [p for p in body["problems"] if p["severity"] == "error"]
    assert errors == [
        {
            "severity": "error",
            "code": Misfit.column_missing.value,
            "column": "fw",
            "message": "column fw: does not exist in public.meters (observed.firmware_version)",
        }
    ]
    # Hydro keeps no soft-delete column and no updated_at: said, but not errors.
    warnings = {p["code"] for p in body["problems"] if p["severity"] == "warning"}
    assert warnings == {Misfit.no_soft_delete.value, Misfit.no_change_tracking.value}


def test_checking_writes_nothing(product_database):
    product = product_database("acme_fleet")
    audit_before = product.scalar("SELECT count(*) FROM app.audit_log")
    rows_before = product.scalar("SELECT md5(string_agg(to_jsonb(d)::text, ',' ORDER BY id)) FROM app.devices d")
    catalog_before = product.catalog()
    assert run("local", "check", "--mapping", str(product.mapping_path)).exit_code == 0
    assert product.scalar("SELECT count(*) FROM app.audit_log") == audit_before
    assert (
        product.scalar("SELECT md5(string_agg(to_jsonb(d)::text, ',' ORDER BY id)) FROM app.devices d") == rows_before
    )
    assert product.catalog() == catalog_before


def test_an_unreachable_database_exits_2_without_showing_the_password(monkeypatch):
    monkeypatch.setenv("ACME_DATABASE_URL", "postgresql://acme_app:hunter2-very-secret@127.0.0.1:1/acme")
    result = run("local", "check", "--mapping", str(EXAMPLES / "acme_fleet" / "mapping.yaml"))
    assert result.exit_code == 2, result.output
    assert "hunter2-very-secret" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "Error: cannot connect to app.devices in postgresql+psycopg2://acme_app:***@127.0.0.1:1/acme: "
    )


def test_an_unset_connection_variable_exits_2_naming_it(monkeypatch):
    monkeypatch.delenv("HYDRO_DATABASE_URL", raising=False)
    result = run("local", "check", "--mapping", str(EXAMPLES / "hydro_meters" / "mapping.yaml"))
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        "Error: HYDRO_DATABASE_URL is not set: it should hold the PostgreSQL URL of the database with public.meters"
    )


def test_an_invalid_url_is_refused_without_echoing_it(monkeypatch):
    monkeypatch.setenv("HYDRO_DATABASE_URL", "not a url but a hunter2-secret")
    result = run("local", "check", "--mapping", str(EXAMPLES / "hydro_meters" / "mapping.yaml"))
    assert result.exit_code == 2
    assert "hunter2" not in result.output
    assert result.output.strip() == "Error: HYDRO_DATABASE_URL does not hold a valid PostgreSQL URL"


def test_an_invalid_mapping_file_is_one_line(tmp_path):
    path = tmp_path / "mapping.yaml"
    path.write_text("table: app.devices\nkey: id\nfields: {name: display_name, colour: paint}\n")
    result = run("local", "check", "--mapping", str(path))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {path}: fields: Value error, fields: unknown Golioth field(s) colour"
        " (one of name, hardware_ids, tags, blueprint, cohort, enabled, desired_state)"
    ]


def test_mapping_and_org_are_exclusive():
    result = run("local", "check")
    assert result.exit_code == 2  # click's usage error
    assert "give exactly one of --mapping FILE or --org ORG" in result.output


def test_an_org_without_a_mapping_checks_the_builtin_table(db_env, engine, org):
    with engine.begin() as conn:
        services.create_service(
            conn,
            services.ServiceSettings(organization_id=org, name="Fleet", project_id="p", api_key_env="GOLIOTH_TEST_KEY"),
        )
        conn.execute(sa.text("INSERT INTO devices (organization_id, name) VALUES (:org, 'boiler')"), {"org": org})
    result = run("local", "check", "--org", org)
    assert result.exit_code == 0, result.output
    # The built-in table is one more mapping, and it fits without a single warning.
    assert result.output.strip().splitlines() == [
        f"public.devices in {db_env.render_as_string(hide_password=True)} fits the mapping: 0 error(s), 0 warning(s)"
    ]


def test_an_org_without_a_service_is_one_line(db_env):
    result = run("local", "check", "--org", "nobody-here")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: organization 'nobody-here' has no Golioth service; add one with `golioth-sync services add`"
    )


# -- least privilege: the GRANTs docs/local-tables.md gives are enough, and a missing one is named ---

ACME_GRANTS = """
GRANT USAGE ON SCHEMA app TO {role};
GRANT SELECT (id, slug) ON app.organizations TO {role};
GRANT SELECT (id, organization_id, display_name, serial_numbers, metadata, is_active, config, connectivity,
              last_online_at, last_offline_at, firmware, device_type, deleted_at, updated_at) ON app.devices TO {role};
GRANT INSERT (organization_id, display_name, serial_numbers, metadata, is_active, config, connectivity,
              last_online_at, last_offline_at, firmware, device_type, deleted_at) ON app.devices TO {role};
GRANT UPDATE (display_name, serial_numbers, metadata, is_active, config, connectivity,
              last_online_at, last_offline_at, firmware, deleted_at) ON app.devices TO {role};
-- Their own triggers run as golioth-sync's role: the audit trigger writes app.audit_log.
GRANT INSERT ON app.audit_log TO {role};
GRANT USAGE ON SEQUENCE app.audit_log_id_seq TO {role};
"""


@pytest.fixture
def sync_role(product_database) -> Iterator[tuple]:
    """acme_fleet, and a login role holding only the documented GRANTs on it."""
    product = product_database("acme_fleet")
    role = f"gs_sync_{uuid.uuid4().hex[:8]}"
    product.execute(f"CREATE ROLE {role} LOGIN")
    product.execute(ACME_GRANTS.format(role=role))
    try:
        yield product, role
    finally:
        product.execute(f"DROP OWNED BY {role}")
        product.execute(f"DROP ROLE {role}")


def test_the_documented_grants_are_enough_and_a_missing_one_is_named(sync_role, monkeypatch):
    product, role = sync_role
    monkeypatch.setenv("ACME_DATABASE_URL", product.url.set(username=role).render_as_string(hide_password=False))
    result = run("local", "check", "--mapping", str(product.mapping_path))
    assert result.exit_code == 0, result.output
    # Writes shaped like the sync's (mapped columns only) pass, and their audit trigger fires.
    audit_before = product.scalar("SELECT count(*) FROM app.audit_log")
    as_role = sa.create_engine(product.url.set(username=role), poolclass=sa.NullPool)
    with as_role.begin() as conn:
        conn.exec_driver_sql("SET LOCAL golioth_sync.writer = 'on'")
        conn.exec_driver_sql(
            "INSERT INTO app.devices (organization_id, display_name, serial_numbers, device_type)"
            " SELECT id, 'From Golioth', '{G-1}', 'unclassified' FROM app.organizations WHERE slug = 'acme' RETURNING id"
        )
        conn.exec_driver_sql(
            "UPDATE app.devices SET display_name = 'Renamed', deleted_at = now() WHERE display_name = 'Roof gateway'"
            " AND updated_at = updated_at RETURNING id"
        )
    as_role.dispose()
    assert product.scalar("SELECT count(*) FROM app.audit_log") == audit_before + 2
    product.execute(f"REVOKE UPDATE (display_name) ON app.devices FROM {role}")
    result = run("local", "check", "--mapping", str(product.mapping_path))
    assert result.exit_code == 1
    assert error_lines(result.output) == [f"error: column display_name: this role ({role}) lacks UPDATE on it"]


def test_a_role_that_cannot_reach_the_schema_gets_one_line(sync_role, monkeypatch):
    product, role = sync_role
    product.execute(f"REVOKE USAGE ON SCHEMA app FROM {role}")
    monkeypatch.setenv("ACME_DATABASE_URL", product.url.set(username=role).render_as_string(hide_password=False))
    result = run("local", "check", "--mapping", str(product.mapping_path))
    assert result.exit_code == 1
    assert error_lines(result.output) == [
        "error: table app.devices: this role cannot read it: permission denied for schema app"
    ]


# -- the rules the examples do not exercise, on a small table made inside a rolled-back transaction --

THINGS = """
CREATE TABLE app.things (
    id          bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name        text NOT NULL,
    lifecycle   text NOT NULL DEFAULT 'active'
                CONSTRAINT devices_lifecycle_check CHECK (lifecycle IN ('active', 'suspended', 'retired')),
    fw          text,
    shouty      text GENERATED ALWAYS AS (upper(name)) STORED,
    deleted_at  timestamptz
)"""
THINGS_MAPPING = {
    "table": "app.things",
    "key": "id",
    "fields": {
        "name": "name",
        "enabled": {"column": "lifecycle", "values": {True: "active", False: ["suspended", "retired"]}},
    },
    "observed": {"firmware_version": {"column": "fw", "package": "main"}},
    "soft_delete": "deleted_at",
}
RULES = [
    (
        "",
        {"fields": {"name": "name", "enabled": {"column": "lifecycle", "values": {True: "active", False: "paused"}}}},
        "column lifecycle: value 'paused' (enabled=false) is not allowed by CHECK devices_lifecycle_check",
    ),
    (
        "",
        {"fields": {"name": "name", "enabled": "lifecycle"}},
        "column lifecycle: enabled on a text or enum column needs a value map (values: {true: …, false: …})",
    ),
    (
        "",
        {"fields": {"name": "name", "enabled": {"column": "lifecycle", "values": {True: "active"}}}},
        "column lifecycle: the value map for enabled has no entry for false",
    ),
    (
        "",
        {
            "fields": {
                "name": "name",
                "enabled": {"column": "lifecycle", "values": {True: "active", False: "retired", "maybe": "suspended"}},
            }
        },
        "column lifecycle: the value map for enabled has Golioth value(s) maybe; enabled is one of true, false",
    ),
    (
        "",
        {"observed": {"firmware_version": {"column": "shouty", "package": "main"}}},
        "column shouty: is generated by the database and cannot hold firmware_version",
    ),
    (
        "",
        {"observed": {"firmware_version": "fw"}},
        "column fw: firmware_version needs `package:` (the firmware package, e.g. main)",
    ),
    ("", {"observed": {"last_seen_online": "fw"}}, "column fw: last_seen_online needs a timestamp, but it is text"),
    (
        "ALTER TABLE app.things ALTER COLUMN deleted_at SET NOT NULL",
        {},
        "column deleted_at: soft_delete must be nullable (NULL marks a live row)",
    ),
    (
        "ALTER TABLE app.things ALTER COLUMN id DROP IDENTITY",
        {},
        "column id: the key has no default or identity, so new devices cannot be inserted (add DEFAULT gen_random_uuid() or an identity)",
    ),
    ("", {"updated_at": "fw", "observed": {}}, "column fw: updated_at needs a timestamp, but it is text"),
]


@pytest.mark.parametrize(("ddl", "changes", "expected"), RULES, ids=[r[2][:60] for r in RULES])
def test_each_rule_is_one_line(example_urls, ddl, changes, expected):
    from golioth_assets.store.local_table.mapping import TableMapping

    mapping = TableMapping.model_validate({**THINGS_MAPPING, **changes})
    engine = sa.create_engine(example_urls["acme_fleet"], poolclass=sa.NullPool)
    with engine.connect() as conn, conn.begin() as transaction:
        conn.exec_driver_sql(THINGS)
        assert check_mapping(conn, TableMapping.model_validate(THINGS_MAPPING)).ok
        if ddl:
            conn.exec_driver_sql(ddl)
        report = check_mapping(conn, mapping)
        transaction.rollback()
    engine.dispose()
    assert error_lines("\n".join(report.lines())) == [f"error: {expected}"]
