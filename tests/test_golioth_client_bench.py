"""Client throughput against a simulator subprocess (its own GIL). Slow: run with `-m slow -s`."""

from __future__ import annotations

import time

import pytest

from golioth_assets.golioth import DeviceUpdate, GoliothClient
from golioth_assets.simulator import ProjectSpec, SimulatorServer

DEVICES = 100_000


@pytest.fixture(scope="module")
def big_simulator():
    sim = SimulatorServer(projects=[ProjectSpec("big", "big-key", devices=DEVICES, seed=42)])
    sim.start_subprocess()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.mark.slow
def test_list_100k_devices_and_1000_patches(big_simulator):
    with GoliothClient("big-key", "big", base_url=big_simulator.url, max_concurrency=16) as client:
        started = time.perf_counter()
        client.list_devices()  # cold: the simulator serializes each device once
        cold = time.perf_counter() - started
        started = time.perf_counter()
        devices = client.list_devices()
        warm = time.perf_counter() - started
        started = time.perf_counter()
        serial = sum(len(page.list) for page in client.iter_device_pages())
        serial_time = time.perf_counter() - started

        targets = devices[:1000]
        started = time.perf_counter()
        results = client.run_many(
            (d.id, lambda d=d: client.update_device(d.id, DeviceUpdate(enabled=not d.enabled))) for d in targets
        )
        patch_time = time.perf_counter() - started
        stats = client.stats.as_metadata()
    print(
        f"\nlist 100k (1000 pages, 16 threads): cold {cold:.2f}s, warm {warm:.2f}s; "
        f"serial pages {serial_time:.2f}s; 1000 PATCHes: {patch_time:.2f}s; {stats}"
    )
    assert len(devices) == DEVICES == serial and len({d.id for d in devices}) == DEVICES
    assert not any(isinstance(r, Exception) for r in results.values())
    assert stats["golioth_retries"] == 0 and stats["golioth_status_200"] == 3000 + 1000
    assert warm < 30 and patch_time < 20  # generous: shared CI machines; typical numbers printed


@pytest.mark.slow
def test_concurrency_hides_network_latency(big_simulator):
    # The real API is ~50-150ms away; 20ms of simulated latency per request shows the effect.
    big_simulator.control.set_faults(latency_ms=20, project_id="big")
    try:
        with GoliothClient("big-key", "big", base_url=big_simulator.url) as client:
            started = time.perf_counter()
            pages = client.iter_device_pages()
            for _ in range(100):
                next(pages)
            serial_100 = time.perf_counter() - started
            started = time.perf_counter()
            devices = client.list_devices()
            concurrent = time.perf_counter() - started
    finally:
        big_simulator.control.clear_faults("big")
    print(
        f"\n20ms latency: serial {serial_100:.2f}s per 100 pages (~{serial_100 * 10:.0f}s for "
        f"1000); concurrent list of 1000 pages {concurrent:.2f}s"
    )
    assert len(devices) == DEVICES
    assert concurrent < serial_100 * 10 / 2  # at least 2x better than serial; typically ~5x+
