"""The deployment variants in deploy/, checked by Dagster's own config validation: the instance
schema of each dagster.*.yaml, the config of each class it names (run coordinator, run launcher),
the Celery variant instantiated for real on PostgreSQL, and the executor each variant selects."""

import importlib
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config

from golioth_assets import settings
from golioth_assets.cli.runtime import DAGSTER_PG_ENV, PROJECT_ROOT
from golioth_assets.store import database
from tests.fixtures.database import drop_database

DEPLOY = PROJECT_ROOT / "deploy"
VARIANTS = ["dagster.celery.yaml", "dagster.k8s.yaml"]


def _class_sections(config: dict) -> dict[str, dict]:
    return {key: value for key, value in config.items() if isinstance(value, dict) and "class" in value}


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_passes_dagsters_instance_and_class_config_validation(variant, monkeypatch):
    monkeypatch.setenv(DAGSTER_PG_ENV, "postgresql+psycopg2://dagster@127.0.0.1:5432/dagster")
    config, _ = dagster_instance_config(str(DEPLOY), variant)  # raises on any schema error
    assert config["storage"]["postgres"]["postgres_url"] == {"env": DAGSTER_PG_ENV}  # no URL in the file
    sections = _class_sections(config)
    for name, section in sections.items():
        cls = getattr(importlib.import_module(section["module"]), section["class"])
        checked = validate_config(cls.config_type(), section.get("config") or {})
        assert checked.success, f"{variant} {name}: {[e.message for e in checked.errors]}"
    limits = config["concurrency"]
    assert limits["runs"]["tag_concurrency_limits"][0]["key"] == "dagster/partition"
    assert limits["pools"]["granularity"] == "op"


def test_a_broken_variant_is_refused_by_the_same_validation(tmp_path):
    broken = (DEPLOY / "dagster.k8s.yaml").read_text().replace("job_namespace:", "job_namespaec:")
    (tmp_path / "dagster.yaml").write_text(broken)
    config, _ = dagster_instance_config(str(tmp_path))
    launcher = config["run_launcher"]
    cls = getattr(importlib.import_module(launcher["module"]), launcher["class"])
    assert not validate_config(cls.config_type(), launcher["config"]).success


def test_the_celery_variant_instantiates_on_postgres(tmp_path, db_url, monkeypatch):
    url = db_url.set(database=f"gs_dagster_{uuid.uuid4().hex[:10]}")
    database.ensure_database_exists(url)
    try:
        home = tmp_path / "dagster"
        home.mkdir()
        shutil.copyfile(DEPLOY / "dagster.celery.yaml", home / "dagster.yaml")
        monkeypatch.setenv(DAGSTER_PG_ENV, url.render_as_string(hide_password=False))
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
            assert instance.get_concurrency_config().pool_config.default_pool_limit == 8
    finally:
        drop_database(url)


@pytest.mark.parametrize("executor", ["celery", "k8s"])
def test_the_executor_each_variant_selects_loads_and_its_config_validates(executor, tmp_path):
    """GOLIOTH_SYNC_EXECUTOR picks the batched job's executor when the definitions load (a fresh
    interpreter, as a code server or worker is); its configured values pass its own schema."""
    probe = (
        "from golioth_assets.defs.batch import batch_sync_job as j\n"
        "from dagster._config import process_config\n"
        "e = j.executor_def\n"
        "print(e.name)\n"
        "print(process_config(e.config_schema.config_type, {}).success)\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(PROJECT_ROOT),
        settings.EXECUTOR_ENV: executor,
        settings.CELERY_BROKER_ENV: "amqp://guest:guest@127.0.0.1:5672//",
    }
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    name, valid = proc.stdout.split()
    assert name == {"celery": "celery", "k8s": "k8s"}[executor]
    assert valid == "True"


def test_an_unknown_executor_is_refused(monkeypatch):
    monkeypatch.setenv(settings.EXECUTOR_ENV, "spark")
    with pytest.raises(ValueError, match="in_process, celery, k8s"):
        settings.executor_name()


def test_the_celery_workers_read_the_broker_from_the_environment_only(monkeypatch):
    monkeypatch.setenv(settings.CELERY_BROKER_ENV, "amqp://guest:guest@127.0.0.1:5672//")
    monkeypatch.syspath_prepend(str(DEPLOY))
    worker_config = importlib.import_module("dagster_celery_config")
    importlib.reload(worker_config)
    assert worker_config.broker_url == "amqp://guest:guest@127.0.0.1:5672//"
    assert worker_config.task_acks_late is True  # a killed worker's lane goes back to the queue
    assert "amqp://" not in Path(worker_config.__file__).read_text()
