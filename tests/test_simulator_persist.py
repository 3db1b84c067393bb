"""The simulator keeps its projects in a state file (simulator/persist.py), as the demo does in
GOLIOTH_SYNC_HOME: a restart serves what the last run left, not a freshly seeded project."""

from __future__ import annotations

import json

import httpx

from golioth_assets.simulator import ProjectSpec, SimulatorServer
from golioth_assets.simulator.persist import Saver

SPEC = dict(project_id="keep", api_key="keep-key", devices=40, seed=5)


def _api(sim: SimulatorServer, key: str = "keep-key") -> httpx.Client:
    return httpx.Client(base_url=f"{sim.url}/v1/projects/keep", headers={"x-api-key": key}, timeout=30)


def _everything(sim: SimulatorServer, key: str = "keep-key") -> dict:
    with _api(sim, key) as api:
        devices = api.get("/devices", params={"perPage": 100}).json()["list"]
        tags = api.get("/tags", params={"perPage": 100}).json()["list"]
        states = {d["id"]: api.get(f"/devices/{d['id']}/data/desired").json() for d in devices[:3]}
    return {"devices": devices, "tags": tags, "states": states}


def test_a_restart_serves_the_edits_of_the_last_run(tmp_path):
    state_file = tmp_path / "simulator" / "state.json"
    with SimulatorServer([ProjectSpec(**SPEC)], state_file=state_file) as sim:
        with _api(sim) as api:
            first, second, third = api.get("/devices", params={"perPage": 3}).json()["list"]
            assert api.patch(f"/devices/{first['id']}", json={"name": "renamed-by-a-sync"}).status_code == 200
            tag = api.post("/tags", json={"name": "kept-tag"}).json()["data"]
            assert api.patch(f"/devices/{second['id']}", json={"tagIds": [tag["id"]]}).status_code == 200
            assert api.put(f"/devices/{first['id']}/data/desired", json={"led": "on"}).status_code == 200
            assert api.delete(f"/devices/{third['id']}").status_code == 200
            created = api.post("/devices", json={"name": "made-after-seeding"}).json()["data"]
        sim.control.console_update("keep", second["id"], name="renamed-in-the-console")
        before = _everything(sim)
    saved = json.loads(state_file.read_text())  # written on the way out
    assert [p["projectId"] for p in saved["projects"]] == ["keep"]

    # Started again with another key: the saved project, served under the key it was started with.
    with SimulatorServer([ProjectSpec(**{**SPEC, "api_key": "new-key"})], state_file=state_file) as sim:
        assert _everything(sim, "new-key") == before  # every field of every device, tags, LightDB
        with _api(sim, "new-key") as api:
            devices = {d["id"]: d for d in api.get("/devices", params={"perPage": 100}).json()["list"]}
            assert devices[first["id"]]["name"] == "renamed-by-a-sync"
            assert devices[second["id"]]["name"] == "renamed-in-the-console"
            assert devices[second["id"]]["tagIds"] == [tag["id"]]
            assert third["id"] not in devices and created["id"] in devices
            assert api.get(f"/devices/{first['id']}/data/desired").json()["data"] == {"led": "on"}
            # Names and ids stay unique: the id generator carries on where it stopped.
            assert api.post("/devices", json={"name": "made-after-seeding"}).status_code == 409
            newer = api.post("/devices", json={"name": "made-after-restart"}).json()["data"]
            assert newer["id"] not in devices
        with _api(sim, "keep-key") as old:
            assert old.get("/devices").status_code == 401

    # Without a state file, the same spec is seeded afresh: the edits are gone.
    with SimulatorServer([ProjectSpec(**SPEC)]) as sim, _api(sim) as api:
        names = {d["id"]: d["name"] for d in api.get("/devices", params={"perPage": 100}).json()["list"]}
        assert names[first["id"]] == first["name"] and third["id"] in names


def test_the_saver_writes_only_after_a_change_and_an_unreadable_file_is_seeded_over(tmp_path):
    state_file = tmp_path / "state.json"
    with SimulatorServer([ProjectSpec(**SPEC)]) as sim:
        saver = Saver(sim.state, state_file, interval_s=3600)  # ticks by hand below
        saver.save_if_changed()
        assert state_file.exists()  # the first look always saves (nothing saved yet)
        state_file.unlink()
        saver.save_if_changed()
        assert not state_file.exists()  # nothing changed since
        with _api(sim) as api:
            device = api.get("/devices", params={"perPage": 1}).json()["list"][0]
            api.put(f"/devices/{device['id']}/data/desired", json={"fan": 2})  # LightDB only
        saver.save_if_changed()
        assert state_file.exists()

    state_file.write_text("{not json")
    with SimulatorServer([ProjectSpec(**SPEC)], state_file=state_file) as sim, _api(sim) as api:
        assert api.get("/devices").json()["total"] == 40  # seeded, and the broken file replaced on exit
    assert json.loads(state_file.read_text())["format"] == 1
