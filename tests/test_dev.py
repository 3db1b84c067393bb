"""`golioth-sync dev`, the command behind `make demo`, run as a user runs it: a subprocess with its
own database (on the system PostgreSQL here), simulator, Dagster webserver, daemon and receiver."""

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from golioth_assets.cli.runtime import PROJECT_ROOT
from golioth_assets.store import database
from tests.fixtures.database import drop_database
from tests.fixtures.network import free_port

pytestmark = pytest.mark.slow

GOLIOTH_SYNC = str(Path(sys.executable).with_name("golioth-sync"))


@pytest.fixture
def dev_env(db_url, tmp_path):
    """A fresh app database and Dagster database on the test server, and a private GOLIOTH_SYNC_HOME."""
    app = db_url.set(database=f"gs_dev_{uuid.uuid4().hex[:10]}")
    dagster = app.set(database=app.database + "_dagster")
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "GOLIOTH_SYNC_DAGSTER_PG_URL")} | {
        "GOLIOTH_SYNC_HOME": str(tmp_path / "home"),
        "DATABASE_URL": app.render_as_string(hide_password=False),
        "DAGSTER_DATABASE_URL": dagster.render_as_string(hide_password=False),
        "COLUMNS": "120",
    }
    env.pop("GOLIOTH_DEMO_API_KEY", None)
    yield env, app
    database.engine_for(app).dispose()
    drop_database(app)
    drop_database(dagster)
    drop_database(app.set(database=app.database + "_acme"))  # the second organization's own database


def _count(label: str, output: str) -> int:
    match = re.search(rf"{label}\s*│?\s*([\d,]+)", output)
    assert match, f"no {label!r} in:\n{output}"
    return int(match.group(1).replace(",", ""))


def _summary(org: str, output: str) -> str:
    """The summary table of the first sync of `org` in the demo's output."""
    match = re.search(rf"run \d+ \({org}\): success(.*?)(?=run \d+ \(|Done in|$)", output, re.S)
    assert match, f"no successful sync of {org} in:\n{output}"
    return match.group(1)


def _psql_edit_reaches_golioth(output: str, app, deadline: float) -> None:
    """Live sync in the running demo: the printed psql line, run as printed, edits Acme's table;
    the daemon's inbox sensor turns the captured edit into a targeted sync that updates Golioth."""
    line = re.search(r"Edit one of Acme's devices in their own table: (psql [^\n]*)", output)
    assert line, output
    edit = subprocess.run(["bash", "-c", line.group(1)], capture_output=True, text=True, timeout=30)
    assert edit.returncode == 0 and "UPDATE 1" in edit.stdout, edit.stderr
    engine = sa.create_engine(app, poolclass=sa.NullPool)
    query = sa.text(
        "SELECT count(*) FROM golioth_sync_log WHERE organization_id = 'acme' AND trigger = 'local_change' "
        "AND status = 'success' AND updated_remote = 1"
    )
    try:
        while True:
            with engine.connect() as conn:
                if conn.execute(query).scalar_one():
                    return
            assert time.monotonic() < deadline, "the psql edit never reached Golioth"
            time.sleep(0.5)
    finally:
        engine.dispose()


def _acme_devices(app) -> int:
    """Acme's devices, in Acme's own table of its own database (examples/acme_fleet)."""
    acme = sa.create_engine(app.set(database=app.database + "_acme"), poolclass=sa.NullPool)
    with acme.connect() as conn:
        count = conn.execute(
            sa.text(
                "SELECT count(*) FROM app.devices d JOIN app.organizations o ON o.id = d.organization_id "
                "WHERE o.slug = 'acme'"
            )
        ).scalar_one()
    acme.dispose()
    return count


def test_headless_demo_imports_the_fleet_and_a_second_run_changes_nothing(dev_env):
    env, app = dev_env
    argv = [GOLIOTH_SYNC, "dev", "--no-ui", "--devices", "300", "--simulator-port", str(free_port())]

    first = subprocess.run(argv, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert _count("Golioth devices fetched", first.stdout) == 300
    assert _count("Created locally", first.stdout) == 300
    with database.engine_for(app).connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM devices WHERE organization_id = 'demo'")).scalar_one()
    assert rows == 300
    # The second organization: its 20 Golioth devices came into Acme's own table, and Acme's 3
    # seeded devices went to Golioth.
    acme = _summary("acme", first.stdout)
    assert (_count("Golioth devices fetched", acme), _count("Local devices read", acme)) == (20, 3)
    assert (_count("Created locally", acme), _count("Created in Golioth", acme)) == (20, 3)
    assert _acme_devices(app) == 23
    # The psql line: quoted when the URL needs it (the embedded server's socket path is a query parameter).
    assert re.search(r"psql '?postgresql://", first.stdout) and "UPDATE app.devices SET display_name" in first.stdout

    # The simulator's state is kept in GOLIOTH_SYNC_HOME, so a second demo finds both sides in step.
    argv[-1] = str(free_port())
    second = subprocess.run(argv, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "kept from the last demo" in second.stdout
    assert _count("Golioth devices fetched", second.stdout) == 300
    for org in ("demo", "acme"):
        summary = _summary(org, second.stdout)
        for label in ("Created locally", "Updated locally", "Created in Golioth", "Updated in Golioth"):
            assert _count(label, summary) == 0, (org, label)
    assert _acme_devices(app) == 23


def _demo(env: dict, *extra: str) -> subprocess.CompletedProcess:
    argv = [GOLIOTH_SYNC, "dev", "--no-ui", "--devices", "120", "--simulator-port", str(free_port()), *extra]
    done = subprocess.run(argv, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_a_restarted_demo_keeps_what_earlier_syncs_wrote_to_the_simulator_and_env_hands_out_its_key(dev_env):
    """Before, every start reseeded the simulator: a local edit pushed to Golioth by one demo came
    back as a Golioth "edit" in the next, and the first sync reverted it locally."""
    env, app = dev_env
    _demo(env)
    engine = database.engine_for(app)
    with engine.begin() as conn:
        edited = conn.execute(
            sa.text(
                "UPDATE devices SET name = 'renamed-between-demos' WHERE id = "
                "(SELECT id FROM devices WHERE organization_id = 'demo' ORDER BY name LIMIT 1) RETURNING id::text"
            )
        ).scalar_one()
    pushed = _demo(env)
    assert _count("Updated in Golioth", pushed.stdout) == 1
    restarted = _demo(env)
    for label in ("Updated locally", "Updated in Golioth", "Created locally", "Created in Golioth"):
        assert _count(label, restarted.stdout) == 0, (label, restarted.stdout)
    with engine.connect() as conn:
        name = conn.execute(sa.text("SELECT name FROM devices WHERE id = :id"), {"id": edited}).scalar_one()
    assert name == "renamed-between-demos"

    # A second shell gets the simulator's key from `golioth-sync env`: the same key every demo used.
    exported = subprocess.run(
        [GOLIOTH_SYNC, "env"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert exported.returncode == 0, exported.stderr
    [line] = [line for line in exported.stdout.splitlines() if line.startswith("export GOLIOTH_DEMO_API_KEY=")]
    key = line.split("=", 1)[1]
    assert key and key == (Path(env["GOLIOTH_SYNC_HOME"]) / "simulator" / "api-key").read_text()

    reseeded = _demo(env, "--fresh-simulator")  # the way back to a pristine project: its edit comes back
    assert _count("Updated locally", reseeded.stdout) == 1


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name may hold spaces or parentheses: the fields after its last ')' are fixed.
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _still_alive(pids: set[int], within_s: float) -> set[int]:
    """The pids still running once they all exited, or `within_s` passed."""
    deadline = time.monotonic() + within_s
    while (alive := {pid for pid in pids if _alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def test_ui_demo_serves_dagster_and_the_receiver_and_ctrl_c_stops_every_process(dev_env, tmp_path):
    env, app = dev_env
    ports = {name: free_port() for name in ("dagster", "simulator", "webhook", "console")}
    output = tmp_path / "dev.out"
    argv = [
        GOLIOTH_SYNC,
        "dev",
        "--devices",
        "200",
        "--no-activity",
        "--dagster-port",
        str(ports["dagster"]),
        "--simulator-port",
        str(ports["simulator"]),
        "--webhook-port",
        str(ports["webhook"]),
        "--console-port",
        str(ports["console"]),
    ]
    with output.open("w") as out:
        # Started as a background job of a non-interactive shell is: with SIGINT ignored, which the
        # demo inherits (and used to keep, so Ctrl-C did nothing).
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while "golioth-sync is running" not in output.read_text():
            assert proc.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(1)
        while "Edit one of Acme's devices in their own table: psql" not in (text := output.read_text()):
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
        assert 'eval "$(golioth-sync env)"' in text and "GOLIOTH_DEMO_API_KEY" in text  # another shell's CLI
        assert httpx.get(f"http://127.0.0.1:{ports['dagster']}/server_info", timeout=10).status_code == 200
        # Both organizations side by side: a run of each in Dagster, a service of each in the console.
        runs = httpx.post(
            f"http://127.0.0.1:{ports['dagster']}/graphql",
            json={"query": "{ runsOrError { ... on Runs { results { status tags { key value } } } } }"},
            timeout=30,
        ).json()["data"]["runsOrError"]["results"]
        synced = {
            t["value"] for r in runs if r["status"] == "SUCCESS" for t in r["tags"] if t["key"] == "dagster/partition"
        }
        assert {"demo", "acme"} <= synced, runs
        services_page = httpx.get(f"http://127.0.0.1:{ports['console']}/services", timeout=10)
        assert services_page.status_code == 200, services_page.text[:500]
        assert "Demo fleet" in services_page.text and "Acme fleet" in services_page.text
        assert httpx.get(f"http://127.0.0.1:{ports['webhook']}/healthz", timeout=10).status_code == 200
        _psql_edit_reaches_golioth(text, app, deadline)
        children = _descendants(proc.pid)
        assert len(children) >= 4  # receiver, webserver, daemon, console (and their own children)

        proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        assert proc.wait(180) == 0, output.read_text()
        assert "stopped" in output.read_text()
        # dev waits for its children's process groups to empty; this allows for the reaping only.
        assert not _still_alive(children, within_s=5), "processes outlived `golioth-sync dev`"
    finally:
        if proc.poll() is None:  # the test failed part-way: leave nothing running
            children |= _descendants(proc.pid)
            proc.kill()
            proc.wait()
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
