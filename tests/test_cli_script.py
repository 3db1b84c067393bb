"""A script drives golioth-sync with `--json` and exit codes alone (docs/operators.md, "Scripting").

Every command runs as the real `golioth-sync` executable in a subprocess, against the simulator and
the test database, as a CI job or a cron script would run it. Nothing here parses a table.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from golioth_assets.cli.output import ExitCode
from golioth_assets.store import database
from tests.fixtures.database import drop_database

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("golioth-sync"))


class Script:
    """Runs `golioth-sync …` the way a shell script does: environment, exit code, stdout, stderr."""

    def __init__(self, env: dict[str, str], dagster_url: str) -> None:
        self.env = env
        self.dagster_url = dagster_url

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(
            [CLI, *args], env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout
        )

    def json(self, *args: str, code: ExitCode = ExitCode.ok, **kwargs) -> dict:
        """Run with --json; the exit code must be `code` and stdout exactly one JSON object."""
        done = self.run(*args, "--json", **kwargs)
        assert done.returncode == code, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return json.loads(done.stdout)

    def dagster_tags(self, run_id: str) -> dict[str, str]:
        with sa.create_engine(self.dagster_url, poolclass=sa.NullPool).connect() as conn:
            rows = conn.execute(sa.text("SELECT key, value FROM run_tags WHERE run_id = :r"), {"r": run_id}).all()
        return dict(rows)


@pytest.fixture
def script(db_url, tmp_path, sim_project_factory):
    dagster_url = db_url.set(database=f"gs_script_dagster_{uuid.uuid4().hex[:8]}")
    database.ensure_database_exists(dagster_url)
    project = sim_project_factory(devices=12, seed=21)
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "GOLIOTH_SYNC_DAGSTER_PG_URL")} | {
        "GOLIOTH_SYNC_HOME": str(tmp_path / "home"),
        "DATABASE_URL": db_url.render_as_string(hide_password=False),
        "DAGSTER_DATABASE_URL": dagster_url.render_as_string(hide_password=False),
        "GOLIOTH_SCRIPT_KEY": project.api_key,
        "COLUMNS": "200",
    }
    try:
        yield Script(env, dagster_url.render_as_string(hide_password=False)), project
    finally:
        drop_database(dagster_url)


def _add_service(script: Script, project, org: str) -> dict:
    added = script.json(
        "services", "add", "--org", org, "--name", "scripted", "--project-id", project.project_id,
        "--base-url", project.url, "--golioth-org", project.organization_id, "--api-key-env", "GOLIOTH_SCRIPT_KEY",
    )  # fmt: skip
    return added["service"]


def test_a_script_adds_tests_plans_syncs_resolves_and_reads_history(script, engine):
    script, project = script
    org = f"scripted-{uuid.uuid4().hex[:6]}"
    service = _add_service(script, project, org)
    assert service["organization_id"] == org and service["api_key_env"] == "GOLIOTH_SCRIPT_KEY"
    assert project.api_key not in json.dumps(service)  # the variable's name, never its value
    listed = script.json("services", "list")["services"]
    assert [s["id"] for s in listed if s["organization_id"] == org] == [service["id"]]

    tested = script.json("services", "test", org)
    assert tested["ok"] and tested["device_count"] == 12 and all(c["ok"] for c in tested["checks"])

    # A dry run: recorded as one, tagged as one in Dagster, and it writes nothing.
    dry = script.json("sync", "--org", org, "--dry-run")
    assert dry["status"] == "success" and dry["dry_run"] and dry["kind"] == "full"
    assert dry["planned"]["local"]["create"] == 12 and dry["changes"]["local"]["create"] == 0
    assert dry["plan_rows"] == len(dry["plan"]) >= 12 and dry["dry_run_conflicts"] == []
    assert script.dagster_tags(dry["dagster_run_id"])["golioth-sync/dry-run"] == "true"
    with engine.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT count(*) FROM devices WHERE organization_id = :o"), {"o": org}).scalar() == 0
        )

    synced = script.json("sync", "--org", org)
    assert synced["status"] == "success" and not synced["dry_run"] and synced["id"] > dry["id"]
    assert synced["changes"]["local"]["create"] == 12 and synced["fetched"]["remote"] == 12
    assert synced["requests"] > 0 and synced["retries"] == 0 and synced["failures"] == 0
    assert "golioth-sync/dry-run" not in script.dagster_tags(synced["dagster_run_id"])

    # Both sides rename one device: with --fail-on-conflicts the run says so in its exit code.
    with engine.begin() as conn:
        device_id, golioth_id = conn.execute(
            sa.text(
                "SELECT d.id::text, a.golioth_device_id FROM devices d JOIN device_service_assignments a "
                "ON a.device_id = d.id::text WHERE d.organization_id = :o ORDER BY d.name LIMIT 1"
            ),
            {"o": org},
        ).one()
        conn.execute(sa.text("UPDATE devices SET name = 'renamed-here' WHERE id = :d"), {"d": device_id})
    project.control.console_update(project.project_id, golioth_id, name="renamed-in-golioth")
    found = script.json("sync", "--org", org, "--fail-on-conflicts", code=ExitCode.conflicts)
    assert found["status"] == "success" and found["conflicts"] == 1

    [conflict] = script.json("conflicts", "list", "--org", org)["conflicts"]
    assert (conflict["field"], conflict["status"]) == ("name", "pending")
    assert (conflict["local_value"], conflict["remote_value"]) == ("renamed-here", "renamed-in-golioth")
    assert script.json("conflicts", "show", str(conflict["id"]))["conflict"]["device_id"] == device_id
    resolved = script.json("conflicts", "resolve", str(conflict["id"]), "--use", "remote", "--by", "ci-bot")
    assert [(c["id"], c["status"], c["resolved_by"]) for c in resolved["resolved"]] == [
        (conflict["id"], "resolved", "ci-bot")
    ]
    applied = script.json("sync", "--org", org, "--fail-on-conflicts")
    assert applied["conflicts"] == 0 and applied["changes"]["local"]["update"] == 1
    [after] = script.json("conflicts", "list", "--org", org, "--all-statuses")["conflicts"]
    assert after["status"] == "applied"

    runs = script.json("history", "--org", org)["runs"]
    assert [r["id"] for r in runs] == [applied["id"], found["id"], synced["id"], dry["id"]]
    assert runs[-1]["dry_run"] and runs[0]["status"] == "success" and runs[0]["seconds"] == applied["seconds"]
    one = script.json("history", "--org", org, "--run", str(applied["id"]))
    assert one["run"] == {k: v for k, v in applied.items() if k != "command_seconds"}
    assert [(e["device_id"], e["changes"]["name"]["new"]) for e in one["entries"] if e["side"] == "local"] == [
        (device_id, "renamed-in-golioth")
    ]
    device = script.json("history", "--org", org, "--device", device_id)
    named = [c for c in device["changes"] if c["field"] == "name"]
    assert named[0]["new"] == "renamed-in-golioth" and named[0]["changed_by"] == "ci-bot"
    assert [c["status"] for c in device["conflicts"]] == ["applied"]


def test_exit_codes_tell_could_not_start_failed_and_partial_apart(script, engine):
    script, project = script
    org = f"scripted-{uuid.uuid4().hex[:6]}"
    _add_service(script, project, org)

    # Could not start: no service, or its key not set here. Nothing is recorded; stdout stays empty.
    for args, env, expected in (
        (("sync", "--org", "no-such-org"), {}, "has no Golioth service"),
        (("sync", "--org", org, "--dry-run"), {"GOLIOTH_SCRIPT_KEY": ""}, "$GOLIOTH_SCRIPT_KEY"),
    ):
        done = script.run(*args, "--json", env=env)
        assert done.returncode == ExitCode.not_started and done.stdout == "", done.stdout + done.stderr
        [line] = [line for line in done.stderr.splitlines() if line.strip()]
        assert line.startswith("Error: ") and expected in line
    assert script.json("history", "--org", org)["runs"] == []

    # Failed: Golioth refuses the key. The root cause in one line, no Dagster traceback, no plan
    # summary, and no "0 requests" for requests that were made before they were counted.
    wrong = {"GOLIOTH_SCRIPT_KEY": "not-the-key"}
    failed = script.json("sync", "--org", org, "--dry-run", code=ExitCode.failed, env=wrong)
    assert failed["status"] == "failed" and failed["dry_run"] and "rejected the API key" in failed["error"]
    assert failed["requests"] is None or failed["requests"] > 0
    assert script.dagster_tags(failed["dagster_run_id"])["golioth-sync/dry-run"] == "true"
    plain = script.run("sync", "--org", org, "--dry-run", env=wrong)
    assert plain.returncode == ExitCode.failed
    for text in ("Traceback", "Stack Trace", "DagsterExecutionStepExecutionError", "no changes planned"):
        assert text not in plain.stdout + plain.stderr, text
    assert [line for line in plain.stderr.splitlines() if line.startswith("Error: ")] == [f"Error: {failed['error']}"]
    assert "failed before planning" in plain.stdout and "Golioth API requests" in plain.stdout
    verbose = script.run("-v", "sync", "--org", org, "--dry-run", env=wrong)
    assert verbose.returncode == ExitCode.failed and "Stack Trace" in verbose.stderr

    # Partial: every PATCH fails, so the local renames cannot reach Golioth; the run finishes.
    assert script.json("sync", "--org", org)["status"] == "success"
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE devices SET name = name || '-renamed' WHERE organization_id = :o"), {"o": org})
    project.set_faults(error_rate=1.0, methods=["PATCH"], error_retry_after_s=0)  # retries at once
    try:
        partial = script.json("sync", "--org", org, code=ExitCode.partial)
    finally:
        project.clear_faults()
    assert partial["status"] == "partial" and partial["failures"] == 12 and partial["retries"] > 0


def test_after_a_crash_the_output_is_about_the_new_run(script, engine):
    """A sync killed mid-run stays "started" in Dagster until the next CLI command fails it. That
    command used to print the dead run's id first, where scripts take the run id from."""
    script, project = script
    org = f"scripted-{uuid.uuid4().hex[:6]}"
    _add_service(script, project, org)
    project.set_faults(latency_ms=2000, methods=["GET"])
    killed = subprocess.Popen(
        [CLI, "sync", "--org", org, "--json"],
        env=script.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (dead_run := _started_run(script)):
            assert killed.poll() is None and time.monotonic() < deadline, "the first sync never started"
            time.sleep(0.2)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(30)
    project.clear_faults()

    done = script.run("sync", "--org", org, "--json")
    assert done.returncode == ExitCode.ok, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["dagster_run_id"] != dead_run and result["status"] == "success"
    assert dead_run in done.stderr and "the process running them is gone" in done.stderr


def _started_run(script: Script) -> str | None:
    with sa.create_engine(script.dagster_url, poolclass=sa.NullPool).connect() as conn:
        if not sa.inspect(conn).has_table("runs"):  # Dagster's storage is still being created
            return None
        return conn.execute(sa.text("SELECT run_id FROM runs WHERE status = 'STARTED' LIMIT 1")).scalar()
