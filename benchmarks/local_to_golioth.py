"""Local edit → Golioth through the daemon: how long after the product's app edits a device in its
table does Golioth show the edit, when it travels the whole live path?

    .venv/bin/python benchmarks/local_to_golioth.py [--events 10] [--devices 200] [--json PATH]

The path, every piece real and in its own process as in production:

    UPDATE devices SET name = … (as the app would) ─► capture trigger ─► golioth_sync.changes
    ─► webhook_inbox_sensor (dagster-daemon; an idle tick watches for new work) moves it into the
    inbox and claims it ─► targeted sync run (queued, dequeued, launched in a run worker)
    ─► golioth_device_writes ─► the simulator's GET shows the new name

Needs a PostgreSQL server (BENCH_DATABASE_URL, default the system server at 127.0.0.1:5432): it
creates two databases (ours and Dagster's) and drops them at the end. Dagster runs with this
project's dagster.yaml and workspace.yaml, as `golioth-sync dev` runs it. Edits go one at a time,
each after a random 0–5 s pause once the previous run ended, so they land at every phase of the
sensor daemon's 5 s loop.

The floor, measured in the same run: a bare PATCH of one device's name against the same
simulator, then the GET that shows it. Prints p50/p95 of edit → visible, the load average, and
where the time goes; exits 1 when p50 > 3 s or p95 > 5 s (issue 12's targets).

Figures go to docs/benchmarks.md, "Local edit → Golioth through the sensor".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The simulator is plain http on loopback: a service may use it only with this explicit allowance.
os.environ.setdefault("GOLIOTH_SYNC_ALLOW_LOOPBACK_HTTP", "1")

from benchmarks.daemon_harness import Child, clean_up, percentile, venv_bin  # noqa: E402
from golioth_assets.store import database  # noqa: E402

ORG = "bench"
PROJECT = "bench-project"
KEY_ENV = "GOLIOTH_BENCH_API_KEY"
TARGET_P50_S, TARGET_P95_S = 3.0, 5.0


@dataclass
class Sample:
    device: str
    total_s: float  # the edit committed → Golioth's GET shows it
    to_inbox_s: float  # edit → copied into the inbox (the sensor's wait noticed it, or its next tick)
    to_claim_s: float  # inbox → claimed (same tick: ~0)
    to_run_start_s: float  # claim → run worker started (the three below)
    to_queued_s: float  # claim → run created in the queue (the tick returns, the daemon submits)
    to_dequeued_s: float  # queued → dequeued by the run coordinator (its loop's interval)
    to_started_s: float  # dequeued → run started (launch: a run worker process, its imports)
    to_visible_s: float  # run start → visible in Golioth (the targeted sync's steps up to its PATCH)
    run_s: float  # the whole run, start to end


def _linked_devices(engine, service_id: int) -> dict[str, str]:
    """Local device id → Golioth id, for every linked device."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT device_id, golioth_device_id FROM device_service_assignments WHERE service_id = :s"),
            {"s": service_id},
        ).all()
    return dict(rows)


def _edit(engine, device_id: str, name: str) -> float:
    """Rename the device as the product's app would; returns when the edit committed."""
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE devices SET name = :n WHERE id = CAST(:d AS uuid)"), {"n": name, "d": device_id})
    return time.time()


def _event(engine, device_id: str, after_id: int, timeout_s: float = 60.0) -> dict:
    """The inbox row of this device's captured change once its run marked it processed."""
    deadline = time.monotonic() + timeout_s
    row = None
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            row = (
                conn.execute(
                    sa.text(
                        "SELECT id, extract(epoch FROM received_at) AS received, extract(epoch FROM claimed_at) "
                        "AS claimed, claimed_by, status FROM webhook_events WHERE organization_id = :o "
                        "AND device_id = :d AND id > :a ORDER BY id DESC LIMIT 1"
                    ),
                    {"o": ORG, "d": device_id, "a": after_id},
                )
                .mappings()
                .first()
            )
        if row and row["status"] == "processed":
            return dict(row)
        time.sleep(0.2)
    raise SystemExit(f"the change of {device_id} was not processed within {timeout_s:.0f} s: {row}")


@dataclass
class RunTimes:
    created: float
    dequeued: float
    started: float
    ended: float


def _run_times(instance, claim: str) -> RunTimes:
    import dagster as dg

    from golioth_assets.core.vocabulary import RunTag

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        records = instance.get_run_records(dg.RunsFilter(tags={RunTag.claim: claim}), limit=1)
        if records and records[0].end_time:
            record = records[0]
            [starting] = instance.get_records_for_run(
                record.dagster_run.run_id, of_type=dg.DagsterEventType.RUN_STARTING
            ).records
            return RunTimes(
                record.create_timestamp.timestamp(),
                starting.event_log_entry.timestamp,
                record.start_time,
                record.end_time,
            )
        time.sleep(0.5)
    raise SystemExit(f"no finished run for claim {claim}")


def _wait_visible(client: httpx.Client, golioth_id: str, name: str, timeout_s: float, logs: Path) -> float:
    deadline = time.monotonic() + timeout_s
    while client.get(f"/v1/projects/{PROJECT}/devices/{golioth_id}").json()["data"]["name"] != name:
        if time.monotonic() > deadline:
            raise SystemExit(f"{golioth_id} never showed {name!r} in Golioth (see {logs})")
        time.sleep(0.05)
    return time.time()


def _floor(client: httpx.Client, golioth_id: str, rounds: int = 5) -> float:
    """A bare PATCH of the name and the GET that shows it: the least any path can take (median)."""
    times = []
    for i in range(rounds):
        started = time.perf_counter()
        client.patch(f"/v1/projects/{PROJECT}/devices/{golioth_id}", json={"name": f"floor-{i}"}).raise_for_status()
        client.get(f"/v1/projects/{PROJECT}/devices/{golioth_id}").raise_for_status()
        times.append(time.perf_counter() - started)
    return percentile(times, 0.5)


def _setup(args: argparse.Namespace, home: Path):
    """Databases, the simulator, the service and its first full sync (links every device)."""
    from golioth_assets.cli.dagster_run import run_sync_job
    from golioth_assets.cli.runtime import prepare
    from golioth_assets.simulator import ProjectSpec, SimulatorServer
    from golioth_assets.store import services

    runtime = prepare()  # databases, migrations (capture on `devices`), DAGSTER_HOME with dagster.yaml
    simulator = SimulatorServer(
        projects=[ProjectSpec(PROJECT, os.environ[KEY_ENV], devices=args.devices, seed=11)]
    ).start_subprocess()
    with runtime.engine.begin() as conn:
        service = services.upsert_service(
            conn,
            services.ServiceSettings(
                organization_id=ORG,
                name="benchmark fleet",
                project_id=PROJECT,
                base_url=simulator.url,
                golioth_organization_id="sim-org",
                api_key_env=KEY_ENV,
                interval_seconds=3600,  # the schedule stays quiet: only the edits start runs
            ),
        )
    first = run_sync_job(ORG, trigger="benchmark")
    if not first.success:
        raise SystemExit(f"the first sync failed: {first.error}")
    return runtime.engine, simulator, service


def _measure_one(
    engine, client, instance, device: str, golioth_id: str, after_id: int, args, logs
) -> tuple[Sample, int]:
    """One edit, followed to Golioth; the sample and its inbox event's id."""
    new_name = f"bench-{uuid.uuid4().hex[:8]}"
    edited = _edit(engine, device, new_name)
    visible = _wait_visible(client, golioth_id, new_name, args.timeout, logs)
    event = _event(engine, device, after_id)
    run = _run_times(instance, event["claimed_by"])
    claimed = float(event["claimed"])
    sample = Sample(
        device=device,
        total_s=visible - edited,
        to_inbox_s=float(event["received"]) - edited,
        to_claim_s=claimed - float(event["received"]),
        to_run_start_s=run.started - claimed,
        to_queued_s=run.created - claimed,
        to_dequeued_s=run.dequeued - run.created,
        to_started_s=run.started - run.dequeued,
        to_visible_s=visible - run.started,
        run_s=run.ended - run.started,
    )
    return sample, event["id"]


def measure(args: argparse.Namespace) -> tuple[list[Sample], dict]:
    import dagster as dg

    from golioth_assets.cli.runtime import WORKSPACE_YAML

    server = database.normalize_url(args.database_url)
    name = f"gs_bench_{uuid.uuid4().hex[:8]}"
    app_url, dagster_url = server.set(database=name), server.set(database=f"{name}_dagster")
    home = Path(tempfile.mkdtemp(prefix="golioth-bench-"))
    os.environ.update(
        GOLIOTH_SYNC_HOME=str(home),
        DATABASE_URL=app_url.render_as_string(hide_password=False),
        DAGSTER_DATABASE_URL=dagster_url.render_as_string(hide_password=False),
        **{KEY_ENV: secrets.token_hex(24)},
    )
    daemon = simulator = None
    try:
        engine, simulator, service = _setup(args, home)
        logs = home / "logs"
        logs.mkdir()
        daemon = Child("dagster-daemon", [venv_bin("dagster-daemon"), "run", "-w", str(WORKSPACE_YAML)], logs)
        linked = _linked_devices(engine, service.id)
        random.seed(args.seed)
        devices = random.sample(sorted(linked), args.events + 2)
        samples: list[Sample] = []
        last_event_id = 0
        with (
            httpx.Client(base_url=simulator.url, headers={"x-api-key": os.environ[KEY_ENV]}) as client,
            dg.DagsterInstance.get() as instance,
        ):
            floor = _floor(client, linked[devices[-1]])
            for i, device in enumerate(devices[:-1]):
                sample, last_event_id = _measure_one(
                    engine, client, instance, device, linked[device], last_event_id, args, logs
                )
                label = "warm-up" if i == 0 else f"edit {i}"
                print(
                    f"{label:>8}: {sample.total_s:6.2f} s  (inbox {sample.to_inbox_s:.2f}, claim {sample.to_claim_s:.2f}, "
                    f"queued {sample.to_queued_s:.2f}, dequeued {sample.to_dequeued_s:.2f}, "
                    f"started {sample.to_started_s:.2f}, visible {sample.to_visible_s:.2f}; run {sample.run_s:.2f})",
                    flush=True,
                )
                if i:  # the first edit pays for the daemon's code server start-up
                    samples.append(sample)
                # Let the run end, then a random part of the sensor daemon's 5 s loop.
                time.sleep(random.uniform(0, 5))
        info = {
            "devices": args.devices,
            "events": len(samples),
            "floor_s": floor,
            "loadavg": os.getloadavg(),
            "cpus": os.cpu_count(),
        }
        return samples, info
    finally:
        clean_up([simulator, daemon], app_url, dagster_url, home)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10, help="measured edits (one warm-up edit comes first)")
    parser.add_argument("--devices", type=int, default=200, help="devices in the simulated project")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one edit")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the samples and figures here")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    samples, info = measure(args)

    totals = [s.total_s for s in samples]
    p50, p95 = percentile(totals, 0.5), percentile(totals, 0.95)
    print(
        f"\n{info['events']} edits, {info['devices']} devices, load average {load_before[0]:.1f} before, "
        f"{info['loadavg'][0]:.1f} after, on {info['cpus']} CPUs"
    )
    print("| segment | p50 s | p95 s | max s |\n|---|---|---|---|")
    for field, label in [
        ("total_s", "**local edit → visible in Golioth**"),
        ("to_inbox_s", "edit → copied into the inbox"),
        ("to_claim_s", "inbox → claimed"),
        ("to_run_start_s", "claimed → run worker started"),
        ("to_queued_s", "… claimed → run queued (tick returns, daemon submits)"),
        ("to_dequeued_s", "… queued → launching (run coordinator dequeues)"),
        ("to_started_s", "… launching → run started (run worker process)"),
        ("to_visible_s", "run started → visible in Golioth"),
        ("run_s", "whole targeted run"),
    ]:
        values = [getattr(s, field) for s in samples]
        print(f"| {label} | {percentile(values, 0.5):.2f} | {percentile(values, 0.95):.2f} | {max(values):.2f} |")
    print(f"floor (bare PATCH + GET): {info['floor_s'] * 1000:.1f} ms; p50 is {p50 / info['floor_s']:.0f}× the floor")
    missed = [f"p50 {p50:.2f} s > {TARGET_P50_S} s"] * (p50 > TARGET_P50_S) + [
        f"p95 {p95:.2f} s > {TARGET_P95_S} s"
    ] * (p95 > TARGET_P95_S)
    print("targets (p50 ≤ 3 s, p95 ≤ 5 s): " + ("MISSED: " + "; ".join(missed) if missed else "met"))
    if args.json:
        figures = {"p50_s": p50, "p95_s": p95, "load_before": load_before, "missed": missed}
        args.json.write_text(
            json.dumps({"info": info, "figures": figures, "samples": [asdict(s) for s in samples]}, indent=2)
        )
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
