"""Issue 10, "Done when", as a user does it: the real `golioth-sync` executable in a subprocess.

A database made by the product's own migration (examples/acme_fleet/schema.sql + seed.sql, run
with psql), a table golioth-sync has never seen. The user writes one file, the mapping, and runs:
`services add … --local-table`, `local check --org`, `sync --org` against the simulator; then
edits on both sides and syncs again. Both edits arrive, and every column outside the mapping, and
every row of the other tenant, is byte for byte what it was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from golioth_assets.store import database
from golioth_assets.store.local_table.mapping import load_mapping
from tests.fixtures.database import _server_url, drop_database
from tests.fixtures.local_tables import EXAMPLES, outside_the_mapping

pytestmark = pytest.mark.slow

GOLIOTH_SYNC = str(Path(sys.executable).with_name("golioth-sync"))
ACME_TENANT = "t.organization_id = (SELECT id FROM app.organizations WHERE slug = 'acme')"


@pytest.fixture
def acme_database(request):
    """Acme's database, made the way Acme makes it: createdb, then psql running its migration."""
    server = _server_url(request)
    url = server.set(database=f"gs_acme_{uuid.uuid4().hex[:8]}")
    # The embedded server listens on a unix socket, named by the URL's `host` query parameter.
    host = server.host or server.query.get("host") or "127.0.0.1"
    libpq = ["-h", host, "-p", str(server.port or 5432), "-U", server.username or "postgres"]
    subprocess.run([shutil.which("createdb") or "createdb", *libpq, url.database], check=True)
    example = EXAMPLES / "acme_fleet"
    subprocess.run(
        [shutil.which("psql") or "psql", *libpq, "-d", url.database, "-v", "ON_ERROR_STOP=1", "-q"]
        + ["-f", str(example / "schema.sql"), "-f", str(example / "seed.sql")],
        check=True,
        capture_output=True,
    )
    try:
        yield url
    finally:
        database.engine_for(url).dispose()
        drop_database(url)


@pytest.fixture
def cli_env(db_url, tmp_path, acme_database, sim_project_factory):
    """golioth-sync's own databases (app + Dagster), a private GOLIOTH_SYNC_HOME, Acme's database in
    the variable the mapping names, and a simulated Golioth project's key."""
    dagster_url = db_url.set(database=f"gs_local_dagster_{uuid.uuid4().hex[:8]}")
    database.ensure_database_exists(dagster_url)
    project = sim_project_factory(devices=5, seed=21)
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "GOLIOTH_SYNC_DAGSTER_PG_URL")} | {
        "GOLIOTH_SYNC_HOME": str(tmp_path / "home"),
        "DATABASE_URL": db_url.render_as_string(hide_password=False),
        "DAGSTER_DATABASE_URL": dagster_url.render_as_string(hide_password=False),
        "ACME_DATABASE_URL": acme_database.render_as_string(hide_password=False),
        "GOLIOTH_ACME_KEY": project.api_key,
        "COLUMNS": "200",
    }
    try:
        yield env, project
    finally:
        drop_database(dagster_url)


def golioth_sync(env: dict, cwd: Path, *args: str) -> str:
    result = subprocess.run([GOLIOTH_SYNC, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"golioth-sync {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_a_table_golioth_sync_never_saw_syncs_both_ways_from_one_mapping_file(cli_env, acme_database, engine, tmp_path):
    env, project = cli_env
    org = f"acme-{uuid.uuid4().hex[:6]}"  # golioth-sync's organization; the mapping's tenant is Acme's slug
    mapping_file = tmp_path / "mapping.yaml"
    mapping_file.write_text((EXAMPLES / "acme_fleet" / "mapping.yaml").read_text())  # the one file the user writes
    mapping = load_mapping(mapping_file)
    acme = sa.create_engine(acme_database, poolclass=sa.NullPool)
    before = outside_the_mapping(acme, mapping, ACME_TENANT, {})

    golioth_sync(
        env, tmp_path, "services", "add", "--org", org, "--name", "Acme fleet", "--project-id", project.project_id,
        "--base-url", project.url, "--golioth-org", project.organization_id, "--api-key-env", "GOLIOTH_ACME_KEY",
        "--local-table", str(mapping_file),
    )  # fmt: skip
    checked = golioth_sync(env, tmp_path, "local", "check", "--org", org)
    assert "app.devices in postgresql+psycopg2://" in checked and "fits the mapping: 0 error(s)" in checked
    golioth_sync(env, tmp_path, "sync", "--org", org)

    remote = {d["name"]: d for d in _remote(project)}
    with acme.connect() as conn:
        names = dict(conn.execute(sa.text(_ACME_ROWS)).all())
    # Acme's three devices went to Golioth, Golioth's five came into Acme's table.
    assert {"Boiler room sensor", "Roof gateway", "Cold store probe"} <= set(remote)
    assert len(names) == len(remote) == 3 + 5 and set(names.values()) == set(remote)

    # Their app renames a device; someone renames another in the Golioth console.
    with acme.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE app.devices SET display_name = 'Boiler room (north)' WHERE display_name = 'Boiler room sensor'"
            )
        )
    console = remote["Roof gateway"]["id"]
    project.control.console_update(project.project_id, console, name="Roof gateway (renamed in Golioth)")
    # A dry run names their columns: Golioth's `name` is Acme's `display_name`.
    planned = json.loads(golioth_sync(env, tmp_path, "sync", "--org", org, "--dry-run", "--json"))["plan"]
    renames = {(r["field"], r["local_column"], r["side"]) for r in planned if r["action"] == "update"}
    assert renames == {("name", "display_name", "remote"), ("name", "display_name", "local")}
    golioth_sync(env, tmp_path, "sync", "--org", org)

    remote_names = {d["name"] for d in _remote(project)}
    with acme.connect() as conn:
        names = set(dict(conn.execute(sa.text(_ACME_ROWS)).all()).values())
    assert "Boiler room (north)" in remote_names and "Boiler room sensor" not in remote_names
    assert "Roof gateway (renamed in Golioth)" in names and "Roof gateway" not in names
    assert names == remote_names
    after = outside_the_mapping(acme, mapping, ACME_TENANT, {})
    assert {k: after[k] for k in before} == before  # seeded rows: every unmapped column, Globex's rows
    new_rows = set(after) - set(before)
    assert len(new_rows) == 5 and all('"notes": null' in after[k] for k in new_rows)
    acme.dispose()


_ACME_ROWS = (
    "SELECT d.id::text, d.display_name FROM app.devices d JOIN app.organizations o ON o.id = d.organization_id "
    "WHERE o.slug = 'acme' AND d.deleted_at IS NULL"
)


def _remote(project) -> list[dict]:
    with project.client() as client:
        body = client.get(f"/v1/projects/{project.project_id}/devices", params={"perPage": 100}).raise_for_status()
    return body.json()["list"]
