"""Webhook → local table through the sensor: how long after an edit in the Golioth console does the
product's `devices` table show it, when it travels the whole event path?

    .venv/bin/python benchmarks/webhook_to_local.py [--events 10] [--devices 500]

The path, every piece real and in its own process as in production:

    simulator console edit ─► signed device.updated event ─► `golioth-sync webhooks serve`
    ─► webhook_events (pending) ─► webhook_inbox_sensor (dagster-daemon; an idle tick watches) claims it
    ─► targeted sync run (queued, dequeued, launched in a run worker) ─► local_device_writes
    ─► devices.name changed

Needs a PostgreSQL server (BENCH_DATABASE_URL, default the system server at 127.0.0.1:5432): it
creates two databases (ours and Dagster's) and drops them at the end. Dagster runs with this
project's dagster.yaml and workspace.yaml, as `golioth-sync dev` runs it. Events go one at a time,
each after a random 0–5 s pause so they land at every phase of the sensor's 5 s interval.

Figures go to docs/benchmarks.md, "Webhook → local table through the sensor".
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import secrets
import socket
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
SECRET_ENV = "GOLIOTH_BENCH_SIGNING_KEY"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, child: Child, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.alive():
            raise SystemExit(f"{child.name} exited early; see its log")
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"{url} did not answer within {timeout_s:.0f} s")


@dataclass
class Sample:
    device: str
    total_s: float  # console edit → the devices row shows it
    to_inbox_s: float  # edit → webhook_events row (signed delivery, verify, commit)
    to_claim_s: float  # inbox → claimed by the sensor (waiting for its next tick)
    to_run_start_s: float  # claim → run worker started (queue, dequeue, launch, process start)
    to_visible_s: float  # run start → row visible (the targeted sync's steps up to local writes)
    run_s: float  # the whole run, start to end (steps after the local write included)


def _local_name(engine, service_id: int, golioth_id: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT d.name FROM devices d JOIN device_service_assignments a ON a.device_id = d.id::text "
                "WHERE a.service_id = :s AND a.golioth_device_id = :g"
            ),
            {"s": service_id, "g": golioth_id},
        ).scalar()


def _event(engine, golioth_id: str, after_id: int) -> dict | None:
    with engine.connect() as conn:
        row = (
            conn.execute(
                sa.text(
                    "SELECT id, extract(epoch FROM received_at) AS received, extract(epoch FROM claimed_at) AS claimed, "
                    "claimed_by, status FROM webhook_events WHERE organization_id = :o AND golioth_device_id = :g "
                    "AND event_type = 'device.updated' AND id > :a ORDER BY id DESC LIMIT 1"
                ),
                {"o": ORG, "g": golioth_id, "a": after_id},
            )
            .mappings()
            .first()
        )
    return dict(row) if row else None


def _processed_claim(engine, golioth_id: str, after_id: int, timeout_s: float = 60.0) -> dict:
    """The event's row once its run marked it processed (claimed_at stays, claimed_by names the run)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        event = _event(engine, golioth_id, after_id)
        if event and event["status"] == "processed":
            return event
        time.sleep(0.2)
    raise SystemExit(f"the event of {golioth_id} was not processed within {timeout_s:.0f} s: {event}")


def _run_times(instance, claim: str) -> tuple[float, float]:
    import dagster as dg

    from golioth_assets.core.vocabulary import RunTag

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        records = instance.get_run_records(dg.RunsFilter(tags={RunTag.claim: claim}), limit=1)
        if records and records[0].end_time:
            return records[0].start_time, records[0].end_time
        time.sleep(0.5)
    raise SystemExit(f"no finished run for claim {claim}")


def measure(args: argparse.Namespace) -> tuple[list[Sample], dict]:
    import dagster as dg

    from golioth_assets.cli.dagster_run import run_sync_job
    from golioth_assets.cli.runtime import WORKSPACE_YAML, prepare
    from golioth_assets.simulator import ProjectSpec, SimulatorServer
    from golioth_assets.store import services

    server = database.normalize_url(args.database_url)
    name = f"gs_bench_{uuid.uuid4().hex[:8]}"
    app_url, dagster_url = server.set(database=name), server.set(database=f"{name}_dagster")
    home = Path(tempfile.mkdtemp(prefix="golioth-bench-"))
    os.environ.update(
        GOLIOTH_SYNC_HOME=str(home),
        DATABASE_URL=app_url.render_as_string(hide_password=False),
        DAGSTER_DATABASE_URL=dagster_url.render_as_string(hide_password=False),
        **{KEY_ENV: secrets.token_hex(24), SECRET_ENV: "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()},
    )
    children: list[Child] = []
    simulator = None
    try:
        runtime = prepare()  # databases, migrations, DAGSTER_HOME with the project's dagster.yaml
        engine = runtime.engine
        simulator = SimulatorServer(
            projects=[ProjectSpec(PROJECT, os.environ[KEY_ENV], devices=args.devices, seed=11)]
        ).start_subprocess()
        with engine.begin() as conn:
            service = services.upsert_service(
                conn,
                services.ServiceSettings(
                    organization_id=ORG,
                    name="benchmark fleet",
                    project_id=PROJECT,
                    base_url=simulator.url,
                    golioth_organization_id="sim-org",
                    api_key_env=KEY_ENV,
                    interval_seconds=3600,
                    webhook_enabled=True,
                    webhook_signing_key_env=SECRET_ENV,
                ),
            )
        # The first full sync links every device (and keeps the hourly schedule quiet meanwhile).
        first = run_sync_job(ORG, trigger="benchmark")
        if not first.success:
            raise SystemExit(f"the first sync failed: {first.error}")

        logs = home / "logs"
        logs.mkdir()
        port = _free_port()
        receiver = Child("webhooks", [venv_bin("golioth-sync"), "webhooks", "serve", "--port", str(port)], logs)
        children.append(receiver)
        children.append(Child("dagster-daemon", [venv_bin("dagster-daemon"), "run", "-w", str(WORKSPACE_YAML)], logs))
        _wait_http(f"http://127.0.0.1:{port}/healthz", receiver, 60)
        simulator.control.set_events(
            PROJECT, f"http://127.0.0.1:{port}/webhooks/golioth/{service.id}", os.environ[SECRET_ENV]
        )

        with httpx.Client(base_url=simulator.url, headers={"x-api-key": os.environ[KEY_ENV]}) as client:
            ids = [
                d["id"] for d in client.get(f"/v1/projects/{PROJECT}/devices", params={"perPage": 100}).json()["list"]
            ]
        random.seed(args.seed)
        devices = random.sample(ids, args.events + 1)

        samples: list[Sample] = []
        last_event_id = 0
        with dg.DagsterInstance.get() as instance:
            for i, device in enumerate(devices):
                new_name = f"bench-{i}-{uuid.uuid4().hex[:6]}"
                started = time.time()
                simulator.control.console_update(PROJECT, device, name=new_name)
                deadline = time.monotonic() + args.timeout
                while _local_name(engine, service.id, device) != new_name:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{device} never showed {new_name!r} locally (see {logs})")
                    time.sleep(0.02)
                visible = time.time()
                event = _processed_claim(engine, device, last_event_id)
                last_event_id = event["id"]
                run_start, run_end = _run_times(instance, event["claimed_by"])
                sample = Sample(
                    device=device,
                    total_s=visible - started,
                    to_inbox_s=float(event["received"]) - started,
                    to_claim_s=float(event["claimed"]) - float(event["received"]),
                    to_run_start_s=run_start - float(event["claimed"]),
                    to_visible_s=visible - run_start,
                    run_s=run_end - run_start,
                )
                label = "warm-up" if i == 0 else f"event {i}"
                print(
                    f"{label:>9}: {sample.total_s:6.2f} s  (inbox {sample.to_inbox_s:.2f}, claim {sample.to_claim_s:.2f}, "
                    f"run start {sample.to_run_start_s:.2f}, visible {sample.to_visible_s:.2f}; run {sample.run_s:.2f})",
                    flush=True,
                )
                if i:  # the first event pays for the daemon's code server start-up
                    samples.append(sample)
                # Wait for the run to be over and a random part of the sensor's 5 s interval.
                time.sleep(max(0.0, run_end - time.time()) + random.uniform(0, 5))
        info = {"devices": args.devices, "events": len(samples), "loadavg": os.getloadavg(), "cpus": os.cpu_count()}
        return samples, info
    finally:
        clean_up([simulator, *children], app_url, dagster_url, home)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10, help="measured events (one warm-up event comes first)")
    parser.add_argument("--devices", type=int, default=500, help="devices in the simulated project")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for one event")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the samples here")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args()
    samples, info = measure(args)

    print(
        f"\n{info['events']} events, {info['devices']} devices, load average {info['loadavg'][0]:.1f} on {info['cpus']} CPUs"
    )
    print("| segment | p50 s | p95 s | max s |\n|---|---|---|---|")
    for field, label in [
        ("total_s", "**console edit → local table**"),
        ("to_inbox_s", "edit → stored in webhook_events"),
        ("to_claim_s", "stored → claimed by the sensor"),
        ("to_run_start_s", "claimed → run worker started"),
        ("to_visible_s", "run started → row visible"),
        ("run_s", "whole targeted run"),
    ]:
        values = [getattr(s, field) for s in samples]
        print(f"| {label} | {percentile(values, 0.5):.1f} | {percentile(values, 0.95):.1f} | {max(values):.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"info": info, "samples": [asdict(s) for s in samples]}, indent=2))


if __name__ == "__main__":
    main()
