"""Launch a sync through Dagster from the CLI: the run lands in Dagster's history (and the UI) like
any other, while the terminal shows its steps as they finish."""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass

import dagster as dg
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from golioth_assets.core.vocabulary import RunTag
from golioth_assets.defs.assets import sync_assets
from golioth_assets.defs.config import sync_run_config
from golioth_assets.defs.jobs import run_tags
from golioth_assets.defs.partitions import organizations

# The sync is one op; its progress is the assets it has materialized so far.
STEP_NAMES = [key.to_user_string() for a in sync_assets for key in a.keys]
# Where a CLI run executes (execute_in_process: in this very process), so that a later command can
# tell that a run still "started" in Dagster died with its process.


@dataclass
class LaunchedRun:
    run_id: str
    success: bool
    seconds: float
    error: str | None = None


def run_sync_job(
    organization_id: str,
    *,
    direction: str | None = None,
    dry_run: bool = False,
    policy: str | None = None,
    device_ids: list[str] | None = None,
    trigger: str = "cli",
    console: Console | None = None,
) -> LaunchedRun:
    from golioth_assets.definitions import defs

    console = console or Console()
    instance = dg.DagsterInstance.get()
    for run_id in fail_dead_cli_runs(instance):
        console.print(
            f"[yellow]Dagster run {run_id} was still marked as started, but the process running it "
            "is gone: marked it failed and freed its golioth_api pool slots[/yellow]"
        )
    if organization_id not in instance.get_dynamic_partitions(organizations.name):
        instance.add_dynamic_partitions(organizations.name, [organization_id])
    job_name = "golioth_targeted_sync" if device_ids else "golioth_full_sync"
    job = defs.resolve_job_def(job_name)
    config = {"dry_run": dry_run, "device_ids": list(device_ids or [])}
    if direction:
        config["direction"] = direction
    if policy:
        config["policy"] = policy
    run_config = sync_run_config(**config)

    outcome: dict = {}

    def execute() -> None:
        try:
            result = job.execute_in_process(
                instance=instance,
                partition_key=organization_id,
                run_config={
                    **run_config,
                    # The terminal shows progress; Dagster's event log keeps the details.
                    "loggers": {"console": {"config": {"log_level": "WARNING"}}},
                },
                tags=run_tags(
                    organization_id, trigger, **{RunTag.host: socket.gethostname(), RunTag.pid: str(os.getpid())}
                ),
                raise_on_error=False,
            )
            outcome["result"] = result
        except Exception as exc:  # surfaced below with the run's own message
            outcome["error"] = exc

    started = time.perf_counter()
    worker = threading.Thread(target=execute, name="golioth-sync-run", daemon=True)
    worker.start()
    done: set[str] = set()
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(f"{job_name} [{organization_id}]", total=len(STEP_NAMES))
        while worker.is_alive():
            worker.join(0.25)
            run_id = _latest_run_id(instance, organization_id, trigger)
            if run_id:
                of_type = dg.DagsterEventType.ASSET_MATERIALIZATION
                for record in instance.get_records_for_run(run_id, of_type=of_type).records:
                    done.add(record.event_log_entry.dagster_event.asset_key.to_user_string())
                finished = [s for s in STEP_NAMES if s in done]
                progress.update(
                    task,
                    completed=len(finished),
                    description=f"{job_name} [{organization_id}] {finished[-1] if finished else 'starting'}",
                )
        progress.update(task, completed=len(done & set(STEP_NAMES)))
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    error = None
    if not result.success:
        failures = [e for e in result.all_events if e.is_step_failure]
        error = failures[0].step_failure_data.error.message.strip() if failures else "the run failed"
    return LaunchedRun(result.run_id, result.success, time.perf_counter() - started, error)


def _latest_run_id(instance: dg.DagsterInstance, organization_id: str, trigger: str) -> str | None:
    records = instance.get_run_records(
        dg.RunsFilter(tags={RunTag.org: organization_id, RunTag.trigger: trigger}), limit=1
    )
    return records[0].dagster_run.run_id if records else None


def fail_dead_cli_runs(instance: dg.DagsterInstance) -> list[str]:
    """Fail the CLI runs of this host whose process is gone (SIGKILL, OOM, a closed laptop lid).

    Nothing else notices them: without a run launcher there is no run worker for run monitoring to
    check, so such a run stays "started" for ever, and keeps the `golioth_api` pool slots its steps
    held. After as many kills as the pool has slots (4), every sync of every organization would wait
    for a slot for ever. Only runs whose host and pid tags say "this host, no such process" are
    touched, so a sync still running in another terminal or on another machine is left alone.
    """
    host = socket.gethostname()
    failed = []
    records = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED], tags={RunTag.host: host}))
    for record in records:
        run = record.dagster_run
        pid = run.tags.get(RunTag.pid, "")
        if not pid.isdigit() or _process_exists(int(pid)):
            continue
        instance.report_run_failed(run, f"the process running it (pid {pid} on {host}) is gone")
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        failed.append(run.run_id)
    return failed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
