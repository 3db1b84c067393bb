"""Run tags: every tag outside Dagster's own namespace is one more line on every row of the Dagster
UI's run list, so sync runs carry only what operators filter by and what code reads
(core/vocabulary.py: RunTag; docs/dagster.md, "Runs and their tags")."""

import io
import os
import socket
import subprocess
import uuid

import dagster as dg
import pytest
from rich.console import Console

from golioth_assets.cli.dagster_run import fail_dead_cli_runs, process_tag, run_sync_job
from golioth_assets.cli.runtime import DAGSTER_PG_ENV
from golioth_assets.core.vocabulary import RunTag, SyncKind, Trigger
from golioth_assets.defs.assets import sync_assets
from golioth_assets.defs.batch import batch_sync_job, batch_tags
from golioth_assets.defs.jobs import full_sync_job, run_tags, targeted_sync_job
from golioth_assets.defs.resources import DeviceStore, GoliothApi
from tests.fixtures.database import drop_database


def shown_in_run_list(tags: dict[str, str]) -> set[str]:
    """The tags the run list shows on a row by default: all but Dagster's own, plus the partition."""
    return {key for key in tags if not key.startswith("dagster/") or key == RunTag.partition}


def test_scheduled_and_webhook_runs_carry_three_and_four_tags():
    scheduled = {**full_sync_job.tags, **run_tags("acme", Trigger.schedule), RunTag.partition: "acme"}
    assert shown_in_run_list(scheduled) == {RunTag.org, RunTag.kind, RunTag.trigger}
    assert scheduled[RunTag.org] == "acme" and scheduled[RunTag.kind] == SyncKind.full

    claim = "webhook:acme:1-3:abc:a0"
    webhook = {**targeted_sync_job.tags, **run_tags("acme", Trigger.webhook, **{RunTag.claim: claim})}
    assert shown_in_run_list(webhook) == {RunTag.org, RunTag.kind, RunTag.trigger, RunTag.claim}

    batched = {**batch_sync_job.tags, **batch_tags(Trigger.schedule)}  # its organizations are in its config
    assert shown_in_run_list(batched) == {RunTag.kind, RunTag.trigger}


@pytest.fixture
def dagster_home(db_url, tmp_path, monkeypatch):
    """A DAGSTER_HOME prepared as `golioth-sync` prepares it (PostgreSQL storage)."""
    from golioth_assets.cli.runtime import prepare

    dagster_url = db_url.set(database=f"gs_tags_{uuid.uuid4().hex[:10]}")
    monkeypatch.setenv("GOLIOTH_SYNC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DATABASE_URL", db_url.render_as_string(hide_password=False))
    monkeypatch.setenv("DAGSTER_DATABASE_URL", dagster_url.render_as_string(hide_password=False))
    monkeypatch.setenv("DAGSTER_HOME", "unset")
    monkeypatch.setenv(DAGSTER_PG_ENV, "unset")
    prepare()
    try:
        yield
    finally:
        drop_database(dagster_url)


def test_a_cli_dry_run_carries_organization_kind_trigger_process_and_dry_run(make_harness, dagster_home):
    h = make_harness(devices=5)
    launched = run_sync_job(h.org, dry_run=True, trigger=Trigger.cli, out=Console(file=io.StringIO()))
    assert launched.success, launched.error
    with dg.DagsterInstance.get() as instance:
        tags = instance.get_run_by_id(launched.run_id).tags
    assert shown_in_run_list(tags) == {RunTag.org, RunTag.kind, RunTag.trigger, RunTag.process, RunTag.dry_run}
    assert tags[RunTag.org] == h.org and tags[RunTag.trigger] == "cli" and tags[RunTag.dry_run] == "true"
    assert tags[RunTag.process] == process_tag(socket.gethostname(), os.getpid())


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_dead_cli_runs_are_found_by_their_process_tag():
    """Only a started run whose process tag names this host and a process that is gone is failed."""
    host = socket.gethostname()
    gone = _dead_pid()
    with dg.instance_for_test() as instance:
        job = dg.Definitions(
            assets=sync_assets, jobs=[full_sync_job], resources={"store": DeviceStore(), "golioth": GoliothApi()}
        ).resolve_job_def(full_sync_job.name)

        def started(process: str | None) -> str:
            tags = {RunTag.process: process} if process else {}
            return instance.create_run_for_job(job_def=job, tags=tags, status=dg.DagsterRunStatus.STARTED).run_id

        dead = started(process_tag(host, gone))
        alive = started(process_tag(host, os.getpid()))
        elsewhere = started(process_tag(f"not-{host}", gone))
        launched_by_the_daemon = started(None)

        assert fail_dead_cli_runs(instance) == [dead]
        status = {run_id: instance.get_run_by_id(run_id).status for run_id in (dead, alive, elsewhere)}
        assert status[dead] == dg.DagsterRunStatus.FAILURE
        assert status[alive] == status[elsewhere] == dg.DagsterRunStatus.STARTED
        assert instance.get_run_by_id(launched_by_the_daemon).status == dg.DagsterRunStatus.STARTED
