"""`golioth-sync history` through click's runner: runs, one run, and one device's audit trail."""

from __future__ import annotations

import sqlalchemy as sa
from click.testing import CliRunner

from golioth_assets.actions import history as actions
from golioth_assets.cli.main import cli
from golioth_assets.store import conflicts as conflict_store
from golioth_assets.store import sync_log

ERROR = "ConnectError: [Errno 111] Connection refused [GET /v1/projects/p/tags; project 'p' at http://127.0.0.1:9]"


def run(*args: str, width: int = 250):
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": str(width)})


def _failed_run(h) -> int:
    """A scheduled targeted import that failed, recorded as the engine records one."""
    with h.engine.begin() as conn:
        run_id = sync_log.start_run(
            conn,
            organization_id=h.org,
            service_id=h.service.id,
            direction="import",
            policy="manual",
            trigger="schedule",
            scope=[h.local().index[0]],
        )
        sync_log.finish_run(conn, run_id, status="failed", error=ERROR)
    return run_id


def _fits(output: str, width: int = 80) -> list[str]:
    lines = output.splitlines()
    assert max(map(len, lines)) <= width, output
    return lines


def _resolved_rename(h, by="alice"):
    """A device renamed on both sides, resolved with an edited value by `by`, applied by a sync."""
    h.sync()
    device_id = h.local().sort_index().index[0]
    gid = h.golioth_id_of(device_id)
    h.edit_local(device_id, name="kitchen-local")
    h.edit_remote(gid, name="kitchen-golioth")
    h.sync()
    cid = int(h.conflicts()["id"].item())
    with h.engine.begin() as conn:
        conflict_store.resolve(conn, cid, use="value", value="kitchen-sensor", resolved_by=by)
    h.sync()
    return device_id, gid, cid


def test_runs_with_counts_and_status(db_env, harness):
    harness.sync()
    harness.sync(dry_run=True)
    result = run("history", "--org", harness.org)
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "success" in line]
    assert len(rows) == 2
    assert "dry run" in rows[0] and "20/0/0" in rows[1] and "full" in rows[1]
    assert (
        len(
            [
                line
                for line in run("history", "--org", harness.org, "--limit", "1").output.splitlines()
                if "success" in line
            ]
        )
        == 1
    )


def test_device_history_shows_every_change_with_who_chose_it(db_env, harness):
    device_id, gid, cid = _resolved_rename(harness)
    for ref in (device_id, gid, "kitchen-sensor"):
        result = run("history", "--org", harness.org, "--device", ref)
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        local = next(line for line in lines if '"kitchen-local"' in line and '"kitchen-sensor"' in line)
        remote = next(line for line in lines if '"kitchen-golioth"' in line and '"kitchen-sensor"' in line)
        assert " local " in local and "alice" in local and "update" in local
        assert "Golioth" in remote and "alice" in remote
        assert any("create" in line and "sync" in line for line in lines)  # the first import
        conflicts = result.output.split("conflicts of this device", 1)[1]
        assert any(line.split()[:3] == [str(cid), "name", "applied"] for line in conflicts.splitlines() if line.strip())

    found = actions.device_history(harness.engine, harness.org, gid)
    changes = found.changes()
    assert {c["side"] for c in changes if c["changed_by"] == "alice"} == {"local", "remote"}
    assert all(c["sync_log_id"] and c["created_at"] for c in changes)


def test_one_run_lists_its_device_entries(db_env, harness):
    device_id, _, _ = _resolved_rename(harness, by="erin")
    with harness.engine.connect() as conn:
        last = conn.execute(
            sa.text("SELECT max(id) FROM golioth_sync_log WHERE organization_id = :o"), {"o": harness.org}
        ).scalar()
    result = run("history", "--org", harness.org, "--run", str(last))
    assert result.exit_code == 0, result.output
    assert f"run {last} ({harness.org}): success" in result.output
    assert "kitchen-sensor" in result.output and "erin" in result.output
    sides = {
        line.split()[3]
        for line in result.output.split(f"devices changed by run {last}", 1)[1].splitlines()
        if "erin" in line
    }
    assert sides == {"local", "Golioth"}  # as in a device's history, not the database's "remote"


def test_lists_stay_readable_at_80_columns(db_env, harness):
    device_id, gid, _ = _resolved_rename(harness)
    failed = _failed_run(harness)

    runs = _fits(run("history", "--org", harness.org, width=80).output)
    row = next(line for line in runs if line.startswith(f"{failed} "))
    assert row.split()[3:6] == ["schedule", "targeted", "failed"]  # whole words; the error is not in the row
    # The error is shortened under the table; `--run N` has all of it.
    assert f"run {failed} failed: {ERROR[:39]}… (full text: --run {failed})" in runs
    detail = run("history", "--org", harness.org, "--run", str(failed), width=80).output
    assert ERROR in " ".join(line.strip(" │") for line in detail.splitlines())

    device = _fits(run("history", "--org", harness.org, "--device", gid, width=80).output)
    assert any(line.split()[3:5] == ["Golioth", "update"] and "applied" in line.split() for line in device)


def test_unknown_org_device_or_run_is_one_line(db_env, harness):
    harness.sync()
    for args, expected in (
        (["--org", "nobody-here"], "unknown organization 'nobody-here'"),
        (
            ["--org", harness.org, "--device", "no-such-device"],
            f"no device 'no-such-device' in organization {harness.org!r}",
        ),
        (["--org", harness.org, "--run", "999999999"], f"no run 999999999 in organization {harness.org!r}"),
        (["--org", harness.org, "--limit", "0"], "limit must be between 1 and 10000"),
    ):
        result = run("history", *args)
        assert result.exit_code == 1, result.output
        assert result.output.strip() == f"Error: {expected}"
