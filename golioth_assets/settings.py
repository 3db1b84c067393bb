"""Settings that come from the environment, in one place.

Everything here is read lazily (call `get_settings()`), so tests and the CLI can set environment
variables before the first use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_GOLIOTH_BASE_URL = "https://api.golioth.io"


@dataclass(frozen=True)
class Settings:
    home: Path
    """GOLIOTH_SYNC_HOME: data folder for the embedded PostgreSQL and Dagster's local files."""
    database_url: str | None
    """DATABASE_URL: any PostgreSQL 14+; unset means the embedded server in `home`."""
    dagster_database_url: str | None
    """DAGSTER_DATABASE_URL: Dagster's own storage; unset means a sibling database on the same server."""

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"


def get_settings() -> Settings:
    home = Path(os.environ.get("GOLIOTH_SYNC_HOME") or ".golioth-sync").expanduser().resolve()
    return Settings(
        home=home,
        database_url=os.environ.get("DATABASE_URL") or None,
        dagster_database_url=os.environ.get("DAGSTER_DATABASE_URL") or None,
    )


EXECUTORS = ("in_process", "celery", "k8s")
EXECUTOR_ENV = "GOLIOTH_SYNC_EXECUTOR"
CELERY_BROKER_ENV = "GOLIOTH_SYNC_CELERY_BROKER"  # amqp://… or redis://…, read by the run worker only


def executor_name() -> str:
    """GOLIOTH_SYNC_EXECUTOR: where a batched run's lanes execute: `in_process` (the run worker,
    the default), `celery` (dagster-celery workers) or `k8s` (one Kubernetes Job per lane). Read
    when the definitions load, so the code server, the run workers and the Celery workers must all
    be given the same value."""
    name = os.environ.get(EXECUTOR_ENV) or "in_process"
    if name not in EXECUTORS:
        raise ValueError(f"{EXECUTOR_ENV}={name!r}: expected one of {', '.join(EXECUTORS)}")
    return name


# The Celery app's settings, shared by the run workers' executor (defs/batch.py) and the workers
# (deploy/dagster_celery_config.py), so both sides agree: a task is acknowledged when it ends, so a
# lane whose worker died (SIGKILL, a lost host) goes back to the queue and another worker runs it;
# one task at a time per worker process.
CELERY_APP_CONFIG = {"task_acks_late": True, "task_reject_on_worker_lost": True, "worker_prefetch_multiplier": 1}


def celery_broker() -> str:
    """The broker's URL (it may hold a password: it stays in the environment, never in a file)."""
    url = os.environ.get(CELERY_BROKER_ENV)
    if not url:
        raise ValueError(f"{CELERY_BROKER_ENV} is not set: the Celery broker's URL (amqp://… or redis://…)")
    return url
