"""Webhook ingest benchmark: sustained rate, overload refusal, delivery → visible latency.

    .venv/bin/python benchmarks/webhook_ingest.py [--workers 2] [--duration 20]

Needs `wrk` (apt-get install -y wrk) and a PostgreSQL server (BENCH_DATABASE_URL, default the
system server at 127.0.0.1:5432); it creates and drops a database of its own. The receiver runs
as `golioth-sync webhooks serve` in a subprocess, exactly as in production.

Phases (figures go to docs/benchmarks.md, "Webhook ingest"):
1. closed loop at 50/100/200 connections: capacity (latency there is just connections ÷ rate);
2. paced ladder at 200 connections (2000/s, 2500/s, ...): the sustainable rate S is the highest
   whose p99 stays ≤ 50 ms with ≥ 97 % accepted. The target is 2000/s (issue 12): a miss there is
   printed (MISSED) and the benchmark exits 1; the later phases then pace at 2000/s;
3. paced at 2×S: the excess must be refused with 503 + Retry-After, and the rows must match the
   2xx answers: 2xx ≤ rows ≤ 2xx + requests wrk cut off in flight when the phase ended;
4. signed Standard Webhooks events (pre-signed, HMAC checked by the receiver), paced at S;
5. delivery → observed field visible in the devices table, measured under background load.

The machine is shared: next to every phase goes how many cores other processes used meanwhile.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from golioth_assets.store import database, migrate  # noqa: E402
from golioth_assets.webhooks.testing import make_webhook_service  # noqa: E402
from golioth_assets.webhooks.verify import sign  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from daemon_harness import drop_database  # noqa: E402

LUA = Path(__file__).with_name("webhook_wrk.lua")
SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()  # signs the Standard Webhooks events
SECRET_ENV = "GOLIOTH_BENCH_SIGNING_KEY"
PIPELINE_SECRET = secrets.token_hex(32)  # the Golioth pipelines' header: a secret of its own
PIPELINE_SECRET_ENV = "GOLIOTH_BENCH_PIPELINE_SECRET"
P99_TARGET_MS = 50.0
TARGET_RATE = 2000  # issue 12: paced 2,000 events/s with p99 <= 50 ms, all of them accepted
MIN_ACCEPTED_SHARE = 0.97  # of the paced rate (a refusal is a miss too)


def paced_miss(r: dict, rate: int) -> str | None:
    """Why a paced phase missed the target, or None."""
    p99_ms = r["p99_us"] / 1000
    if p99_ms > P99_TARGET_MS:
        return f"p99 {p99_ms:.1f} ms > {P99_TARGET_MS:.0f} ms at {rate}/s"
    if r["accepted_rps"] < MIN_ACCEPTED_SHARE * rate:
        return f"accepted {r['accepted_rps']:.0f}/s < {MIN_ACCEPTED_SHARE:.0%} of {rate}/s"
    return None


class CpuMeter:
    """How many cores the rest of the machine used during a phase: the other tenants' share.

    Ours is the receiver's process tree, wrk, and the PostgreSQL backends connected to the bench
    database; everything else busy on the machine is someone else's (the machine is shared).
    """

    def __init__(self, engine: sa.engine.Engine, receiver_pid: int):
        self.engine, self.receiver_pid = engine, receiver_pid
        self.tick = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _busy_total() -> float:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields[:8]) - idle

    def _proc_ticks(self, pid: int) -> int:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return int(stat[11]) + int(stat[12])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return 0

    def _ours(self) -> list[int]:
        pids = [self.receiver_pid]
        children = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,comm="], capture_output=True, text=True).stdout
        rows = [line.split(None, 2) for line in children.splitlines() if line.strip()]
        frontier = {self.receiver_pid}
        while frontier:
            frontier = {int(p) for p, pp, _ in rows if int(pp) in frontier}
            pids += frontier
        pids += [int(p) for p, _, comm in rows if comm.strip() == "wrk"]
        with self.engine.connect() as conn:
            pids += (
                conn.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"))
                .scalars()
                .all()
            )
        return pids

    def start(self) -> None:
        self.t0, self.busy0 = time.monotonic(), self._busy_total()
        self.pids = self._ours()
        self.ours0 = {p: self._proc_ticks(p) for p in self.pids}

    def others_cores(self) -> float:
        pids = set(self.pids) | set(self._ours())
        ours = sum(self._proc_ticks(p) - self.ours0.get(p, 0) for p in pids)
        elapsed = time.monotonic() - self.t0
        return max(0.0, (self._busy_total() - self.busy0 - ours) / self.tick / elapsed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_database(server: str, devices: int) -> tuple[sa.engine.URL, int, str]:
    url = database.normalize_url(server).set(database=f"gs_bench_{uuid.uuid4().hex[:8]}")
    database.ensure_database_exists(url)
    engine = database.engine_for(url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO organizations (id, name) VALUES ('bench', 'bench')"))
    service_id = make_webhook_service(
        engine, "bench", pipeline_secret_env=PIPELINE_SECRET_ENV, signing_key_env=SECRET_ENV, project_id="bench"
    )
    with engine.begin() as conn:
        # Set-based: one statement for all devices, one for all links.
        conn.execute(
            sa.text(
                "INSERT INTO devices (organization_id, name) "
                "SELECT 'bench', 'bench-' || g FROM generate_series(0, :n - 1) g UNION ALL SELECT 'bench', 'bench-probe'"
            ),
            {"n": devices},
        )
        conn.execute(
            sa.text(
                "INSERT INTO device_service_assignments (service_id, device_id, golioth_device_id) "
                "SELECT :s, id, name FROM devices WHERE organization_id = 'bench'"
            ),
            {"s": service_id},
        )
        probe = conn.execute(sa.text("SELECT id FROM devices WHERE name = 'bench-probe'")).scalar_one()
    with engine.connect() as conn:
        # Fresh tables have no statistics yet; a production database does.
        conn.execute(sa.text("ANALYZE devices, device_service_assignments, webhook_events"))
        conn.commit()
    return url, service_id, str(probe)


class Receiver:
    def __init__(self, url: sa.engine.URL, port: int, workers: int, extra: list[str]):
        env = {
            **os.environ,
            "DATABASE_URL": url.render_as_string(hide_password=False),
            SECRET_ENV: SECRET,
            PIPELINE_SECRET_ENV: PIPELINE_SECRET,
        }
        cmd = [
            sys.executable,
            "-c",
            "from golioth_assets.cli.webhooks import webhooks; webhooks()",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            *extra,
        ]
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("receiver did not come up")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own session: the server and its workers
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def run_wrk(
    base: str,
    service_id: int,
    *,
    connections: int,
    duration: int,
    prefix: str,
    devices: int,
    rate: float = 0,
    signed_file: str | None = None,
) -> dict:
    env = {
        **os.environ,
        "BENCH_SERVICE": str(service_id),
        "BENCH_SECRET": PIPELINE_SECRET,
        "BENCH_PREFIX": prefix,
        "BENCH_DEVICES": str(devices),
        "BENCH_RATE": str(rate),
        "BENCH_THREADS": "1",
    }
    if signed_file:
        env["BENCH_SIGNED"] = signed_file
    # One wrk thread: wrk is C and LuaJIT, one core's slice is plenty and leaves the rest to the receiver.
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", str(LUA), base]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH_RESULT "))
    result = json.loads(line.removeprefix("BENCH_RESULT "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["accepted"] = sum(n for code, n in result["statuses"].items() if code.startswith("2"))
    result["accepted_rps"] = result["accepted"] / (result["duration_us"] / 1e6)
    result["refused"] = result["statuses"].get("503", 0) + result["statuses"].get("429", 0)
    return result


def rows_with_prefix(engine: sa.engine.Engine, service_id: int, prefix: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT count(*) FROM webhook_events WHERE service_id = :s AND event_id LIKE :p"),
            {"s": service_id, "p": prefix + "-%"},
        ).scalar_one()


def presign(path: Path, prefix: str, count: int, devices: int) -> None:
    now = int(time.time())
    with path.open("w") as f:
        for i in range(count):
            msg_id = f"{prefix}-{i}"
            kind = ("device.data", "device.online", "device.offline")[i % 3]
            body = json.dumps(
                {"type": kind, "device_id": f"bench-{i % devices}", "data": {"battery": i % 100}}, separators=(",", ":")
            ).encode()
            f.write(f"{msg_id}\t{now}\t{sign(body, msg_id, now, SECRET)}\t{body.decode()}\n")


def probe_visibility(base: str, service_id: int, engine: sa.engine.Engine, probe_device: str, samples: int) -> dict:
    """Send an observation, then poll the devices table until it shows: delivery → visible."""
    ack, visible = [], []
    raw = engine.raw_connection()
    raw.autocommit = True  # psycopg2 attribute; each poll sees the latest commit
    cur = raw.cursor()
    with httpx.Client(base_url=base, timeout=10) as client:
        for k in range(samples):
            body = json.dumps({"data": {"probe": k}, "device_id": "bench-probe", "project_id": "bench"}).encode()
            headers = {
                "content-type": "application/json",
                "ce-source": "bench-probe",
                "ce-subject": "bench",
                "ce-type": "io.golioth.data.v1/.s/",
                "ce-id": f"probe-{uuid.uuid4().hex}",
                "x-golioth-sync-secret": PIPELINE_SECRET,
            }
            start = time.perf_counter()
            response = client.post(f"/webhooks/golioth/{service_id}", content=body, headers=headers)
            acked = time.perf_counter()
            if response.status_code != 202:
                continue
            while True:
                cur.execute("SELECT reported_state->>'probe' FROM devices WHERE id = %s", (probe_device,))
                if cur.fetchone()[0] == str(k):
                    break
            seen = time.perf_counter()
            ack.append((acked - start) * 1000)
            visible.append((seen - start) * 1000)
            time.sleep(0.05)
    raw.close()
    return {
        "samples": len(visible),
        "ack_p50_ms": pct(ack, 50),
        "visible_p50_ms": pct(visible, 50),
        "visible_p95_ms": pct(visible, 95),
        "visible_max_ms": max(visible),
    }


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def fmt_phase(name: str, r: dict, rows: int, load: float) -> str:
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
    cut_off = r["sent"] - r["requests"]
    consistent = r["accepted"] <= rows <= r["accepted"] + cut_off
    return (
        f"| {name} | {load:.1f} | {r['rps']:.0f} | {r['accepted_rps']:.0f} | {r['p50_us'] / 1000:.1f} "
        f"| {r['p99_us'] / 1000:.1f} | {r['max_us'] / 1000:.0f} | {statuses} | {rows} | {cut_off} "
        f"| {'yes' if consistent else 'NO'} | {sum(r['errors'].values())} | {r['missing_retry_after']} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=int, default=20, help="seconds per phase")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--connections", default="50,100,200")
    parser.add_argument("--rate", type=int, default=0, help="sustainable rate to pace at (default: measured)")
    parser.add_argument("--probe-samples", type=int, default=200)
    parser.add_argument("--server-arg", action="append", default=[], help="extra `webhooks serve` option")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()

    server = os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    url, service_id, probe_device = prepare_database(server, args.devices)
    engine = database.engine_for(url)
    receiver = Receiver(url, free_port(), args.workers, args.server_arg)
    results: dict = {"workers": args.workers, "server_args": args.server_arg, "phases": {}}
    meter = CpuMeter(engine, receiver.proc.pid)
    lines: list[str] = []

    def phase(name: str, signed_file: str | None = None, prefix: str | None = None, **kwargs) -> dict:
        prefix = prefix or f"p{len(results['phases'])}-{uuid.uuid4().hex[:6]}"
        meter.start()
        r = run_wrk(receiver.base, service_id, prefix=prefix, devices=args.devices, signed_file=signed_file, **kwargs)
        load = meter.others_cores()
        time.sleep(0.5)  # let the last commits land before counting
        rows = rows_with_prefix(engine, service_id, prefix)
        results["phases"][name] = {**r, "rows": rows, "others_cores": load}
        lines.append(fmt_phase(name, r, rows, load))
        print(lines[-1], flush=True)
        return r

    try:
        run_wrk(receiver.base, service_id, connections=50, duration=5, prefix="warmup", devices=args.devices)
        for c in (int(x) for x in args.connections.split(",")):
            phase(f"closed loop, {c} connections", connections=c, duration=args.duration)
        sustainable = args.rate
        if sustainable:  # the ladder is skipped: the target rate still gets its own phase
            at_target = phase(
                f"paced {TARGET_RATE}/s, 200 connections", connections=200, duration=args.duration, rate=TARGET_RATE
            )
        else:
            for rate in range(TARGET_RATE, 6001, 500):
                r = phase(f"paced {rate}/s, 200 connections", connections=200, duration=args.duration, rate=rate)
                if rate == TARGET_RATE:
                    at_target = r
                if paced_miss(r, rate):
                    break
                sustainable = rate
        if not sustainable:  # not even the target rate: the later phases pace at it, and say so
            print(f"no paced rate from {TARGET_RATE}/s up met the target: the phases below pace at {TARGET_RATE}/s")
            sustainable = TARGET_RATE
        results["target"] = {"rate": TARGET_RATE, "p99_ms": P99_TARGET_MS, "missed": paced_miss(at_target, TARGET_RATE)}
        results["sustainable_rps"] = sustainable
        phase(
            f"paced 2×S = {2 * sustainable}/s, 200 connections",
            connections=200,
            duration=args.duration,
            rate=2 * sustainable,
        )

        with tempfile.TemporaryDirectory() as tmp:
            signed = Path(tmp) / "signed.tsv"
            prefix = f"signed-{uuid.uuid4().hex[:6]}"
            presign(signed, prefix, int(sustainable * args.duration * 1.3), args.devices)
            phase(
                f"signed events, paced {sustainable}/s, 200 connections",
                signed_file=str(signed),
                prefix=prefix,
                connections=200,
                duration=args.duration,
                rate=sustainable,
            )

        # Visibility under background load at half the sustainable rate.
        background = threading.Thread(
            target=run_wrk,
            args=(receiver.base, service_id),
            kwargs={
                "connections": 100,
                "duration": max(10, args.probe_samples // 10),
                "prefix": "background",
                "devices": args.devices,
                "rate": sustainable // 2,
            },
        )
        background.start()
        time.sleep(1)
        results["visibility"] = probe_visibility(receiver.base, service_id, engine, probe_device, args.probe_samples)
        background.join()
    finally:
        receiver.stop()
        engine.dispose()
        drop_database(url)

    v = results["visibility"]
    print()
    print(
        f"machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), workers: {args.workers}, "
        f"server args: {' '.join(args.server_arg) or '(defaults)'}"
    )
    print(
        "| phase | other tenants' CPU (cores) | answered/s | accepted/s | p50 ms | p99 ms | max ms | answers | rows "
        "| cut off in flight | 2xx ≤ rows ≤ 2xx + cut off | socket errors | 503 without Retry-After |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print(
        f"\ndelivery → visible in devices (under {results['sustainable_rps'] // 2}/s background): "
        f"p50 {v['visible_p50_ms']:.1f} ms, p95 {v['visible_p95_ms']:.1f} ms, max {v['visible_max_ms']:.1f} ms "
        f"({v['samples']} samples; ack p50 {v['ack_p50_ms']:.1f} ms)"
    )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if missed := results["target"]["missed"]:
        print(f"MISSED: paced {TARGET_RATE}/s: {missed}")
        sys.exit(1)
    print(f"target met: paced {TARGET_RATE}/s with p99 <= {P99_TARGET_MS:.0f} ms")


if __name__ == "__main__":
    main()
