"""Every simulator response matches the official spec's response schemas.

Each response seen by the client is validated (via an httpx response hook) against the
200 schema of its operation in openapi.yml, or `rpcStatus` for errors. The schemas are
tightened with `additionalProperties: false` so that a field the real API does not have
(or a misspelt one) fails too. The test then checks that every implemented operation was
seen answering both a success and an error.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import httpx
import jsonschema
import pytest
import yaml

from golioth_assets.simulator.faults import FaultConfig

SPEC_CANDIDATES = [
    os.environ.get("GOLIOTH_OPENAPI_SPEC", ""),
    str(Path(__file__).resolve().parents[1] / "docs" / "golioth" / "openapi.yml"),
    "/work/shared/golioth/openapi.yml",
]

IMPLEMENTED = {
    ("GET", "/v1/projects/{projectId}/devices"),
    ("POST", "/v1/projects/{projectId}/devices"),
    ("GET", "/v1/projects/{projectId}/devices/{deviceId}"),
    ("PATCH", "/v1/projects/{projectId}/devices/{deviceId}"),
    ("PUT", "/v1/projects/{projectId}/devices/{deviceId}"),
    ("DELETE", "/v1/projects/{projectId}/devices/{deviceId}"),
    ("GET", "/v1/projects/{projectId}/devices/{deviceId}/data/{path}"),
    ("PUT", "/v1/projects/{projectId}/devices/{deviceId}/data/{path}"),
    ("POST", "/v1/projects/{projectId}/devices/{deviceId}/data/{path}"),
    ("PATCH", "/v1/projects/{projectId}/devices/{deviceId}/data/{path}"),
    ("DELETE", "/v1/projects/{projectId}/devices/{deviceId}/data/{path}"),
    ("GET", "/v1/projects/{projectId}/tags"),
    ("POST", "/v1/projects/{projectId}/tags"),
    ("GET", "/v1/projects/{projectId}/tags/{tagId}"),
    ("PATCH", "/v1/projects/{projectId}/tags/{tagId}"),
    ("PUT", "/v1/projects/{projectId}/tags/{tagId}"),
    ("DELETE", "/v1/projects/{projectId}/tags/{tagId}"),
    ("GET", "/v1/projects/{projectId}/blueprints"),
    ("POST", "/v1/projects/{projectId}/blueprints"),
    ("GET", "/v1/projects/{projectId}/blueprints/{blueprintId}"),
    ("PATCH", "/v1/projects/{projectId}/blueprints/{blueprintId}"),
    ("PUT", "/v1/projects/{projectId}/blueprints/{blueprintId}"),
    ("DELETE", "/v1/projects/{projectId}/blueprints/{blueprintId}"),
    ("GET", "/v1/organizations/{organizationId}/projects/{projectId}/cohorts"),
    ("POST", "/v1/organizations/{organizationId}/projects/{projectId}/cohorts"),
    ("GET", "/v1/organizations/{organizationId}/projects/{projectId}/cohorts/{cohortId}"),
    ("PUT", "/v1/organizations/{organizationId}/projects/{projectId}/cohorts/{cohortId}"),
    ("DELETE", "/v1/organizations/{organizationId}/projects/{projectId}/cohorts/{cohortId}"),
}

# The live API writes timestamps as RFC3339 UTC with milliseconds.
_DATE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
_FORMATS = jsonschema.FormatChecker(formats=())
_FORMATS.checks("date-time")(lambda value: not isinstance(value, str) or bool(_DATE_TIME.match(value)))


def _load_spec() -> dict:
    for candidate in SPEC_CANDIDATES:
        if candidate and Path(candidate).is_file():
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            return yaml.load(Path(candidate).read_text(), Loader=loader)  # noqa: S506 (safe loader)
    pytest.fail(f"Golioth openapi.yml not found (set GOLIOTH_OPENAPI_SPEC); looked in {SPEC_CANDIDATES}")


def _closed(schema: object) -> object:
    """Copy of a schema where every object with declared properties allows no others."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


class SpecChecker:
    def __init__(self, spec: dict) -> None:
        self.components = {"schemas": _closed(copy.deepcopy(spec["components"]["schemas"]))}
        self.operations = []
        for path, item in spec["paths"].items():
            pattern = re.escape(path).replace(r"\{path\}", ".+")
            pattern = re.sub(r"\\\{[A-Za-z]+\\\}", "[^/]+", pattern)
            for method, op in item.items():
                if isinstance(op, dict) and "responses" in op:
                    self.operations.append((method.upper(), re.compile(f"^{pattern}$"), path, op))
        self.covered: set[tuple[str, str, str]] = set()
        self.checked = 0

    def validator(self, ref: str) -> jsonschema.Draft202012Validator:
        schema = {"components": self.components, "$ref": ref}
        return jsonschema.Draft202012Validator(schema, format_checker=_FORMATS)

    def operation(self, method: str, path: str) -> tuple[str, dict] | None:
        for op_method, regex, template, op in self.operations:
            if op_method == method and regex.match(path):
                return template, op
        return None

    def check(self, response: httpx.Response) -> None:
        response.read()
        request = response.request
        assert response.headers["content-type"].startswith("application/json"), request.url
        body = response.json()
        found = self.operation(request.method, request.url.path)
        if response.status_code == 200:
            assert found, f"simulator answered 200 to an operation the spec lacks: {request.method} {request.url}"
            template, op = found
            ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
            kind = "ok"
        else:
            ref = "#/components/schemas/rpcStatus"
            template = found[0] if found else "unmatched"
            kind = "error"
            assert body["details"] == [] and body["code"] > 0 and body["message"], body
        errors = sorted(self.validator(ref).iter_errors(body), key=str)
        assert not errors, f"{request.method} {request.url.path} -> {response.status_code}: {errors[0]}"
        self.covered.add((request.method, template, kind))
        self.checked += 1


@pytest.fixture(scope="module")
def checker() -> SpecChecker:
    return SpecChecker(_load_spec())


def test_closed_schemas_reject_unknown_fields(checker):
    # Guard for the guard: the tightened schemas really do catch drift.
    device_schema = checker.validator("#/components/schemas/goliothGetDeviceResponse")
    assert device_schema.is_valid({"data": {"id": "x", "name": "n"}})
    assert not device_schema.is_valid({"data": {"id": "x", "nmae": "n"}})
    assert not device_schema.is_valid({"data": {"id": "x", "createdAt": "2025-01-01 00:00"}})
    assert not checker.validator("#/components/schemas/rpcStatus").is_valid({"code": "5", "message": "m"})


def test_every_response_matches_the_spec(checker, simulator, sim_project):
    pid = sim_project.project_id
    sent = []
    hooks = {"request": [sent.append], "response": [checker.check]}
    c = sim_project.client(event_hooks=hooks)
    anon = httpx.Client(base_url=sim_project.url, event_hooks=hooks)
    devices = f"/v1/projects/{pid}/devices"
    tags = f"/v1/projects/{pid}/tags"
    blueprints = f"/v1/projects/{pid}/blueprints"
    cohorts = f"/v1/organizations/org-x/projects/{pid}/cohorts"
    missing = "0123456789abcdef01234567"
    try:
        # devices: list (plain, filtered, statePath, empty page) and errors
        listed = c.get(devices).json()["list"]
        c.get(devices, params={"statePath": "desired", "perPage": 50})
        c.get(devices, params={"enabled": "true", "term": "device", "page": 9})
        c.get(devices, params={"perPage": 101})
        anon.get(devices)
        simulator.client(event_hooks=hooks).get(devices)  # 403: another project's key
        tag = c.post(tags, json={"name": "schema-tag"}).json()["data"]
        bp = c.post(blueprints, json={"name": "schema-bp", "boardId": "b", "platform": "p"}).json()["data"]
        cohort = c.post(cohorts, json={"name": "Schema Cohort"}).json()["data"]
        full = {
            "name": "schema-device",
            "hardwareIds": ["hw-s1", "hw-s2"],
            "tagIds": [tag["id"]],
            "blueprintId": bp["id"],
            "cohortId": cohort["cohortId"],
        }
        device = c.post(devices, json=full).json()["data"]
        c.post(devices, json=full)  # 409
        c.post(devices, json={"name": "minimal"})
        one = f"{devices}/{device['id']}"
        c.get(one)
        c.get(f"{devices}/{missing}")
        c.get(f"{devices}/nope")
        c.patch(one, json={"enabled": False, "addHardwareId": ["hw-s3"]})
        c.patch(one, json={"name": listed[0]["name"]})  # 409
        c.put(one, json={"name": "schema-device", "hardwareIds": ["hw-s1"], "tagIds": [tag["id"]]})
        c.put(one, json={})  # 400: PUT needs a name
        # LightDB State
        state = f"{one}/data"
        c.put(f"{state}/desired", json={"led": "on", "interval": 60})
        c.put(f"{state}/desired", content=b"{bad")
        c.post(f"{state}/reported", json={"temp": 21.5})
        c.post(f"{devices}/{missing}/data/reported", json={"temp": 1})
        c.patch(f"{state}/desired", json={"interval": 5})
        anon.patch(f"{state}/desired", json={"interval": 5})
        c.get(f"{state}/desired")
        c.get(f"{state}/desired/led")
        c.get(f"{state}/absent")
        c.get(devices, params={"statePath": "desired", "deviceName": "schema-device"})
        c.delete(f"{state}/reported")
        c.delete(f"{devices}/bad-id/data/reported")
        # tags
        c.get(tags)
        c.get(tags, params={"perPage": 0})
        c.get(f"{tags}/{tag['id']}")
        c.get(f"{tags}/{missing}")
        c.post(tags, json={"name": "schema-tag"})
        c.patch(f"{tags}/{tag['id']}", json={"name": "schema-tag-2"})
        c.patch(f"{tags}/{missing}", json={"name": "x"})
        c.put(f"{tags}/{tag['id']}", json={"name": "schema-tag-3"})
        c.put(f"{tags}/nope", json={"name": "x"})
        # blueprints
        c.get(blueprints)
        c.get(blueprints, params={"page": -1})
        c.get(f"{blueprints}/{bp['id']}")
        c.get(f"{blueprints}/{missing}")
        c.post(blueprints, json={"name": "schema-bp"})
        c.patch(f"{blueprints}/{bp['id']}", json={"platform": "zephyr"})
        c.patch(f"{blueprints}/{missing}", json={"platform": "zephyr"})
        c.put(f"{blueprints}/{bp['id']}", json={"name": "schema-bp-2"})
        c.put(f"{blueprints}/{missing}", json={"name": "x"})
        # cohorts
        c.get(cohorts)
        c.get(cohorts, params={"perPage": 500})
        c.get(f"{cohorts}/{cohort['cohortId']}")
        c.get(f"{cohorts}/nope")
        c.post(cohorts, json={"name": "Schema Cohort"})
        c.put(f"{cohorts}/{cohort['cohortId']}", json={"name": "Renamed"})
        c.put(f"{cohorts}/nope", json={"name": "Renamed"})
        # deletes last, each with its error twin
        c.delete(one)
        c.delete(one)
        c.delete(f"{tags}/{tag['id']}")
        c.delete(f"{tags}/{tag['id']}")
        c.delete(f"{blueprints}/{bp['id']}")
        c.delete(f"{blueprints}/{bp['id']}")
        c.delete(f"{cohorts}/{cohort['cohortId']}")
        c.delete(f"{cohorts}/{cohort['cohortId']}")
        # injected faults and unknown routes are rpcStatus too
        sim_project.set_faults(FaultConfig(error_rate=1.0))
        c.get(devices)
        sim_project.set_faults(FaultConfig(unavailable_rate=1.0))
        c.get(tags)
        sim_project.set_faults(FaultConfig(rate_limit_share=1.0))
        c.get(blueprints)
        sim_project.clear_faults()
        c.get("/v1/not-a-route")
    finally:
        c.close()
        anon.close()

    seen_ok = {(m, t) for m, t, kind in checker.covered if kind == "ok"}
    seen_error = {(m, t) for m, t, kind in checker.covered if kind == "error"}
    assert IMPLEMENTED - seen_ok == set(), "operations never seen succeeding"
    assert IMPLEMENTED - seen_error == set(), "operations never seen failing"
    assert checker.checked == len(sent) > 60  # no response escaped the check
