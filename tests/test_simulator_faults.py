"""Fault injection, deleted projects and request statistics."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from golioth_assets.simulator import FaultConfig, SimulatorControlError
from golioth_assets.simulator.faults import FaultScope


def devices_url(project) -> str:
    return f"/v1/projects/{project.project_id}/devices"


def statuses(project, n: int, method: str = "GET") -> list[int]:
    with project.client() as c:
        return [c.request(method, devices_url(project), params={"perPage": 1}).status_code for _ in range(n)]


def test_error_rate_is_a_seeded_share_of_500s(sim_project):
    sim_project.set_faults(error_rate=0.3, seed=11)
    first = statuses(sim_project, 200)
    sim_project.set_faults(error_rate=0.3, seed=11)  # same seed: same draws
    second = statuses(sim_project, 200)
    assert set(first) == {200, 500}
    assert 0.2 < first.count(500) / 200 < 0.4
    assert first == second
    with sim_project.client() as c:
        sim_project.set_faults(error_rate=1.0)
        body = c.get(devices_url(sim_project)).json()
    assert body == {"code": 13, "message": "internal error", "details": []}


def test_unavailable_rate_answers_503(sim_project):
    sim_project.set_faults(unavailable_rate=1.0)
    with sim_project.client() as c:
        r = c.get(devices_url(sim_project))
    assert r.status_code == 503 and r.json()["code"] == 14


def test_rate_limit_counts_requests_per_whole_second():
    # The limiter's windows, on a clock the test sets (the server passes its monotonic clock).
    scope = FaultScope(FaultConfig(rate_limit_rps=5, retry_after_s=2))
    in_one_second = [scope.decide("GET", 100.0 + i * 0.08) for i in range(12)]
    next_second = scope.decide("GET", 101.0)
    assert [d.error is None for d in in_one_second] == [True] * 5 + [False] * 7
    limited = in_one_second[-1].error
    assert limited is not None and limited.http_status == 429 and limited.headers == {"Retry-After": "2"}
    assert next_second.error is None


def test_rate_limit_answers_429_with_retry_after(sim_project):
    # A limit of 0 per second refuses every request, whichever second it falls in.
    sim_project.set_faults(rate_limit_rps=0, retry_after_s=2)
    with sim_project.client() as c:
        limited = c.get(devices_url(sim_project), params={"perPage": 1})
        sim_project.clear_faults()
        after = c.get(devices_url(sim_project), params={"perPage": 1})
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2"
    assert limited.json() == {"code": 8, "message": "rate limit exceeded", "details": []}
    assert after.status_code == 200


def test_rate_limit_share(sim_project):
    sim_project.set_faults(rate_limit_share=0.5, seed=3)
    codes = statuses(sim_project, 100)
    assert set(codes) == {200, 429} and 30 < codes.count(429) < 70


def test_latency_and_spikes(sim_project):
    with sim_project.client() as c:
        sim_project.set_faults(latency_ms=1200)
        started = time.perf_counter()
        c.get(devices_url(sim_project), params={"perPage": 1})
        slow = time.perf_counter() - started
        sim_project.set_faults(latency_ms=0, spike_ms=1200, spike_probability=1.0)
        started = time.perf_counter()
        c.get(devices_url(sim_project), params={"perPage": 1})
        spiked = time.perf_counter() - started
        sim_project.clear_faults()
        started = time.perf_counter()
        c.get(devices_url(sim_project), params={"perPage": 1})
        fast = time.perf_counter() - started
    # Delays far above any stall a busy machine adds, so the bounds hold under load.
    assert slow >= 1.2 and spiked >= 1.2
    assert fast < 1.0


def test_stats_count_a_request_in_flight_until_it_is_answered(sim_project):
    # The crash tests wait for inFlight 0 before reading counts: a slowed request must show here.
    sim_project.set_faults(latency_ms=1500)
    sim_project.reset_stats()
    worker = threading.Thread(target=statuses, args=(sim_project, 1))
    worker.start()
    deadline = time.monotonic() + 10
    while (during := sim_project.stats())["inFlight"] == 0:
        assert worker.is_alive() and time.monotonic() < deadline, "the request never showed as in flight"
        time.sleep(0.02)
    worker.join(10)
    after = sim_project.stats()
    assert during["inFlight"] == 1 and during["total"] == 0  # received, not yet counted
    assert after["inFlight"] == 0 and after["total"] == 1


def test_faults_can_target_methods(sim_project):
    sim_project.set_faults(error_rate=1.0, methods=["patch"])
    with sim_project.client() as c:
        device = c.get(devices_url(sim_project), params={"perPage": 1}).json()["list"][0]
        patched = c.patch(f"{devices_url(sim_project)}/{device['id']}", json={"enabled": False})
    assert patched.status_code == 500


def test_project_faults_do_not_leak_to_other_projects(sim_project_factory):
    noisy, quiet = sim_project_factory(devices=2), sim_project_factory(devices=2)
    noisy.set_faults(error_rate=1.0)
    assert set(statuses(noisy, 5)) == {500}
    assert set(statuses(quiet, 5)) == {200}


def test_global_faults_never_touch_the_control_api(simulator, sim_project):
    try:
        simulator.set_global_faults(error_rate=1.0, latency_ms=4000)
        started = time.perf_counter()
        health = simulator.control.health()
        control_time = time.perf_counter() - started
        api = statuses(sim_project, 1)
    finally:
        simulator.set_global_faults(FaultConfig())
    assert health["ok"] is True and control_time < 2.0  # an API request would wait 4 s
    assert api == [500]


def test_unknown_fault_setting_is_rejected(sim_project):
    with pytest.raises(SimulatorControlError, match="400"):
        sim_project.set_faults(fail_sometimes=True)


def test_deleted_project(simulator, sim_project):
    with sim_project.client() as c:
        simulator.control.set_project_deleted(sim_project.project_id)
        gone = c.get(devices_url(sim_project))
        simulator.control.set_project_deleted(sim_project.project_id, mode="not_found")
        not_found = c.get(devices_url(sim_project))
        simulator.control.set_project_deleted(sim_project.project_id, deleted=False)
        back = c.get(devices_url(sim_project))
    assert gone.status_code == 401 and gone.json()["message"] == "error identifying user"
    assert not_found.status_code == 404 and not_found.json()["code"] == 5
    assert back.status_code == 200


def test_removed_project_key_stops_working(simulator, sim_project_factory):
    project = sim_project_factory(devices=1)
    simulator.control.remove_project(project.project_id)
    assert statuses(project, 1) == [401]


def test_stats_count_api_requests_by_route_and_status(simulator, sim_project):
    sim_project.reset_stats()
    with sim_project.client() as c:
        c.get(devices_url(sim_project))
        c.get(devices_url(sim_project), params={"perPage": 500})
        device = c.post(devices_url(sim_project), json={"name": "counted"}).json()["data"]
        c.get(f"{devices_url(sim_project)}/{device['id']}")
    simulator.control.health()  # control calls are not counted
    stats = sim_project.stats()
    assert stats["total"] == 4
    assert stats["byMethod"] == {"GET": 3, "POST": 1}
    assert stats["byStatus"] == {"200": 3, "400": 1}
    rows = {(r["method"], r["route"], r["status"]): r["count"] for r in stats["byRoute"]}
    assert rows[("GET", "/v1/projects/{projectId}/devices", 200)] == 1
    assert rows[("GET", "/v1/projects/{projectId}/devices", 400)] == 1
    assert rows[("GET", "/v1/projects/{projectId}/devices/{deviceId}", 200)] == 1
    sim_project.reset_stats()
    assert sim_project.stats()["total"] == 0


def test_faulted_requests_are_counted_too(sim_project):
    sim_project.reset_stats()
    sim_project.set_faults(error_rate=1.0)
    statuses(sim_project, 3)
    assert sim_project.stats()["byStatus"] == {"500": 3}


def test_faults_apply_before_auth(sim_project):
    sim_project.set_faults(rate_limit_share=1.0)
    with httpx.Client(base_url=sim_project.url) as anon:
        r = anon.get(devices_url(sim_project))
    assert r.status_code == 429
