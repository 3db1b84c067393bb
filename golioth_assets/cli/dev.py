"""`golioth-sync dev`: the whole deployment on one machine, for a first look (what `make demo` runs).

1. the embedded PostgreSQL (or DATABASE_URL), migrated;
2. the Golioth simulator with 10,000 devices;
3. a demo organization whose service points at the simulator, and a second one, `acme`, whose
   devices live in a product's own table in a database of its own (cli/demo_product.py);
4. one full sync of each through Dagster, with a summary;
5. the webhook receiver, the Dagster webserver and daemon and the web console,
   until Ctrl-C stops them all. `--no-ui` stops after step 4: one headless sync, then exit.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import httpx
from rich.table import Table

from golioth_assets.cli import demo_product
from golioth_assets.cli.render import TerminalConsole
from golioth_assets.core.vocabulary import Direction, Policy
from golioth_assets.credentials import ALLOW_LOOPBACK_HTTP_ENV

DEMO_ORG = "demo"
DEMO_PROJECT = "demo-project"
API_KEY_ENV = "GOLIOTH_DEMO_API_KEY"
WEBHOOK_SECRET_ENV = "GOLIOTH_DEMO_WEBHOOK_SECRET"  # the pipelines' header secret
SIGNING_KEY_ENV = "GOLIOTH_DEMO_SIGNING_KEY"  # the signed device events' whsec_ key: a different secret

out = TerminalConsole()


def _bin(name: str) -> str:
    """A command (an entry-point script) installed beside this Python (the project's venv)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


class Children:
    """The processes dev started, each the leader of its own process group (so Ctrl-C reaches only
    us, and stopping a child also stops what it started: the daemon's code server and run workers)."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], cwd: Path) -> subprocess.Popen:
        log_dir = Path(os.environ["DAGSTER_HOME"]).parent / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
        proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def dead(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is not None]

    def stop(self, wait_for_runs: Callable[[], None]) -> None:
        """The daemon first, so that nothing new is launched; then the runs it launched get to
        finish (bounded); then every child with its whole process group, politely first."""
        daemon = self.procs.get("dagster-daemon")
        if daemon is not None:
            _terminate(daemon)  # the leader only: its run workers carry on
            wait_for_runs()
        for proc in reversed(self.procs.values()):
            _terminate_group(proc)


def _terminate(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _terminate_group(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    def signal_group(signum: int) -> bool:
        try:
            os.killpg(proc.pid, signum)  # the group id is the leader's pid (start_new_session)
            return True
        except ProcessLookupError:
            return False  # nobody left in the group

    if not signal_group(signal.SIGTERM):
        proc.poll()
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, or the group never empties
        if not signal_group(0):
            return
        time.sleep(0.2)
    signal_group(signal.SIGKILL)
    proc.wait()


def _wait_for_runs(timeout_s: float = 60.0) -> None:
    """Let runs in progress finish, so that Ctrl-C doesn't leave a sync half-applied (it would
    converge on the next run, but its log would say "failed"). A second Ctrl-C stops waiting."""
    import dagster as dg

    in_progress = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED])
    try:
        with dg.DagsterInstance.get() as instance:
            deadline = time.monotonic() + timeout_s
            announced = False
            while (count := instance.get_runs_count(in_progress)) and time.monotonic() < deadline:
                if not announced:
                    out.print(f"waiting for {count} run(s) in progress to finish (Ctrl-C again to stop now)…")
                    announced = True
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # the database may be what is failing; stopping must go on
        out.print(f"[yellow]could not check runs in progress: {exc}[/]")


def _wait_http(url: str, timeout_s: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def _demo_environment() -> None:
    """The demo's secrets (made up unless exported) and its loopback allowance, in this process's
    environment so every process it starts inherits them. The API key is kept (demo_api_key), so
    `golioth-sync env` can hand it to another shell."""
    os.environ[API_KEY_ENV] = demo_api_key()
    os.environ.setdefault(WEBHOOK_SECRET_ENV, secrets.token_hex(32))  # the pipelines' header secret
    os.environ.setdefault(SIGNING_KEY_ENV, "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode())
    # The simulator speaks plain http on loopback: the demo allows that, explicitly.
    os.environ[ALLOW_LOOPBACK_HTTP_ENV] = "1"


def _register_demo_service(engine, simulator_url: str, interval: int):
    from golioth_assets.store import services

    with engine.begin() as conn:
        return services.upsert_service(
            conn,
            services.ServiceSettings(
                organization_id=DEMO_ORG,
                name="Demo fleet (simulated Golioth)",
                project_id=DEMO_PROJECT,
                base_url=simulator_url,
                golioth_organization_id="sim-org",
                api_key_env=API_KEY_ENV,
                interval_seconds=interval,
                direction=Direction.bidirectional,
                conflict_policy=Policy.manual,
                webhook_enabled=True,
                webhook_secret_env=WEBHOOK_SECRET_ENV,
                webhook_signing_key_env=SIGNING_KEY_ENV,
            ),
        )


@dataclass(frozen=True)
class ActivityRate:
    """How busy the demo keeps the fleet. Device data takes the receiver's fast path and starts no
    run; each burst of Golioth console edits is one targeted sync (the webhook sensor claims a burst's
    events in one tick). With the schedule's full sync every 2 minutes, that is about one run a
    minute, each a few seconds long: the Dagster UI mostly shows the assets materialized, and the
    run list stays readable (docs/dagster.md, "What the demo's traffic looks like")."""

    tick_seconds: float = 2.0  # one device reports data each tick
    burst_every_ticks: int = 60  # one burst of Golioth console edits every 2 minutes…
    burst_size: int = 3  # …of this many devices, back to back
    first_burst_tick: int = 30  # a minute in: away from the schedule's syncs, which start on the minute

    def edits_at(self, tick: int, device_ids: list[str]) -> list[str]:
        """The devices edited in the console at `tick` (none, or one burst of distinct devices)."""
        if tick < self.first_burst_tick or (tick - self.first_burst_tick) % self.burst_every_ticks:
            return []
        burst = (tick - self.first_burst_tick) // self.burst_every_ticks
        size = min(self.burst_size, len(device_ids))
        return [device_ids[(burst * size + i) % len(device_ids)] for i in range(size)]


DEMO_ACTIVITY = ActivityRate()
DEMO_INTERVAL_SECONDS = 120  # the schedule's full sync of the demo organization


def _activity(
    control,
    stop: threading.Event,
    device_ids: list[str],
    rate: ActivityRate = DEMO_ACTIVITY,
    project_id: str = DEMO_PROJECT,
) -> None:
    """Keep the demo alive: devices report data (→ webhooks) and now and then someone edits a few of
    them in the Golioth console (→ signed events → one targeted sync per burst)."""
    tick, session = 0, int(time.time())  # names are unique in a project, and the project outlives a demo
    while not stop.wait(rate.tick_seconds):
        tick += 1
        device = device_ids[tick % len(device_ids)]
        try:
            control.device_activity(project_id, device, {"temp": 20 + tick % 7, "battery": 90 - tick % 30})
            for n, edited in enumerate(rate.edits_at(tick, device_ids)):
                control.console_update(project_id, edited, name=f"device-edited-in-console-{session}-{tick}-{n}")
        except Exception:
            pass  # the demo carries on; the simulator may be stopping


@dataclass
class Ports:
    dagster: int
    simulator: int
    webhook: int
    console: int


@click.command()
@click.option("--devices", default=10_000, show_default=True, help="Devices in the simulated Golioth project.")
@click.option("--no-ui", is_flag=True, help="Run one full sync headlessly, print the summary and exit.")
@click.option(
    "--interval", default=DEMO_INTERVAL_SECONDS, show_default=True, help="The demo service's sync interval, seconds."
)
@click.option("--dagster-port", default=3000, show_default=True)
@click.option("--simulator-port", default=8765, show_default=True)
@click.option("--webhook-port", default=8088, show_default=True)
@click.option("--console-port", default=8089, show_default=True)
@click.option(
    "--activity/--no-activity",
    default=True,
    show_default=True,
    help="Simulate device data every 2 s and a burst of Golioth console edits every 2 minutes.",
)
@click.option("--fresh-simulator", is_flag=True, help="Seed the simulated project anew, dropping the edits it kept.")
def dev(
    devices: int,
    no_ui: bool,
    interval: int,
    dagster_port: int,
    simulator_port: int,
    webhook_port: int,
    console_port: int,
    activity: bool,
    fresh_simulator: bool,
) -> None:
    """Start everything on this machine: database, simulator, a first sync, then the Dagster UI."""
    from golioth_assets.cli.runtime import prepare

    started = time.perf_counter()
    install_signal_handlers()
    runtime = prepare()
    out.print(f"[green]✓[/] database {runtime.describe()}")
    simulator = _start_simulator(devices, simulator_port, fresh=fresh_simulator)
    children = Children()
    stop_activity = threading.Event()
    try:
        service = _register_demo_service(runtime.engine, simulator.url, interval)
        out.print(f"[green]✓[/] organization [bold]{DEMO_ORG}[/] → project {DEMO_PROJECT} (service {service.id})")
        acme = _register_acme(runtime, simulator.url, interval)
        _first_sync(runtime.engine, DEMO_ORG)
        _first_sync(runtime.engine, demo_product.ACME_ORG)
        if no_ui:
            out.print(
                f"Done in {time.perf_counter() - started:.1f} s. Look next: `golioth-sync history --org {DEMO_ORG}`, "
                "the `devices` table over SQL (`golioth-sync db status` says where), or `make demo` for the UI. "
                f"Acme's devices are in their own table: {demo_product.psql_line(acme_url(runtime))}",
                soft_wrap=True,  # the command stays on one line, to be copied
            )
            return
        ports = Ports(dagster_port, simulator.port, webhook_port, console_port)
        ui_ready = _start_services(children, ports)
        _connect_webhooks(simulator, ports, {DEMO_PROJECT: service.id, demo_product.ACME_PROJECT: acme.id})
        if activity:
            ids = _some_device_ids(simulator)
            threading.Thread(target=_activity, args=(simulator.control, stop_activity, ids), daemon=True).start()
        _print_running(runtime, simulator, ports, service.id, interval, ui_ready=ui_ready)
        out.print(
            f"Edit one of Acme's devices in their own table: {demo_product.psql_line(acme_url(runtime))}",
            soft_wrap=True,
        )
        out.print(
            "It is in Golioth within seconds: a golioth_targeted_sync run (trigger local_change) in the Dagster UI "
            f"and in the console's history, the device renamed in {simulator.url}/v1/projects/"
            f"{demo_product.ACME_PROJECT}/devices (the key: `golioth-sync env`). An edit of `devices` "
            f"(organization {DEMO_ORG}) travels the same way.",
            soft_wrap=True,
        )
        _watch(children)
    except KeyboardInterrupt:
        out.print("stopping…")
    finally:
        stop_activity.set()
        children.stop(wait_for_runs=_wait_for_runs)
        simulator.stop()  # last: runs still finishing talk to it; it saves its state on the way out
        if children.procs:
            out.print("stopped" + (f"; {EMBEDDED_STAYS_UP}" if runtime.embedded else ""))


EMBEDDED_STAYS_UP = "the embedded PostgreSQL keeps running (CLI commands share it; `golioth-sync db stop` stops it)"


def install_signal_handlers() -> None:
    """Ctrl-C, `kill`, a closed terminal or `docker stop` all clean up the same way. Set explicitly:
    started in the background from a non-interactive shell, we inherit SIGINT ignored (SIG_IGN),
    and Python's default for SIGTERM/SIGHUP is to die on the spot, leaving the children running."""
    signal.signal(signal.SIGINT, _interrupt)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)


def demo_home() -> Path:
    from golioth_assets.settings import get_settings

    return get_settings().home / "simulator"


def demo_api_key() -> str:
    """The simulated project's key: $GOLIOTH_DEMO_API_KEY if set, else the one an earlier demo made
    up (kept in GOLIOTH_SYNC_HOME, so `golioth-sync env` can hand it to another shell), else a new one."""
    key_file = demo_home() / "api-key"
    key = os.environ.get(API_KEY_ENV) or (key_file.read_text().strip() if key_file.exists() else "")
    key = key or secrets.token_hex(24)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.touch(mode=0o600)
    key_file.write_text(key)
    return key


def demo_exports(app_url=None) -> dict[str, str]:
    """What `golioth-sync env` adds for the demo: its simulated API keys, once a demo has made one,
    and where Acme's table is. (Simulator keys, made up on this machine: they open nothing but the
    demo's simulator.)"""
    key_file = demo_home() / "api-key"
    if not key_file.exists():
        return {}
    key = key_file.read_text().strip()
    acme = demo_product.exports(app_url, key) if app_url is not None else {}
    # The simulator speaks plain http on loopback, which only an explicit allowance permits.
    return {API_KEY_ENV: key, ALLOW_LOOPBACK_HTTP_ENV: "1", **acme}


def _start_simulator(devices: int, port: int, *, fresh: bool):
    from golioth_assets.simulator import ProjectSpec, SimulatorServer

    _demo_environment()
    state_file = demo_home() / "state.json"
    if fresh:
        state_file.unlink(missing_ok=True)
    kept = state_file.exists()
    simulator = SimulatorServer(
        projects=[
            ProjectSpec(DEMO_PROJECT, os.environ[API_KEY_ENV], devices=devices, seed=42),
            demo_product.project_spec(devices, os.environ[API_KEY_ENV]),
        ],
        port=port,
        state_file=state_file,
    ).start_subprocess()
    where = f"kept from the last demo in {state_file} (--fresh-simulator reseeds)" if kept else f"{devices:,} devices"
    out.print(f"[green]✓[/] Golioth simulator at {simulator.url}, {where}")
    return simulator


def _register_acme(runtime, simulator_url: str, interval: int):
    """The second organization: Acme's own table, in its own database (cli/demo_product.py)."""
    url = demo_product.prepare_database(runtime.app_url)
    acme = demo_product.register_service(runtime.engine, simulator_url, interval, (WEBHOOK_SECRET_ENV, SIGNING_KEY_ENV))
    demo_product.install_capture(url)  # `devices` has it since `db upgrade` (migration 0007)
    out.print(
        f"[green]✓[/] organization [bold]{demo_product.ACME_ORG}[/] → project {demo_product.ACME_PROJECT} "
        f"(service {acme.id}), devices in {demo_product.mapping().table} of {url.render_as_string(hide_password=True)}"
    )
    return acme


def acme_url(runtime):
    return demo_product.product_url(runtime.app_url)


def _first_sync(engine, org: str) -> None:
    from golioth_assets.cli.dagster_run import dead_runs_note, run_sync_job
    from golioth_assets.cli.render import summary_table
    from golioth_assets.store import sync_log

    launched = run_sync_job(org, trigger="demo", out=out)
    with engine.connect() as conn:
        run = sync_log.latest_run(conn, org, dagster_run_id=launched.run_id)
    if run:
        out.print(summary_table(run))
    if note := dead_runs_note(launched):
        out.print(note, style="yellow")
    if not launched.success:
        raise click.ClickException(launched.error or f"the first sync of {org} failed")


def _start_services(children: Children, ports: Ports) -> bool:
    """The receiver, the Dagster webserver and daemon, and the console: whether the UI answers."""
    from golioth_assets.cli.runtime import PROJECT_ROOT, WORKSPACE_YAML

    workspace = str(WORKSPACE_YAML)
    children.start("webhooks", [_bin("golioth-sync"), "webhooks", "serve", "--port", str(ports.webhook)], PROJECT_ROOT)
    children.start(
        "dagster-webserver",
        [_bin("dagster-webserver"), "-w", workspace, "-h", "127.0.0.1", "-p", str(ports.dagster)],
        PROJECT_ROOT,
    )
    children.start("dagster-daemon", [_bin("dagster-daemon"), "run", "-w", workspace], PROJECT_ROOT)
    children.start("console", [_bin("golioth-sync"), "console", "--port", str(ports.console)], PROJECT_ROOT)
    return _wait_http(f"http://127.0.0.1:{ports.dagster}/server_info", 120)


def _connect_webhooks(simulator, ports: Ports, services: dict[str, int]) -> None:
    """Point each project's pipeline webhook and signed device events at its service's inbox."""
    webhook_url = f"http://127.0.0.1:{ports.webhook}"
    if _wait_http(f"{webhook_url}/healthz", 60):
        for project, service_id in services.items():
            inbox = f"{webhook_url}/webhooks/golioth/{service_id}"
            pipeline_header = {"x-golioth-sync-secret": os.environ[WEBHOOK_SECRET_ENV]}
            simulator.control.set_webhook(project, inbox, pipeline_header)
            # Signed device events use the signing key, a different secret from the pipelines' header.
            simulator.control.set_events(project, inbox, os.environ[SIGNING_KEY_ENV])


def _print_running(runtime, simulator, ports: Ports, service_id: int, interval: int, *, ui_ready: bool) -> None:
    table = Table(title="golioth-sync is running (Ctrl-C stops it)", show_header=False)
    table.add_row("Dagster UI", f"http://127.0.0.1:{ports.dagster}" + ("" if ui_ready else " (still starting)"))
    table.add_row("Webhook receiver", f"http://127.0.0.1:{ports.webhook}/webhooks/golioth/{service_id}")
    table.add_row("Web console", f"http://127.0.0.1:{ports.console}")
    table.add_row("Golioth simulator", f"{simulator.url} (its state is kept in {demo_home()})")
    table.add_row("Database", runtime.describe())
    table.add_row("Logs", str(Path(os.environ["DAGSTER_HOME"]).parent / "logs"))
    table.add_row("Next sync", f"the schedule syncs `{DEMO_ORG}` and `{demo_product.ACME_ORG}` every {interval} s")
    table.add_row(
        "Acme's own table",
        f"{demo_product.mapping().table} in {acme_url(runtime).render_as_string(hide_password=True)}",
    )
    table.add_row(
        "CLI in another shell",
        f'eval "$(golioth-sync env)" (it exports ${API_KEY_ENV}, the simulator\'s key, and {ALLOW_LOOPBACK_HTTP_ENV}), '
        f"then e.g. `golioth-sync sync --org {DEMO_ORG} --dry-run`",
    )
    if runtime.embedded:
        table.add_row("After Ctrl-C", EMBEDDED_STAYS_UP)
    out.print(table)


def _watch(children: Children) -> None:
    while True:
        time.sleep(1)
        dead = children.dead()
        if dead:
            raise click.ClickException(f"{', '.join(dead)} stopped unexpectedly; see the logs folder")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _some_device_ids(simulator, limit: int = 50) -> list[str]:
    with httpx.Client(base_url=simulator.url, headers={"x-api-key": os.environ[API_KEY_ENV]}) as client:
        body = client.get(f"/v1/projects/{DEMO_PROJECT}/devices", params={"perPage": limit}).json()
    return [d["id"] for d in body.get("list", [])]
