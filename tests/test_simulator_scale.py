"""Scale: 100k seeded devices, paginated end to end. Slow: run with `-m slow`.

The timings are printed, not asserted: speed targets live in benchmarks/ (sync_full.py measures
the 1,000-page fetch), where a loaded CI machine cannot fail them.
"""

from __future__ import annotations

import time

import httpx
import pytest

from golioth_assets.simulator import ProjectSpec, SimulatorServer
from golioth_assets.simulator.state import SimState

DEVICES = 100_000


@pytest.mark.slow
def test_seeding_100k_devices_is_complete_and_repeatable():
    started = time.perf_counter()
    state = SimState([ProjectSpec("big", "big-key", devices=DEVICES, seed=42)])
    print(f"\nseeded {DEVICES} devices in {time.perf_counter() - started:.2f}s")
    devices = state.projects["big"].devices
    assert len(devices) == DEVICES
    # The same seed gives the same fleet: a restarted demo simulator matches the database it synced.
    again = SimState([ProjectSpec("big", "big-key", devices=DEVICES, seed=42)]).projects["big"].devices
    assert list(again) == list(devices)


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
