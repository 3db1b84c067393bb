"""Local churn → Golioth through the daemon: under a steady stream of edits in the local table, does
every edit reach Golioth, how far behind does Golioth lag, and how fast does the queue drain?

    .venv/bin/python benchmarks/local_churn.py [--rate 200] [--seconds 60] [--devices 200]

The same live path as benchmarks/local_to_golioth.py (capture trigger → outbox → inbox sensor in
dagster-daemon → targeted runs, one per organization at a time), with an editor renaming random
devices at `--rate` edits/s (one transaction each, as many app requests would) for `--seconds`. A
watcher lists the Golioth project every 0.5 s. An edit counts as reached when Golioth shows it or
a later edit of the same device (the later value supersedes it, as it should).

Issue 12's targets: every edit reaches Golioth (and its change is queued exactly once), the lag's
p95 stays ≤ 10 s, and the queue drains within 30 s after the churn stops. Exits 1 on a miss.
Figures go to docs/benchmarks.md, "Local churn → Golioth".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
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
os.environ.setdefault("GOLIOTH_SYNC_ALLOW_LOOPBACK_HTTP", "1")

from benchmarks.daemon_harness import Child, clean_up, percentile, venv_bin  # noqa: E402
from benchmarks.local_to_golioth import KEY_ENV, ORG, PROJECT, _linked_devices, _setup  # noqa: E402
from golioth_assets.store import database  # noqa: E402

TARGET_LAG_P95_S, TARGET_DRAIN_S = 10.0, 30.0
PREFIX = "churn-"


class Watcher(threading.Thread):
    """Lists the project every `interval` s; remembers when each device first showed each edit."""

    def __init__(self, url: str, interval: float = 0.5):
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=url, headers={"x-api-key": os.environ[KEY_ENV]}, timeout=30)
        self.interval = interval
        self.seen: dict[str, list[tuple[float, int]]] = {}  # golioth id → [(time, edit seq)], rising
        self.stop = threading.Event()

    def latest(self, golioth_id: str) -> int:
        times = self.seen.get(golioth_id)
        return times[-1][1] if times else -1

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            page = 0
            while True:
                body = self.client.get(f"/v1/projects/{PROJECT}/devices", params={"page": page, "perPage": 100}).json()
                for device in body.get("list", []):
                    name = device["name"]
                    if name.startswith(PREFIX):
                        seq = int(name[len(PREFIX) :])
                        if seq > self.latest(device["id"]):
                            self.seen.setdefault(device["id"], []).append((now, seq))
                page += 1
                if page * 100 >= body["total"]:
                    break
            self.stop.wait(self.interval)

    def reached_at(self, golioth_id: str, seq: int) -> float | None:
        for at, shown in self.seen.get(golioth_id, []):
            if shown >= seq:
                return at
        return None


def churn(engine, devices: list[str], rate: float, seconds: float) -> list[tuple[str, int, float]]:
    """Rename random devices at `rate` per second; returns (device, edit seq, commit time)."""
    edits = []
    started = time.monotonic()
    total = int(rate * seconds)
    with engine.connect() as conn:
        for seq in range(total):
            pause = started + seq / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing the load, not synchronizing
            device = random.choice(devices)
            with conn.begin():
                conn.execute(
                    sa.text("UPDATE devices SET name = :n WHERE id = CAST(:d AS uuid)"),
                    {"n": f"{PREFIX}{seq}", "d": device},
                )
            edits.append((device, seq, time.time()))
    return edits


def _outbox_left(engine) -> int:
    """Captured changes not yet copied into the inbox."""
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM golioth_sync.changes")).scalar_one()


def _queued_changes(engine) -> tuple[int, int]:
    """(inbox events of captured changes, distinct change identities among them)."""
    with engine.connect() as conn:
        return tuple(
            conn.execute(
                sa.text(
                    "SELECT count(*), count(DISTINCT event_id) FROM webhook_events "
                    "WHERE organization_id = :o AND source = 'local_capture'"
                ),
                {"o": ORG},
            ).one()
        )


def measure(args: argparse.Namespace) -> dict:
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
    daemon = simulator = watcher = None
    try:
        engine, simulator, service = _setup(args, home)
        (home / "logs").mkdir()
        daemon = Child(
            "dagster-daemon", [venv_bin("dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")], home / "logs"
        )
        linked = _linked_devices(engine, service.id)
        watcher = Watcher(simulator.url)
        watcher.start()
        random.seed(args.seed)
        load_before = os.getloadavg()
        edits = churn(engine, sorted(linked), args.rate, args.seconds)
        churn_end = time.time()
        last = {}
        for device, seq, _ in edits:
            last[device] = seq
        deadline = time.monotonic() + args.timeout
        while any(watcher.latest(linked[d]) < s for d, s in last.items()) and time.monotonic() < deadline:
            time.sleep(0.25)
        caught_up = [watcher.reached_at(linked[d], s) for d, s in last.items()]
        drained = max(caught_up) - churn_end if all(t is not None for t in caught_up) else None
        lags = [t - at for d, s, at in edits if (t := watcher.reached_at(linked[d], s)) is not None]
        # A run reads each device as it is then, so Golioth can show an edit whose captured change
        # the sensor has not copied yet: count the inbox once the outbox is empty.
        while _outbox_left(engine) and time.monotonic() < deadline:
            time.sleep(0.25)
        queued, distinct = _queued_changes(engine)
        return {
            "edits": len(edits),
            "rate_achieved": len(edits) / (edits[-1][2] - edits[0][2]) if len(edits) > 1 else 0.0,
            "devices_edited": len(last),
            "reached": len(lags),
            "lag_p50_s": percentile(lags, 0.5) if lags else None,
            "lag_p95_s": percentile(lags, 0.95) if lags else None,
            "drain_s": drained,
            "queued_changes": queued,
            "distinct_changes": distinct,
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "cpus": os.cpu_count(),
        }
    finally:
        if watcher is not None:
            watcher.stop.set()
            watcher.join(10)
        clean_up([simulator, daemon], app_url, dagster_url, home)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="edits per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the churn lasts")
    parser.add_argument("--devices", type=int, default=200, help="devices in the simulated project")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the queue to drain")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args()
    r = measure(args)
    print(
        f"\n{r['edits']} edits at {r['rate_achieved']:.0f}/s over {r['devices_edited']} devices; load average "
        f"{r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after, on {r['cpus']} CPUs"
    )
    fmt = lambda v: "n/a" if v is None else f"{v:.1f} s"  # noqa: E731
    print(f"reached Golioth: {r['reached']} of {r['edits']} edits")
    print(f"lag p50 {fmt(r['lag_p50_s'])}, p95 {fmt(r['lag_p95_s'])}; drained {fmt(r['drain_s'])} after the churn")
    print(
        f"changes queued in the inbox: {r['queued_changes']} ({r['distinct_changes']} distinct) for {r['edits']} edits"
    )
    missed = []
    if r["reached"] < r["edits"]:
        missed.append(f"{r['edits'] - r['reached']} edits never reached Golioth")
    if r["queued_changes"] != r["edits"] or r["distinct_changes"] != r["edits"]:
        missed.append("not every edit was queued exactly once")
    if r["lag_p95_s"] is None or r["lag_p95_s"] > TARGET_LAG_P95_S:
        missed.append(f"lag p95 {fmt(r['lag_p95_s'])} > {TARGET_LAG_P95_S:.0f} s")
    if r["drain_s"] is None or r["drain_s"] > TARGET_DRAIN_S:
        missed.append(f"drain {fmt(r['drain_s'])} > {TARGET_DRAIN_S:.0f} s")
    print("targets: " + ("MISSED: " + "; ".join(missed) if missed else "met"))
    if args.json:
        args.json.write_text(json.dumps({**r, "missed": missed}, indent=2))
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
