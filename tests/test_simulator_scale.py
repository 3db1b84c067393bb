"""Scale: 100k seeded devices, paginated end to end. Slow: run with `-m slow`."""

from __future__ import annotations

import time

import httpx
import pytest

from golioth_assets.simulator import ProjectSpec, SimulatorServer
from golioth_assets.simulator.state import SimState

DEVICES = 100_000


@pytest.mark.slow
def test_seeding_100k_devices_takes_seconds_at_most():
    started = time.perf_counter()
    state = SimState([ProjectSpec("big", "big-key", devices=DEVICES, seed=42)])
    elapsed = time.perf_counter() - started
    print(f"\nseeded {DEVICES} devices in {elapsed:.2f}s")
    assert len(state.projects["big"].devices) == DEVICES
    assert elapsed < 3.0


@pytest.mark.slow
def test_full_pagination_of_100k_devices():
    sim = SimulatorServer(projects=[ProjectSpec("big", "big-key", devices=DEVICES, seed=42)])
    started = time.perf_counter()
    sim.start_subprocess()
    startup = time.perf_counter() - started
    try:
        with httpx.Client(base_url=sim.url, headers={"x-api-key": "big-key"}) as client:
            timings = []
            for _ in range(2):  # cold (serializes each device once), then warm (cached JSON)
                ids: set[str] = set()
                started = time.perf_counter()
                for page in range(DEVICES // 100):
                    body = client.get("/v1/projects/big/devices", params={"page": page, "perPage": 100}).json()
                    assert body["total"] == DEVICES and len(body["list"]) == 100
                    ids.update(d["id"] for d in body["list"])
                timings.append(time.perf_counter() - started)
                assert len(ids) == DEVICES
        stats = sim.control.stats()
    finally:
        sim.stop()
    print(f"\nsubprocess start incl. seeding: {startup:.2f}s")
    print(f"1000 pages: cold {timings[0]:.2f}s, warm {timings[1]:.2f}s")
    assert stats["total"] == 2 * DEVICES // 100
    assert timings[1] < 10.0
