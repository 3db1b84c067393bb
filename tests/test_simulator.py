"""The simulator behaves like the Golioth Management API (over real HTTP)."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from golioth_assets.simulator import ProjectSpec, SimulatorServer
from golioth_assets.simulator.state import SimState

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")


def devices_url(project) -> str:
    return f"/v1/projects/{project.project_id}/devices"


def first_device(client: httpx.Client, project, **params) -> dict:
    return client.get(devices_url(project), params={"perPage": 1, **params}).json()["list"][0]


# ---- pagination -------------------------------------------------------------------------


def test_list_is_zero_based_with_total(simulator):
    with simulator.client() as c:
        first = c.get(devices_url(simulator), params={"page": 0, "perPage": 100}).json()
        last = c.get(devices_url(simulator), params={"page": 2, "perPage": 100}).json()
        beyond = c.get(devices_url(simulator), params={"page": 3, "perPage": 100}).json()
    assert (first["page"], first["perPage"], first["total"]) == (0, 100, 250)
    assert first["list"][0]["name"] == "device-000001"
    assert len(last["list"]) == 50 and last["list"][-1]["name"] == "device-000250"
    assert beyond["list"] == [] and beyond["total"] == 250


def test_full_pagination_sees_every_device_once(simulator):
    with simulator.client() as c:
        ids = []
        for page in range(3):
            ids += [d["id"] for d in c.get(devices_url(simulator), params={"page": page}).json()["list"]]
    assert len(ids) == 250 == len(set(ids))
    assert all(OBJECT_ID.match(i) for i in ids)


def test_per_page_defaults_to_100(simulator):
    with simulator.client() as c:
        body = c.get(devices_url(simulator)).json()
    assert body["perPage"] == 100 and len(body["list"]) == 100 and body["page"] == 0


@pytest.mark.parametrize("per_page", [101, 0, -1, 1000])
def test_per_page_out_of_range_is_invalid_argument(simulator, per_page):
    with simulator.client() as c:
        r = c.get(devices_url(simulator), params={"perPage": per_page})
    assert r.status_code == 400
    assert r.json() == {"code": 3, "message": "perPage must be between 1 and 100", "details": []}


def test_non_integer_page_is_invalid_argument(simulator):
    with simulator.client() as c:
        r = c.get(devices_url(simulator), params={"page": "two"})
    assert r.status_code == 400 and r.json()["code"] == 3


# ---- auth ---------------------------------------------------------------------------------


def test_missing_or_bad_key_is_401(simulator):
    with httpx.Client(base_url=simulator.url) as c:
        missing = c.get(devices_url(simulator))
        bad = c.get(devices_url(simulator), headers={"x-api-key": "nope"})
    for r in (missing, bad):
        assert r.status_code == 401
        assert r.json() == {"code": 16, "message": "error identifying user", "details": []}


def test_key_of_another_project_is_403(simulator, sim_project):
    with sim_project.client() as c:
        r = c.get(devices_url(simulator))
    assert r.status_code == 403
    assert r.json() == {"code": 7, "message": "user not allowed to call method", "details": []}


# ---- devices --------------------------------------------------------------------------------


def test_create_answers_200_with_data_and_generates_hardware_id(sim_project):
    with sim_project.client() as c:
        r = c.post(devices_url(sim_project), json={"name": "Widget 7"})
        listed = c.get(devices_url(sim_project), params={"deviceName": "Widget 7"}).json()
    assert r.status_code == 200
    device = r.json()["data"]
    assert OBJECT_ID.match(device["id"])
    assert device["name"] == "Widget 7" and device["enabled"] is True and device["status"] == "-"
    assert len(device["hardwareIds"]) == 1 and device["hardwareIds"][0].endswith("-widget-7")
    assert RFC3339_MS.match(device["createdAt"]) and device["createdAt"] == device["updatedAt"]
    assert listed["total"] == 1 and listed["list"][0]["id"] == device["id"]


def test_empty_fields_are_left_out(sim_project):
    with sim_project.client() as c:
        device = c.post(devices_url(sim_project), json={"name": "bare", "hardwareIds": ["hw-bare"]}).json()["data"]
    assert set(device) == {"id", "hardwareIds", "name", "createdAt", "updatedAt", "status", "enabled"}


def test_create_with_references(sim_project):
    with sim_project.client() as c:
        tag = c.get(f"/v1/projects/{sim_project.project_id}/tags").json()["list"][0]
        blueprint = c.get(f"/v1/projects/{sim_project.project_id}/blueprints").json()["list"][0]
        cohort = c.get(f"/v1/organizations/any-org/projects/{sim_project.project_id}/cohorts").json()["list"][0]
        body = {
            "name": "ref",
            "hardwareIds": ["hw-ref-1", "hw-ref-2"],
            "tagIds": [tag["id"]],
            "blueprintId": blueprint["id"],
            "cohortId": cohort["cohortId"],
        }
        device = c.post(devices_url(sim_project), json=body).json()["data"]
    assert device["tagIds"] == [tag["id"]]
    assert device["blueprintId"] == blueprint["id"]
    assert device["cohortId"] == cohort["cohortId"]
    assert device["hardwareIds"] == ["hw-ref-1", "hw-ref-2"]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "tagIds": ["0123456789abcdef01234567"]},
        {"name": "x", "blueprintId": "0123456789abcdef01234567"},
        {"name": "x", "cohortId": "no-such-cohort"},
        {"name": "x", "tagIds": ["not-hex"]},
        {"name": ""},
        {"name": 5},
    ],
)
def test_create_with_bad_fields_is_400(sim_project, body):
    with sim_project.client() as c:
        r = c.post(devices_url(sim_project), json=body)
        total = c.get(devices_url(sim_project)).json()["total"]
    assert r.status_code == 400 and r.json()["code"] == 3
    assert total == sim_project.devices  # nothing was created


def test_duplicate_name_and_hardware_id_are_409(sim_project):
    with sim_project.client() as c:
        existing = first_device(c, sim_project)
        dup_name = c.post(devices_url(sim_project), json={"name": existing["name"]})
        dup_hw = c.post(devices_url(sim_project), json={"name": "fresh", "hardwareIds": existing["hardwareIds"][:1]})
    assert dup_name.status_code == 409 and dup_name.json()["code"] == 6
    assert dup_hw.status_code == 409 and dup_hw.json()["code"] == 6


def test_get_unknown_and_malformed_device(sim_project):
    with sim_project.client() as c:
        missing = c.get(f"{devices_url(sim_project)}/0123456789abcdef01234567")
        malformed = c.get(f"{devices_url(sim_project)}/not-an-id")
    assert missing.status_code == 404 and missing.json()["code"] == 5
    assert malformed.status_code == 400
    assert malformed.json()["message"] == "hex string is not a valid ObjectID"


def test_patch_changes_only_sent_fields_and_moves_updated_at(sim_project):
    with sim_project.client() as c:
        before = first_device(c, sim_project)
        # Flipped, not False: the project's seeded data varies by run and some devices start disabled.
        r = c.patch(f"{devices_url(sim_project)}/{before['id']}", json={"enabled": not before["enabled"]})
        after = c.get(f"{devices_url(sim_project)}/{before['id']}").json()["data"]
    assert r.status_code == 200 and r.json()["data"] == after
    assert after["enabled"] is (not before["enabled"])
    assert after["updatedAt"] > before["updatedAt"]
    unchanged = {k: v for k, v in before.items() if k not in ("enabled", "updatedAt")}
    assert {k: after[k] for k in unchanged} == unchanged


def test_updated_at_moves_on_every_write_even_within_a_millisecond(sim_project):
    with sim_project.client() as c:
        device = first_device(c, sim_project)
        stamps = [
            c.patch(f"{devices_url(sim_project)}/{device['id']}", json={"name": f"n{i}"}).json()["data"]["updatedAt"]
            for i in range(5)
        ]
    assert stamps == sorted(stamps) and len(set(stamps)) == 5


def test_patch_add_remove_tags_and_hardware_ids(sim_project):
    with sim_project.client() as c:
        tags = [t["id"] for t in c.get(f"/v1/projects/{sim_project.project_id}/tags").json()["list"][:3]]
        device = c.post(devices_url(sim_project), json={"name": "t", "hardwareIds": ["a"], "tagIds": tags[:1]}).json()[
            "data"
        ]
        url = f"{devices_url(sim_project)}/{device['id']}"
        d = c.patch(url, json={"addTagId": tags[1:3], "removeTagId": tags[:1], "addHardwareId": ["b"]}).json()["data"]
        assert d["tagIds"] == tags[1:3] and d["hardwareIds"] == ["a", "b"]
        d = c.patch(url, json={"removeHardwareId": ["a"], "tagIds": []}).json()["data"]
    assert d["hardwareIds"] == ["b"] and "tagIds" not in d


def test_patch_cohort_empty_string_removes_it_but_blueprint_empty_string_does_not(sim_project):
    with sim_project.client() as c:
        device = first_device(c, sim_project, cohortId="field-sensors", blueprintId="")
        url = f"{devices_url(sim_project)}/{device['id']}"
        bp = c.get(f"/v1/projects/{sim_project.project_id}/blueprints").json()["list"][0]["id"]
        c.patch(url, json={"blueprintId": bp})
        d = c.patch(url, json={"cohortId": "", "blueprintId": ""}).json()["data"]
    assert "cohortId" not in d
    assert d["blueprintId"] == bp  # the spec documents the "" clear for cohortId only


def test_put_replaces(sim_project):
    with sim_project.client() as c:
        device = first_device(c, sim_project, cohortId="field-sensors")
        d = c.put(f"{devices_url(sim_project)}/{device['id']}", json={"name": "replaced"}).json()["data"]
        missing_name = c.put(f"{devices_url(sim_project)}/{device['id']}", json={"enabled": True})
    assert d["name"] == "replaced"
    assert "tagIds" not in d and "cohortId" not in d and "blueprintId" not in d
    assert d["hardwareIds"] == device["hardwareIds"]
    assert missing_name.status_code == 400


def test_rename_to_taken_name_is_409_and_changes_nothing(sim_project):
    with sim_project.client() as c:
        a, b = c.get(devices_url(sim_project), params={"perPage": 2}).json()["list"]
        r = c.patch(f"{devices_url(sim_project)}/{a['id']}", json={"name": b["name"], "enabled": not a["enabled"]})
        after = c.get(f"{devices_url(sim_project)}/{a['id']}").json()["data"]
    assert r.status_code == 409
    assert after == a


def test_delete_answers_empty_object(sim_project):
    with sim_project.client() as c:
        device = first_device(c, sim_project)
        r = c.delete(f"{devices_url(sim_project)}/{device['id']}")
        again = c.get(f"{devices_url(sim_project)}/{device['id']}")
        total = c.get(devices_url(sim_project)).json()["total"]
        reuse = {"name": device["name"], "hardwareIds": device["hardwareIds"]}
        name_free = c.post(devices_url(sim_project), json=reuse)
    assert r.status_code == 200 and r.json() == {}
    assert again.status_code == 404
    assert total == sim_project.devices - 1
    assert name_free.status_code == 200


# ---- filters ----------------------------------------------------------------------------------


def test_filters(simulator):
    project = simulator.state.project(simulator.project_id)
    devices = list(project.devices.values())
    tag_a, tag_b = list(project.tags)[:2]
    with simulator.client() as c:

        def total(**params):
            return c.get(devices_url(simulator), params=params).json()["total"]

        assert total(deviceName="device-000007") == 1
        assert total(hardwareId=devices[9].hardware_ids[0]) == 1
        assert total(term="DEVICE-00001") == sum(1 for d in devices if "device-00001" in d.name)
        assert total(enabled="false") == sum(1 for d in devices if not d.enabled) > 0
        assert total(cohortId="field-sensors") == sum(1 for d in devices if d.cohort_id == "field-sensors")
        both = sum(1 for d in devices if {tag_a, tag_b} <= set(d.tag_ids))
        r = c.get(devices_url(simulator), params=[("tags", tag_a), ("tags", tag_b)]).json()
        assert r["total"] == both and all({tag_a, tag_b} <= set(d["tagIds"]) for d in r["list"])
        bp = list(project.blueprints)[0]
        assert total(blueprintId=bp) == sum(1 for d in devices if d.blueprint_id == bp) > 0
        assert total(deviceName="nope") == 0
        assert c.get(devices_url(simulator), params={"enabled": "maybe"}).status_code == 400


def test_state_path_fills_data(simulator):
    with simulator.client() as c:
        page = c.get(devices_url(simulator), params={"statePath": "desired"}).json()["list"]
        plain = c.get(devices_url(simulator)).json()["list"]
    with_state = [d for d in page if "data" in d]
    assert 0 < len(with_state) < len(page)
    assert all(set(d["data"]) == {"led", "interval"} for d in with_state)
    assert all("data" not in d for d in plain)


# ---- LightDB State --------------------------------------------------------------------------------


def test_lightdb_get_put_patch_delete(sim_project):
    with sim_project.client() as c:
        device = c.post(devices_url(sim_project), json={"name": "ldb"}).json()["data"]
        url = f"{devices_url(sim_project)}/{device['id']}/data"
        assert c.get(f"{url}/desired").status_code == 404
        assert c.put(f"{url}/desired", json={"led": "on", "interval": 60}).json() == {}
        assert c.get(f"{url}/desired").json() == {"data": {"led": "on", "interval": 60}}
        assert c.get(f"{url}/desired/led").json() == {"data": "on"}
        c.patch(f"{url}/desired", json={"interval": 30, "mode": "eco"})
        assert c.get(f"{url}/desired").json()["data"] == {"led": "on", "interval": 30, "mode": "eco"}
        c.put(f"{url}/desired", json={"led": "off"})
        assert c.get(f"{url}/desired").json()["data"] == {"led": "off"}
        c.put(f"{url}/desired/led", json="blink")
        assert c.get(f"{url}/desired/led").json()["data"] == "blink"
        listed = c.get(devices_url(sim_project), params={"deviceName": "ldb", "statePath": "desired"}).json()
        assert listed["list"][0]["data"] == {"led": "blink"}
        assert c.delete(f"{url}/desired/led").json() == {}
        assert c.get(f"{url}/desired/led").status_code == 404
        assert c.put(f"{url}/desired", content=b"{not json").status_code == 400
        after = c.get(f"{devices_url(sim_project)}/{device['id']}").json()["data"]
    assert after["updatedAt"] == device["updatedAt"]  # state is not part of the device record


# ---- tags, blueprints, cohorts ----------------------------------------------------------------------


def test_tags_crud(sim_project):
    base = f"/v1/projects/{sim_project.project_id}/tags"
    with sim_project.client() as c:
        created = c.post(base, json={"name": "new-tag"})
        dup = c.post(base, json={"name": "new-tag"})
        tag = created.json()["data"]
        got = c.get(f"{base}/{tag['id']}").json()["data"]
        listed = c.get(base, params={"perPage": 100}).json()
        deleted = c.delete(f"{base}/{tag['id']}")
        gone = c.get(f"{base}/{tag['id']}")
    assert created.status_code == 200 and set(tag) == {"id", "name", "createdAt", "updatedAt"}
    assert dup.status_code == 409 and dup.json()["message"] == "tag name already being used"
    assert got == tag
    assert listed["total"] == 7 and tag in listed["list"]
    assert deleted.json() == {} and gone.status_code == 404


def test_deleting_a_tag_detaches_it_from_devices(sim_project):
    with sim_project.client() as c:
        device = first_device(c, sim_project)
        tag = c.post(f"/v1/projects/{sim_project.project_id}/tags", json={"name": "temp"}).json()["data"]
        c.patch(f"{devices_url(sim_project)}/{device['id']}", json={"addTagId": [tag["id"]]})
        c.delete(f"/v1/projects/{sim_project.project_id}/tags/{tag['id']}")
        after = c.get(f"{devices_url(sim_project)}/{device['id']}").json()["data"]
    assert tag["id"] not in after.get("tagIds", [])


def test_blueprints_crud(sim_project):
    base = f"/v1/projects/{sim_project.project_id}/blueprints"
    with sim_project.client() as c:
        bp = c.post(base, json={"name": "bp-x", "boardId": "nrf9160dk", "platform": "zephyr"}).json()["data"]
        dup = c.post(base, json={"name": "bp-x"})
        got = c.get(f"{base}/{bp['id']}").json()["data"]
        deleted = c.delete(f"{base}/{bp['id']}").json()
    assert got == bp and bp["boardId"] == "nrf9160dk"
    assert dup.status_code == 409 and dup.json()["message"] == "blueprint name already being used"
    assert deleted == {}


def test_cohorts_use_cohort_id_and_any_organization(sim_project):
    base = f"/v1/organizations/whatever/projects/{sim_project.project_id}/cohorts"
    with sim_project.client() as c:
        listed = c.get(base).json()
        created = c.post(base, json={"name": "Night Shift"}).json()["data"]
        device = first_device(c, sim_project)
        c.patch(f"{devices_url(sim_project)}/{device['id']}", json={"cohortId": created["cohortId"]})
        got = c.get(f"{base}/{created['cohortId']}").json()["data"]
    assert listed["total"] == 2 and all("cohortId" in x and "id" not in x for x in listed["list"])
    assert created["cohortId"] == "night-shift"
    assert got["deviceCount"] == 1


def test_unknown_route_is_rpc_not_found(simulator):
    with simulator.client() as c:
        r = c.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["code"] == 5


# ---- seeding ------------------------------------------------------------------------------------


def test_seeding_is_deterministic_and_distinct_per_project():
    a = SimState([ProjectSpec("p", "k", devices=30, seed=3)]).projects["p"]
    b = SimState([ProjectSpec("p", "k", devices=30, seed=3)]).projects["p"]
    other = SimState([ProjectSpec("q", "k", devices=30, seed=3)]).projects["q"]
    dump = lambda p: [d.to_dict() for d in p.ordered_devices()]  # noqa: E731
    assert dump(a) == dump(b)
    assert {d["id"] for d in dump(a)}.isdisjoint(d["id"] for d in dump(other))
    assert len(a.tags) >= 5 and len(a.blueprints) in (2, 3) and len(a.cohorts) == 2
    assert all(1 <= len(d.hardware_ids) <= 2 for d in a.devices.values())
    assert any(d.state for d in a.devices.values())
    assert all(d.metadata["update"]["main"]["version"] for d in a.devices.values())


def test_seeding_10k_is_fast():
    started = time.process_time()  # CPU time: a busy machine slows the wall clock, not this
    state = SimState([ProjectSpec("p", "k", devices=10_000, seed=1)])
    assert time.process_time() - started < 1.5
    assert len(state.projects["p"].devices) == 10_000


def test_thread_server_as_context_manager():
    with SimulatorServer(projects=[ProjectSpec("cm", "cm-key", devices=3)]) as sim:
        r = httpx.get(f"{sim.url}/v1/projects/cm/devices", headers={"x-api-key": "cm-key"})
        assert r.json()["total"] == 3
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{sim.url}/v1/projects/cm/devices", headers={"x-api-key": "cm-key"}, timeout=1)


def test_api_create_ignores_fields_outside_the_create_body(sim_project):
    with sim_project.client() as c:
        device = c.post(devices_url(sim_project), json={"name": "strict", "enabled": False, "bogus": 1}).json()["data"]
    assert device["enabled"] is True and "bogus" not in device
