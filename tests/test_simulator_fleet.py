"""A fleet of projects in the simulator (ProjectFleet): thousands of tenants hosted for nothing
until a request touches one, then seeded once, with the same keys and answers as explicit projects."""

import time

import httpx

from golioth_assets.simulator import ProjectFleet, SimulatorServer


def test_a_fleet_of_thousands_starts_at_once_and_seeds_a_project_on_first_use():
    fleet = ProjectFleet(count=5000, devices=200, project_prefix="tenant-", key_prefix="tenant-key-")
    started = time.perf_counter()
    with SimulatorServer(fleets=[fleet]).start() as sim:
        assert time.perf_counter() - started < 5  # a million devices would take far longer to seed
        assert sim.state.projects == {}  # nothing seeded yet
        url = f"{sim.url}/v1/projects/{fleet.project_id(4321)}/devices?perPage=100"
        with httpx.Client() as http:
            listed = http.get(url, headers={"x-api-key": fleet.api_key(4321)}).json()
            assert listed["total"] == 200 and len(listed["list"]) == 100
            again = http.get(url, headers={"x-api-key": fleet.api_key(4321)}).json()
            assert again["list"] == listed["list"]  # seeded once: the same devices
            # Keys are per project, as for explicit ones: another tenant's key is refused.
            other = http.get(url, headers={"x-api-key": fleet.api_key(7)})
            assert other.status_code == 403
            beyond = http.get(url, headers={"x-api-key": "tenant-key-05000"})  # past the fleet's count
            assert beyond.status_code == 401
        assert set(sim.state.projects) == {fleet.project_id(4321), fleet.project_id(7)}
