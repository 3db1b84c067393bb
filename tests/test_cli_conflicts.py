"""`golioth-sync conflicts …` (and the dry run's conflicts) through click's runner, against real
PostgreSQL and the simulator over HTTP. Conflicts are made the real way: both sides edit a field."""

from __future__ import annotations

import re
import threading

import dagster as dg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from golioth_assets.actions import AlreadySettled
from golioth_assets.actions import conflicts as actions
from golioth_assets.cli.main import cli
from golioth_assets.core.vocabulary import RunTag


def run(*args: str):
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "250"})


def one_line_error(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    if code == 1:
        assert len(lines) == 1, result.output
    return lines[-1]


@pytest.fixture
def dagster_env(db_env, tmp_path, monkeypatch):
    """What `prepare()` needs to launch runs in this process: a throwaway DAGSTER_HOME (SQLite
    storage) and GOLIOTH_SYNC_HOME; the variables it sets are restored afterwards."""
    yaml = tmp_path / "dagster.yaml"
    yaml.write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("GOLIOTH_SYNC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GOLIOTH_SYNC_DAGSTER_YAML", str(yaml))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    monkeypatch.setenv("GOLIOTH_SYNC_DAGSTER_PG_URL", "unused-with-sqlite-storage")
    return tmp_path / "home" / "dagster"


def test_list_and_show_side_by_side(db_env, harness):
    cid, device_id, gid = harness.make_conflict()
    listed = run("conflicts", "list", "--org", harness.org)
    assert listed.exit_code == 0, listed.output
    assert str(cid) in listed.output and '"local-name"' in listed.output and '"remote-name"' in listed.output

    shown = run("conflicts", "show", str(cid))
    assert shown.exit_code == 0, shown.output
    assert "base (last agreed)" in shown.output and "remote (Golioth)" in shown.output
    base = harness.conflict(cid)["base_value"]
    header = next(line for line in shown.output.splitlines() if '"local-name"' in line)
    # One row, three columns: base, local, remote, in that order.
    assert header.index(f'"{base}"') < header.index('"local-name"') < header.index('"remote-name"')
    assert f"conflicts resolve {cid}" in shown.output

    assert run("conflicts", "list", "--org", harness.org, "--status", "applied").output.count("remote-name") == 0


@pytest.mark.parametrize(
    ("args", "chosen"),
    [
        (["--use", "local"], "local-name"),
        (["--use", "remote"], "remote-name"),
        (["--value", '"operator-name"'], "operator-name"),
    ],
)
def test_resolution_by_cli_is_applied_by_the_next_sync(db_env, harness, args, chosen):
    cid, device_id, gid = harness.make_conflict()
    result = run("conflicts", "resolve", str(cid), *args, "--by", "alice")
    assert result.exit_code == 0, result.output
    assert f"conflict {cid} resolved" in result.output and "by alice" in result.output
    assert harness.conflict(cid)["status"] == "resolved"

    harness.sync()
    assert harness.local().loc[device_id, "name"] == chosen
    assert harness.remote()[gid]["name"] == chosen
    row = harness.conflict(cid)
    assert (row["status"], row["resolved_by"]) == ("applied", "alice")
    assert "alice" in harness.changed_by(device_id)
    assert harness.sync().plan.empty


def test_a_resolution_is_applied_while_another_conflict_stays_pending(db_env, harness):
    # Regression: the plan then mixes rows with and without a conflict id (pandas makes it 3.0).
    resolved, d1, g1 = harness.make_conflict(local="l1", remote="r1")
    pending, d2, g2 = harness.make_conflict(harness.local().sort_index().index[1], local="l2", remote="r2")
    assert run("conflicts", "resolve", str(resolved), "--use", "remote", "--by", "gil").exit_code == 0
    assert harness.sync().status == "success"
    assert (harness.local().loc[d1, "name"], harness.remote()[g1]["name"]) == ("r1", "r1")
    assert (harness.conflict(resolved)["status"], harness.conflict(pending)["status"]) == ("applied", "pending")
    assert (harness.local().loc[d2, "name"], harness.remote()[g2]["name"]) == ("l2", "r2")


def test_bulk_resolution_of_an_organization(db_env, harness):
    first, d1, g1 = harness.make_conflict(local="l1", remote="r1")
    second_device = harness.local().sort_index().index[1]
    second, d2, g2 = harness.make_conflict(second_device, local="l2", remote="r2")
    usage = run("conflicts", "resolve", "--all", "--use", "remote", "--by", "bob")
    assert usage.exit_code == 2 and "--all needs --org" in usage.output

    result = run("conflicts", "resolve", "--org", harness.org, "--all", "--use", "remote", "--by", "bob")
    assert result.exit_code == 0, result.output
    assert f"resolved 2 conflict(s) of {harness.org} with remote, by bob" in result.output
    harness.sync()
    remote = harness.remote()
    local = harness.local()
    assert (local.loc[d1, "name"], remote[g1]["name"]) == ("r1", "r1")
    assert (local.loc[d2, "name"], remote[g2]["name"]) == ("r2", "r2")
    assert {harness.conflict(c)["status"] for c in (first, second)} == {"applied"}
    assert "bob" in harness.changed_by(d1) and "bob" in harness.changed_by(d2)


def test_bad_input_gives_one_line_and_a_nonzero_exit(db_env, harness, make_harness):
    cid, _, _ = harness.make_conflict()
    other = make_harness(devices=2)

    assert "no conflict with id 99999999" in one_line_error(
        run("conflicts", "resolve", "99999999", "--use", "local", "--by", "a")
    )
    assert "no conflict with id 99999999" in one_line_error(run("conflicts", "show", "99999999"))
    assert "conflict id must be a positive integer" in one_line_error(run("conflicts", "show", "twelve"))
    wrong_org = one_line_error(run("conflicts", "resolve", str(cid), "--use", "local", "--by", "a", "--org", other.org))
    assert f"belongs to organization {harness.org!r}, not {other.org!r}" in wrong_org
    assert "unknown organization 'no-such-org'" in one_line_error(run("conflicts", "list", "--org", "no-such-org"))
    malformed = one_line_error(run("conflicts", "resolve", str(cid), "--value", "{not json", "--by", "a"))
    assert "the value is not valid JSON" in malformed
    unquoted = one_line_error(run("conflicts", "resolve", str(cid), "--value", "plain-name", "--by", "a"))
    assert "strings need quotes" in unquoted
    wrong_type = one_line_error(run("conflicts", "resolve", str(cid), "--value", "42", "--by", "a"))
    assert "a device name must be a non-empty JSON string" in wrong_type
    nobody = one_line_error(run("conflicts", "resolve", str(cid), "--use", "local", "--by", "  "))
    assert "say who decides" in nobody
    assert "choose exactly one of --use" in run("conflicts", "resolve", str(cid), "--by", "a").output
    assert run("conflicts", "resolve", str(cid), "--by", "a").exit_code == 2
    assert run("conflicts", "resolve", str(cid), "--use", "sideways", "--by", "a").exit_code == 2

    # None of it changed anything.
    row = harness.conflict(cid)
    assert (row["status"], row["resolved_by"], row["resolution"]) == ("pending", None, None)


def test_explicit_ids_are_all_or_nothing(db_env, harness):
    first, _, _ = harness.make_conflict(local="l1", remote="r1")
    second, _, _ = harness.make_conflict(harness.local().sort_index().index[1], local="l2", remote="r2")
    assert run("conflicts", "resolve", str(second), "--use", "local", "--by", "ann").exit_code == 0
    both = run("conflicts", "resolve", str(first), str(second), "--use", "remote", "--by", "ben")
    assert f"conflict {second} is already resolved (local, by ann)" in one_line_error(both)
    assert harness.conflict(first)["status"] == "pending"  # rolled back with the refusal


def test_resolving_a_settled_conflict_says_so_and_changes_nothing(db_env, harness):
    cid, device_id, gid = harness.make_conflict()
    assert run("conflicts", "resolve", str(cid), "--use", "local", "--by", "alice").exit_code == 0
    again = one_line_error(run("conflicts", "resolve", str(cid), "--use", "remote", "--by", "mallory"))
    assert (
        again
        == f"Error: conflict {cid} is already resolved (local, by alice); the next sync applies it; nothing changed"
    )
    row = harness.conflict(cid)
    assert (row["resolution"], row["resolved_by"], row["resolved_value"]) == ("local", "alice", "local-name")

    harness.sync()
    applied = one_line_error(run("conflicts", "resolve", str(cid), "--value", '"x"', "--by", "mallory"))
    assert f"conflict {cid} is already applied (local, by alice)" in applied

    # Superseded: the sides converge on their own before anyone decides.
    cid2, device2, _ = harness.make_conflict(harness.local().sort_index().index[2], local="a", remote="b")
    harness.edit_local(device2, name="b")
    harness.sync()
    superseded = one_line_error(run("conflicts", "resolve", str(cid2), "--use", "local", "--by", "alice"))
    assert f"conflict {cid2} was superseded" in superseded
    assert harness.conflict(cid2)["resolved_by"] is None


def test_concurrent_resolutions_exactly_one_wins(db_env, harness):
    """Eight operators resolve each conflict at once, each differently: one wins, seven are told."""
    conflict_ids = [
        harness.make_conflict(d, local=f"l{i}", remote=f"r{i}")[0]
        for i, d in enumerate(harness.local().sort_index().index[:3])
    ]
    for cid in conflict_ids:
        barrier = threading.Barrier(8)
        outcomes: dict[str, object] = {}

        def attempt(n: int, cid=cid, barrier=barrier, outcomes=outcomes) -> None:
            use = ("local", "remote", "value")[n % 3]
            barrier.wait()
            try:
                actions.resolve(
                    harness.engine, [cid], use=use, value=f"v{n}" if use == "value" else None, resolved_by=f"op{n}"
                )
                outcomes[f"op{n}"] = "won"
            except AlreadySettled as exc:
                outcomes[f"op{n}"] = exc

        threads = [threading.Thread(target=attempt, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [name for name, outcome in outcomes.items() if outcome == "won"]
        assert len(outcomes) == 8 and len(winners) == 1, outcomes
        row = harness.conflict(cid)
        assert row["status"] == "resolved" and row["resolved_by"] == winners[0]
        losers = [o for o in outcomes.values() if o != "won"]
        assert all(f"already resolved ({row['resolution']}, by {winners[0]})" in str(o) for o in losers)


def test_identity_conflicts_cannot_take_a_side(db_env, harness):
    harness.sync()
    harness.create_remote(name="twin-a", hardwareIds=["shared-a"])
    harness.create_remote(name="twin-b", hardwareIds=["shared-b"])
    harness.create_local(name="ambiguous", hardware_ids=["shared-a", "shared-b"])
    harness.sync()
    cid = int(harness.conflicts()["id"].item())
    line = one_line_error(run("conflicts", "resolve", str(cid), "--use", "local", "--by", "a"))
    assert f"conflict {cid} is an identity conflict: fix the hardware ids" in line
    bulk = run("conflicts", "resolve", "--org", harness.org, "--all", "--use", "local", "--by", "a")
    assert bulk.exit_code == 0 and "resolved 0 conflict(s)" in bulk.output and f"skipped {cid}" in bulk.output
    assert harness.conflict(cid)["status"] == "pending"


@pytest.mark.slow
def test_now_runs_a_targeted_sync_through_dagster(dagster_env, harness):
    cid, device_id, gid = harness.make_conflict()
    result = run("conflicts", "resolve", str(cid), "--use", "remote", "--by", "dora", "--now")
    assert result.exit_code == 0, result.output
    assert f"applied to both sides: {cid}" in result.output
    assert harness.local().loc[device_id, "name"] == "remote-name"
    assert harness.remote()[gid]["name"] == "remote-name"
    assert "dora" in harness.changed_by(device_id)
    with dg.DagsterInstance.from_config(str(dagster_env)) as instance:
        runs = instance.get_run_records(dg.RunsFilter(tags={RunTag.org: harness.org}))
    assert len(runs) == 1 and runs[0].dagster_run.job_name == "golioth_targeted_sync"
    with harness.engine.connect() as conn:
        scope = conn.execute(
            sa.text("SELECT scope FROM golioth_sync_log WHERE dagster_run_id = :r"), {"r": runs[0].dagster_run.run_id}
        ).scalar_one()
    assert scope == [device_id]


@pytest.mark.slow
def test_dry_run_prints_the_plan_and_the_conflicts_it_would_record(dagster_env, harness):
    harness.sync()
    device_id = harness.local().sort_index().index[0]
    gid = harness.golioth_id_of(device_id)
    was_enabled = bool(harness.local().loc[device_id, "enabled"])
    harness.edit_local(device_id, name="dry-local", enabled=not was_enabled)  # seeded devices vary
    harness.edit_remote(gid, name="dry-remote")

    result = run("sync", "--org", harness.org, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "plan (dry run: nothing was written)" in result.output
    assert "enabled" in result.output  # the non-conflicting change, in the plan
    assert "conflicts (dry run: not recorded)" in result.output
    conflict_line = next(
        line for line in result.output.splitlines() if '"dry-local"' in line and '"dry-remote"' in line
    )
    assert conflict_line.split()[:3] == ["dry-local", "name", "field"]  # device (by name), field, type
    # The summary counts what the plan would do, although a dry run writes nothing.
    updated_remote = next(line for line in result.output.splitlines() if "Updated in Golioth" in line)
    assert updated_remote.split("│")[2].strip() == "1"
    assert harness.conflicts(status=None).empty  # a dry run records nothing
    assert harness.remote()[gid].get("enabled", False) is was_enabled


@pytest.mark.slow
def test_dry_run_without_changes_says_so_in_one_line(dagster_env, harness):
    harness.sync()
    result = run("sync", "--org", harness.org, "--dry-run")
    assert result.exit_code == 0, result.output
    with harness.engine.connect() as conn:
        last = conn.execute(
            sa.text("SELECT max(id) FROM golioth_sync_log WHERE organization_id = :o"), {"o": harness.org}
        ).scalar()
    # The id is the run's everywhere: `history --run` takes the same number.
    assert f"run {last} ({harness.org}): success" in result.output
    assert "no changes planned" in result.output.splitlines()
    assert "plan (dry run" not in result.output


def test_list_keeps_ids_statuses_and_times_whole_at_80_columns(db_env, harness):
    cid, _, _ = harness.make_conflict(local="a local name long enough to need shortening", remote="remote-name")
    result = CliRunner().invoke(cli, ["conflicts", "list"], env={"COLUMNS": "80"})
    lines = result.output.splitlines()
    assert max(map(len, lines)) <= 80, result.output
    row = next(line for line in lines if line.startswith(f"{cid} "))
    assert row.split()[1] == harness.org and "…" in row  # the long value is cut, `conflicts show` has it
    assert re.search(r" pending +\d{4}-\d\d-\d\d \d\d:\d\d$", row.rstrip()), row
