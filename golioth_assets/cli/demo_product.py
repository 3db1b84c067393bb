"""The demo's second organization, `acme`, whose devices live in a product's own table.

`golioth-sync dev` syncs the built-in `devices` table for organization `demo`. Beside it, `acme`
is what a product team's setup looks like (docs/local-tables.md): Acme's device table made by its
own migration (examples/acme_fleet/schema.sql, with its seed rows), in a database of its own on the
same server as golioth-sync's (the embedded one by default), described by the shipped
examples/acme_fleet/mapping.yaml, and synced with a second simulated Golioth project. The console
and the Dagster UI show both organizations side by side; the demo installs change capture on
Acme's table and prints a psql line to edit one of Acme's devices there: the inbox sensor turns
the captured edit into a targeted sync (trigger `local_change`) that carries it to Golioth within
seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import URL, Engine

ACME_ORG = "acme"
ACME_PROJECT = "acme-project"
ACME_API_KEY_ENV = "GOLIOTH_DEMO_ACME_API_KEY"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "acme_fleet"


def mapping():
    from golioth_assets.store.local_table.mapping import load_mapping

    return load_mapping(EXAMPLE / "mapping.yaml")


def product_url(app_url: URL) -> URL:
    """Acme's database: beside golioth-sync's own, on the same server."""
    return app_url.set(database=f"{app_url.database}_acme")


def api_key(demo_key: str) -> str:
    """The Acme project's simulator key, derived from the demo's (one key to hand to other shells)."""
    return f"{demo_key}-acme"


def project_spec(devices: int, demo_key: str):
    """Acme's simulated Golioth project: a twentieth of the demo's size, at least 20 devices."""
    from golioth_assets.simulator import ProjectSpec

    os.environ[ACME_API_KEY_ENV] = api_key(demo_key)
    return ProjectSpec(ACME_PROJECT, os.environ[ACME_API_KEY_ENV], devices=max(20, min(500, devices // 20)), seed=7)


def prepare_database(app_url: URL) -> URL:
    """Acme's database with its table, made once by Acme's own migration and seed (never changed
    by golioth-sync afterwards), and the variable its mapping names pointing at it."""
    from golioth_assets.store import database

    url = product_url(app_url)
    database.ensure_database_exists(url)
    scripts = [(EXAMPLE / name).read_text() for name in ("schema.sql", "seed.sql")]
    database.run_scripts_unless_table(url, "app.devices", scripts)
    os.environ[mapping().connection_env] = url.render_as_string(hide_password=False)
    return url


def install_capture(url: URL) -> None:
    """Change capture on Acme's table, as `golioth-sync local install-capture` installs it: an edit
    made there (the psql line) reaches Golioth within seconds, through the inbox sensor."""
    from golioth_assets.store import database
    from golioth_assets.store.local_table import capture

    with database.engine_for(url).begin() as conn:
        capture.install_capture(conn, mapping())


def register_service(engine: Engine, simulator_url: str, interval: int, webhook_envs: tuple[str, str]):
    """Acme's service: its project in the simulator, its table by the example's mapping."""
    from golioth_assets.core.vocabulary import Direction, Policy
    from golioth_assets.store import services

    secret_env, signing_env = webhook_envs
    with engine.begin() as conn:
        return services.upsert_service(
            conn,
            services.ServiceSettings(
                organization_id=ACME_ORG,
                name="Acme fleet (their own table, simulated Golioth)",
                project_id=ACME_PROJECT,
                base_url=simulator_url,
                golioth_organization_id="sim-org",
                api_key_env=ACME_API_KEY_ENV,
                interval_seconds=interval,
                direction=Direction.bidirectional,
                conflict_policy=Policy.manual,
                webhook_enabled=True,
                webhook_secret_env=secret_env,
                webhook_signing_key_env=signing_env,
                local_table=mapping(),
            ),
        )


def libpq_url(url: URL) -> str:
    """The URL as psql takes it, without the password (psql asks). A server on a unix socket (the
    embedded one) gets its socket folder percent-encoded as the host, as libpq allows: no `?` or
    `=` that the shell would have to see quoted, so the line copies and pastes as it is."""
    socket = url.query.get("host")
    if url.host or not isinstance(socket, str):
        return url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    from urllib.parse import quote

    user = f"{quote(url.username, safe='')}@" if url.username else ""
    port = f":{url.port}" if url.port else ""
    return f"postgresql://{user}{quote(socket, safe='')}{port}/{url.database}"


def psql_line(url: URL) -> str:
    """A command that edits one of Acme's devices in their own table, as their app would."""
    import shlex

    libpq = libpq_url(url)
    sql = (
        "UPDATE app.devices SET display_name = 'Boiler room (edited in psql)' WHERE display_name = 'Boiler room sensor'"
    )
    return f'psql {shlex.quote(libpq)} -c "{sql}"'


def exports(app_url: URL, demo_key: str | None) -> dict[str, str]:
    """What `golioth-sync env` adds for Acme once a demo ran: its key and its database's URL."""
    if not demo_key:
        return {}
    return {
        ACME_API_KEY_ENV: api_key(demo_key),
        mapping().connection_env: product_url(app_url).render_as_string(hide_password=False),
    }
