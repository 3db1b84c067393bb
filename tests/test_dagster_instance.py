"""The Dagster deployment files, loaded for real: `dagster definitions validate` on the code location,
and a DagsterInstance built from this project's dagster.yaml on a real PostgreSQL database."""

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml

from golioth_assets.cli.runtime import DAGSTER_PG_ENV, DAGSTER_YAML, PROJECT_ROOT, WORKSPACE_YAML
from golioth_assets.defs.assets import sync_assets
from golioth_assets.defs.jobs import full_sync_job
from golioth_assets.defs.resources import DeviceStore, GoliothApi
from golioth_assets.store import database
from tests.fixtures.database import drop_database

DAGSTER = str(Path(sys.executable).with_name("dagster"))


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "GOLIOTH_SYNC_DAGSTER"))}
    env.pop("DATABASE_URL", None)
    return {**env, **extra}


@pytest.fixture
def dagster_pg_url(db_url):
    """A fresh, empty database for Dagster's storage on the test server, dropped afterwards."""
    url = db_url.set(database=f"gs_dagster_{uuid.uuid4().hex[:10]}")
    database.ensure_database_exists(url)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        drop_database(url)


@pytest.fixture
def dagster_home(tmp_path, dagster_pg_url, monkeypatch) -> Path:
    """DAGSTER_HOME with a copy of the project's dagster.yaml, as `golioth-sync` prepares it."""
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copyfile(DAGSTER_YAML, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv(DAGSTER_PG_ENV, dagster_pg_url)
    return home


@pytest.fixture
def project_instance(dagster_home):
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        yield instance


# ---------------------------------------------------------------------------------------------
# The code location
# ---------------------------------------------------------------------------------------------


def test_definitions_validate(tmp_path):
    """`dagster definitions validate` loads the code location and validates every definition."""
    # From an empty directory with no DAGSTER_HOME: Dagster uses a throwaway instance (run from the
    # project root it would read dagster.yaml there, which needs GOLIOTH_SYNC_DAGSTER_PG_URL).
    proc = subprocess.run(
        [DAGSTER, "definitions", "validate", "-m", "golioth_assets.definitions"],
        cwd=tmp_path,
        env=_clean_env(PYTHONPATH=str(PROJECT_ROOT)),
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Validation successful for code location golioth_assets.definitions" in output


@pytest.mark.slow
def test_workspace_validates_against_the_project_instance(dagster_home):
    """What the webserver and daemon load (workspace.yaml), with the real dagster.yaml instance."""
    proc = subprocess.run(
        [DAGSTER, "definitions", "validate", "-w", str(WORKSPACE_YAML)],
        cwd=PROJECT_ROOT,
        env=_clean_env(DAGSTER_HOME=str(dagster_home), **{DAGSTER_PG_ENV: os.environ[DAGSTER_PG_ENV]}),
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Validation successful for code location golioth_sync" in output


def test_workspace_names_the_definitions_module():
    workspace = yaml.safe_load(WORKSPACE_YAML.read_text())
    [entry] = workspace["load_from"]
    assert entry["python_module"]["module_name"] == "golioth_assets.definitions"


# ---------------------------------------------------------------------------------------------
# dagster.yaml
# ---------------------------------------------------------------------------------------------


def test_storage_is_postgres(project_instance):
    from dagster_postgres.event_log import PostgresEventLogStorage
    from dagster_postgres.run_storage import PostgresRunStorage
    from dagster_postgres.schedule_storage import PostgresScheduleStorage

    assert isinstance(project_instance.run_storage, PostgresRunStorage)
    assert isinstance(project_instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(project_instance.schedule_storage, PostgresScheduleStorage)
    # It really writes there: a partition added here is read back by a second instance.
    project_instance.add_dynamic_partitions("organizations", ["acme"])
    with dg.DagsterInstance.from_config(os.environ["DAGSTER_HOME"]) as other:
        assert other.get_dynamic_partitions("organizations") == ["acme"]


def test_one_sync_per_organization_at_a_time(project_instance):
    from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator
    from dagster._utils.tags import TagConcurrencyLimitsCounter

    assert isinstance(project_instance.run_coordinator, QueuedRunCoordinator)
    queue = project_instance.get_concurrency_config().run_queue_config
    assert {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in (
        queue.tag_concurrency_limits
    )
    assert queue.max_concurrent_runs >= 2

    # What the queue daemon does with it: a second run of acme waits, a run of globex does not.
    job = dg.Definitions(
        assets=sync_assets, jobs=[full_sync_job], resources={"store": DeviceStore(), "golioth": GoliothApi()}
    ).resolve_job_def(full_sync_job.name)

    def run(org: str, status=dg.DagsterRunStatus.NOT_STARTED):
        return project_instance.create_run_for_job(job_def=job, tags={"dagster/partition": org}, status=status)

    counter = TagConcurrencyLimitsCounter(queue.tag_concurrency_limits, [run("acme", dg.DagsterRunStatus.STARTED)])
    assert counter.is_blocked(run("acme"))
    assert not counter.is_blocked(run("globex"))


def test_golioth_api_pool_has_a_default_limit(project_instance):
    pools = project_instance.get_concurrency_config().pool_config
    assert pools.default_pool_limit == 4
    assert pools.pool_granularity.value == "op"
    # The sync is one op, so a run holds one golioth_api slot for its whole sync.
    assert [a.op.name for a in sync_assets if a.op.pool == "golioth_api"] == ["golioth_sync"]
    # The event log storage enforces it: the fifth concurrent step waits for a slot. (A step's
    # executor sets the pool to the default limit on first use, as here.)
    storage = project_instance.event_log_storage
    assert storage.supports_global_concurrency_limits
    storage.initialize_concurrency_limit_to_default("golioth_api")
    claims = [storage.claim_concurrency_slot("golioth_api", f"run-{i}", "golioth_sync") for i in range(5)]
    assert [c.is_claimed for c in claims] == [True, True, True, True, False]
    assert project_instance.event_log_storage.get_concurrency_info("golioth_api").slot_count == 4


def test_storage_reuses_its_connections(project_instance):
    # dagster-postgres alone opens a connection per statement (NullPool): PooledPostgresStorage
    # (golioth_assets/defs/storage.py) holds them, in this process and in every one the instance
    # ref reaches (run workers, the daemon).
    import sqlalchemy as sa

    opened = []

    def count(*_args) -> None:
        opened.append(1)

    sa.event.listen(sa.engine.Engine, "connect", count)
    try:
        for _ in range(20):
            project_instance.get_runs(limit=1)
            project_instance.get_dynamic_partitions("organizations")
            project_instance.get_ticks("origin", "selector", limit=1)
    finally:
        sa.event.remove(sa.engine.Engine, "connect", count)
    assert len(opened) <= 3, f"{len(opened)} new connections for 60 statements"
    assert project_instance.get_ref().storage_data.class_name == "PooledPostgresStorage"

    statements = []

    def count_statement(*_args) -> None:
        statements.append(1)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", count_statement)
    try:  # the catalog is asked once whether a table exists; dagster-postgres asks every time
        assert all(project_instance.event_log_storage.has_table("event_logs") for _ in range(10))
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", count_statement)
    assert len(statements) <= 1


def test_dagster_storage_does_not_wait_for_commit_flushes(project_instance):
    import sqlalchemy as sa

    with project_instance.event_log_storage.index_connection() as conn:
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar() == "off"
    with project_instance.run_storage.connect() as conn:
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar() == "off"


def test_the_daemon_looks_at_the_run_queue_every_second(project_instance):
    coordinator = project_instance.run_coordinator
    assert coordinator.dequeue_interval_seconds == 1
    # ...with the `concurrency:` block's limits still the ones the daemon applies.
    queue = project_instance.get_concurrency_config().run_queue_config
    assert queue.max_concurrent_runs == 8
    assert queue.tag_concurrency_limits


def test_the_daemon_evaluates_sensors_in_threads(project_instance):
    # The inbox sensor's idle tick watches for up to 4.5 s; in threads, no other sensor waits behind it.
    assert project_instance.get_settings("sensors") == {"use_threads": True, "num_workers": 4}


def test_run_monitoring_marks_dead_workers_failed(project_instance):
    assert project_instance.run_monitoring_enabled
    # A dead run worker is failed, not resumed: the failure sensor then releases its webhook events.
    assert project_instance.run_monitoring_max_resume_run_attempts == 0
    assert project_instance.run_monitoring_poll_interval_seconds <= 60


def test_dagster_yaml_reads_the_database_url_from_the_environment():
    config = yaml.safe_load(DAGSTER_YAML.read_text())
    assert config["storage"]["custom"]["config"]["postgres_url"] == {"env": DAGSTER_PG_ENV}
    assert config["telemetry"] == {"enabled": False}
