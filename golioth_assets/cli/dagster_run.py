"""Launch a sync through Dagster from the CLI: the run lands in Dagster's history (and the UI) like
any other, while the terminal shows its steps as they finish."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import dagster as dg
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from golioth_assets.core.vocabulary import RunTag
from golioth_assets.defs.assets import SPECS
from golioth_assets.defs.config import sync_run_config
from golioth_assets.defs.jobs import run_tags
from golioth_assets.defs.partitions import ORGANIZATIONS


@dataclass
class LaunchedRun:
    run_id: str
    success: bool
    seconds: float
    error: str | None = None  # the root cause, in a line or two
    detail: str | None = None  # the whole failure with Dagster's traceback (`golioth-sync -v`)
    dead_runs: list[str] = field(default_factory=list)  # earlier CLI runs found dead and marked failed


def run_sync_job(
    organization_id: str,
    *,
    direction: str | None = None,
    dry_run: bool = False,
    policy: str | None = None,
    device_ids: list[str] | None = None,
    trigger: str = "cli",
    out: Console | None = None,
    verbose: bool = False,
) -> LaunchedRun:
    """Run the sync job in this process, showing its steps on `out` (the terminal) as they finish.

    Dagster's own event log is printed only with `verbose` (a failure's traceback is there); the
    caller prints the root cause (`LaunchedRun.error`)."""
    from golioth_assets.definitions import defs

    out = out or Console()
    instance = dg.DagsterInstance.get()
    dead_runs = fail_dead_cli_runs(instance)
    if organization_id not in instance.get_dynamic_partitions(ORGANIZATIONS):
        instance.add_dynamic_partitions(ORGANIZATIONS, [organization_id])
    job_name = "golioth_targeted_sync" if device_ids else "golioth_full_sync"
    job = defs.resolve_job_def(job_name)
    run_id = str(uuid.uuid4())  # known before the run starts, so progress follows this run only
    run_config = {
        **sync_run_config(**_launch_config(direction, dry_run, policy, device_ids)),
        "loggers": {"console": {"config": {"log_level": "WARNING" if verbose else "CRITICAL"}}},
    }
    extra = {RunTag.process: process_tag(socket.gethostname(), os.getpid())}
    if dry_run:
        extra[RunTag.dry_run] = "true"
    outcome: dict = {}

    def execute() -> None:
        try:
            outcome["result"] = job.execute_in_process(
                instance=instance,
                partition_key=organization_id,
                run_config=run_config,
                run_id=run_id,
                tags=run_tags(organization_id, trigger, **extra),
                raise_on_error=False,
            )
        except Exception as exc:  # surfaced below with the run's own message
            outcome["error"] = exc

    started = time.perf_counter()
    worker = threading.Thread(target=execute, name="golioth-sync-run", daemon=True)
    worker.start()
    # The sync is one op: its progress is the assets it has materialized so far, in graph order.
    steps = [spec.key.to_user_string() for spec in SPECS]
    _show_progress(instance, worker, run_id, steps, f"{job_name} [{organization_id}]", out)
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    seconds = time.perf_counter() - started
    if result.success:
        return LaunchedRun(run_id, True, seconds, dead_runs=dead_runs)
    error = _failure(result.all_events)
    return LaunchedRun(
        run_id,
        False,
        seconds,
        error=root_cause(error) if error else "the run failed",
        detail=error.to_string() if error else None,
        dead_runs=dead_runs,
    )


def _launch_config(direction: str | None, dry_run: bool, policy: str | None, device_ids: list[str] | None) -> dict:
    config: dict = {"dry_run": dry_run, "device_ids": list(device_ids or [])}
    if direction:
        config["direction"] = direction
    if policy:
        config["policy"] = policy
    return config


def _show_progress(
    instance: dg.DagsterInstance, worker: threading.Thread, run_id: str, steps: list[str], title: str, out: Console
) -> None:
    done: dict[str, None] = {}  # in the order the steps finished
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} assets"),
        TimeElapsedColumn(),
        console=out,
        transient=False,
    ) as progress:
        task = progress.add_task(title, total=len(steps))
        cursor: str | None = None  # read only the events stored since the last look

        def update() -> None:
            nonlocal cursor
            of_type = dg.DagsterEventType.ASSET_MATERIALIZATION
            # One query a look, for the new materializations only: the run's own thread shares
            # this process (and its interpreter lock) with this one.
            read = instance.get_records_for_run(run_id, cursor=cursor, of_type=of_type)
            cursor = read.cursor
            for record in read.records:
                event = record.event_log_entry.dagster_event
                key = event.asset_key.to_user_string() if event and event.asset_key else None
                if key in steps:
                    done[key] = None
            last = next(reversed(done), "starting")
            progress.update(task, completed=len(done), description=f"{title} {last}")

        while worker.is_alive():
            worker.join(0.25)
            update()
        update()


def _failure(events):
    """The first step failure's error, else the run failure's."""
    for event in events:
        if event.is_step_failure and event.step_failure_data.error is not None:
            return event.step_failure_data.error
    for event in events:
        if event.is_run_failure and event.job_failure_data and event.job_failure_data.error is not None:
            return event.job_failure_data.error
    return None


def root_cause(error) -> str:
    """The innermost error's message, in a line or two: Dagster wraps what our code raised in
    DagsterExecutionStepExecutionError ("Error occurred while executing op …"), which says nothing.
    Our own exceptions are shown by message alone; others keep their class name (ConnectError: …)."""
    while error.cause is not None:
        error = error.cause
    message = error.message.strip()
    name, _, text = message.partition(": ")
    if text and "." in name and " " not in name:
        message = text if name.startswith("golioth_assets.") else f"{name.rsplit('.', 1)[1]}: {text}"
    lines = [line for line in message.splitlines() if line.strip()]
    return "\n".join(lines[:2]) if lines else error.cls_name or "the run failed"


def dead_runs_note(launched: LaunchedRun) -> str | None:
    """Said after the run's own output, never before it: scripts take the first run id they see."""
    if not launched.dead_runs:
        return None
    ids = ", ".join(launched.dead_runs)
    return (
        f"note: earlier Dagster run(s) {ids} were still marked as started, but the process running them "
        "is gone: marked them failed and freed their golioth_api pool slots"
    )


def process_tag(host: str, pid: int) -> str:
    """The value of a CLI run's `golioth-sync/process` tag: which process executes it."""
    return f"{host}/{pid}"


def fail_dead_cli_runs(instance: dg.DagsterInstance) -> list[str]:
    """Fail the CLI runs of this host whose process is gone (SIGKILL, OOM, a closed laptop lid).

    Nothing else notices them: without a run launcher there is no run worker for run monitoring to
    check, so such a run stays "started" for ever, and keeps the `golioth_api` pool slots its steps
    held. After as many kills as the pool has slots (4), every sync of every organization would wait
    for a slot for ever. Only runs whose process tag says "this host, no such process" are touched,
    so a sync still running in another terminal or on another machine is left alone. Started runs
    are few (the run queue bounds them), so they are all read and their tag compared here.
    """
    host = socket.gethostname()
    failed = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        run = record.dagster_run
        run_host, _, pid = run.tags.get(RunTag.process, "").rpartition("/")
        if run_host != host or not pid.isdigit() or _process_exists(int(pid)):
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
