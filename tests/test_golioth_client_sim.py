"""The Golioth client against the simulator, over real HTTP (fixtures: tests/fixtures/simulator.py).

Each test gets its own simulator project (`sim_project_factory`), so writes and faults never leak
between tests.
"""

from __future__ import annotations

import json
import logging
import math

import httpx
import pytest

from golioth_assets.golioth import (
    AlreadyExistsError,
    AuthenticationError,
    BatchAborted,
    DeviceCreate,
    DeviceUpdate,
    GoliothClient,
    InvalidArgumentError,
    NotFoundError,
    RetryBudgetExceeded,
    RetryPolicy,
)


class RecordingTransport(httpx.HTTPTransport):
    """Real HTTP, plus a record of what went on the wire."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str, bytes]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path, request.read()))
        return super().handle_request(request)


class NoSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def client_for(project, **kwargs) -> GoliothClient:
    kwargs.setdefault("retry", RetryPolicy(sleep=NoSleep(), random=lambda: 0.0))
    return GoliothClient(
        project.api_key, project.project_id, base_url=project.url, organization_id=project.organization_id, **kwargs
    )


@pytest.fixture
def project(sim_project_factory):
    return sim_project_factory(devices=250, seed=3)


@pytest.fixture
def client(project):
    with client_for(project) as c:
        yield c


# -- listing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_page", [100, 7])
def test_serial_pagination_returns_every_device_once(client, per_page):
    pages = list(client.iter_device_pages(per_page=per_page))
    ids = [d.id for page in pages for d in page.list]
    assert len(pages) == math.ceil(250 / per_page)
    assert len(ids) == 250 and len(set(ids)) == 250
    assert [p.page for p in pages] == list(range(len(pages)))
    assert client.stats.pages == len(pages)


@pytest.mark.parametrize("per_page", [100, 7])
def test_concurrent_list_matches_serial_order(client, per_page):
    serial = [d.id for page in client.iter_device_pages(per_page=per_page) for d in page.list]
    concurrent = client.list_devices(per_page=per_page)
    assert [d.id for d in concurrent] == serial
    assert {d.name for d in concurrent} == {f"device-{i:06d}" for i in range(1, 251)}


def test_a_delete_during_listing_does_not_hide_devices(project):
    # After page 0 is read, a console delete shifts every later device back by one: the first
    # device of page 1 moves onto page 0 and a single pass would never see it.
    class DeleteAfterFirstPage(RecordingTransport):
        def handle_request(self, request):
            response = super().handle_request(request)
            if len(self.sent) == 1:
                response.read()
                victim = response.json()["list"][0]["id"]
                project.control.console_delete(project.project_id, victim)
            return response

    transport = DeleteAfterFirstPage()
    with client_for(project, transport=transport) as client:
        devices = client.list_devices(per_page=10)
        names = {d.name for d in devices}
    assert len(devices) == 249 and "device-000001" not in names
    assert "device-000011" in names  # the device that slid onto the already-read page 0
    assert len(transport.sent) == 25 + 25  # the first listing was inconsistent and redone


def test_filters_select_the_same_devices_as_filtering_locally(client):
    everything = client.list_devices()
    cohort = next(d.cohort_id for d in everything if d.cohort_id)
    expected = [d.id for d in everything if d.cohort_id == cohort and d.enabled]
    got = client.list_devices(per_page=10, cohort_id=cohort, enabled=True)
    assert [d.id for d in got] == expected and 0 < len(expected) < 250
    disabled = client.list_devices(enabled=False)
    assert {d.id for d in disabled} == {d.id for d in everything if not d.enabled}


def test_state_path_puts_lightdb_state_into_each_devices_data(client):
    listed = client.list_devices(per_page=50, state_path="desired")
    seeded = [d for d in listed if d.data is not None]
    assert seeded and all(set(d.data) == {"led", "interval"} for d in seeded)  # seed's shape
    first, second, third = [d for d in listed if d.data is None][:3]
    client.put_state(first.id, "desired", {"led": "on", "interval": 5})
    client.put_state(second.id, "desired", {"led": "off"})
    client.put_state(third.id, "reported", {"led": "off"})
    by_id = {d.id: d for d in client.list_devices(per_page=50, state_path="desired")}
    assert by_id[first.id].data == {"led": "on", "interval": 5}
    assert by_id[second.id].data == {"led": "off"}
    assert by_id[third.id].data is None  # `reported` is not under `desired`
    assert all(d.data is None for d in client.list_devices(per_page=50))  # no statePath: no data


# -- device CRUD ----------------------------------------------------------------------------------


def test_create_get_patch_delete(client):
    tags, blueprints, cohorts = client.tag_maps(), client.blueprint_maps(), client.cohort_maps()
    tag_ids = [tags.by_name["beta"], tags.by_name["indoor"]]
    cohort_id = next(iter(cohorts.by_id))
    created = client.create_device(
        DeviceCreate(
            name="sensor-new",
            hardware_ids=["hw-new-1"],
            tag_ids=tag_ids,
            blueprint_id=next(iter(blueprints.by_id)),
            cohort_id=cohort_id,
        )
    )
    assert created.id and created.hardware_ids == ["hw-new-1"] and created.enabled is True
    fetched = client.get_device(created.id)
    assert fetched.tag_ids == tag_ids and fetched.cohort_id == cohort_id

    renamed = client.update_device(created.id, DeviceUpdate(name="sensor-renamed"))
    assert renamed.name == "sensor-renamed"
    assert (renamed.tag_ids, renamed.cohort_id, renamed.blueprint_id) == (
        fetched.tag_ids,
        fetched.cohort_id,
        fetched.blueprint_id,
    )  # unsent fields kept

    client.delete_device(created.id)
    with pytest.raises(NotFoundError):
        client.get_device(created.id)
    with pytest.raises(NotFoundError):
        client.delete_device(created.id)


def test_patch_sends_only_set_fields_and_empty_cohort_clears(project):
    transport = RecordingTransport()
    with client_for(project, transport=transport) as client:
        device = next(d for d in client.list_devices() if d.cohort_id and d.tag_ids)
        updated = client.update_device(device.id, DeviceUpdate(cohort_id=""))
        assert updated.cohort_id is None
        assert updated.tag_ids == device.tag_ids and updated.name == device.name
        assert updated.enabled == device.enabled and updated.blueprint_id == device.blueprint_id
        client.update_device(device.id, DeviceUpdate(enabled=not device.enabled, remove_tag_id=[device.tag_ids[0]]))
        after = client.get_device(device.id)
    assert after.enabled is (not device.enabled) and device.tag_ids[0] not in after.tag_ids
    assert after.cohort_id is None
    patches = [json.loads(body) for method, _, body in transport.sent if method == "PATCH"]
    assert patches == [{"cohortId": ""}, {"enabled": not device.enabled, "removeTagId": [device.tag_ids[0]]}]


def test_duplicate_device_name_is_already_exists(client):
    name = client.list_devices(per_page=1)[0].name
    with pytest.raises(AlreadyExistsError) as info:
        client.create_device(DeviceCreate(name=name))
    assert info.value.status == 409 and "already being used" in info.value.message


def test_malformed_id_is_invalid_argument_with_goliths_message(client):
    with pytest.raises(InvalidArgumentError) as info:
        client.get_device("not-an-object-id")
    assert "hex string is not a valid ObjectID" in str(info.value)


# -- tags, blueprints, cohorts --------------------------------------------------------------------


def test_tags_and_blueprints_create_list_and_map(client):
    before = client.tag_maps()
    tag = client.create_tag("rooftop")
    after = client.tag_maps()
    assert after.by_name["rooftop"] == tag.id and after.by_id[tag.id] == "rooftop"
    assert len(after.by_id) == len(before.by_id) + 1
    with pytest.raises(AlreadyExistsError, match="tag name already being used"):
        client.create_tag("rooftop")
    assert client.ensure_tag("rooftop").id == tag.id

    blueprint = client.create_blueprint("lora-node", board_id="rak4631", platform="zephyr")
    assert client.blueprint_maps().by_name["lora-node"] == blueprint.id
    assert blueprint.board_id == "rak4631"
    with pytest.raises(AlreadyExistsError, match="blueprint name already being used"):
        client.create_blueprint("lora-node")
    assert client.ensure_blueprint("lora-node").id == blueprint.id


def test_cohorts_are_listed_under_the_organization(client):
    cohorts = client.list_cohorts()
    assert {c.cohort_id for c in cohorts} == {"nrf9151-cell-gateways", "field-sensors"}
    devices = client.list_devices()
    for cohort in cohorts:
        assert cohort.device_count == sum(d.cohort_id == cohort.cohort_id for d in devices)
    assert client.cohort_maps().by_id["field-sensors"] == "Field sensors"


# -- LightDB State --------------------------------------------------------------------------------


def test_lightdb_put_get_and_missing_path(client):
    device = client.list_devices(per_page=1)[0]
    client.put_state(device.id, "config/net", {"apn": "iot", "band": 20})
    assert client.get_state(device.id, "config/net") == {"apn": "iot", "band": 20}
    assert client.get_state(device.id, "config/net/band") == 20
    client.put_state(device.id, "config/net/band", 3)
    assert client.get_state(device.id, "config") == {"net": {"apn": "iot", "band": 3}}
    assert client.get_state(device.id, "nothing/here") is None


# -- authentication and secrets -------------------------------------------------------------------


def test_bad_key_fails_fast_with_project_and_url_and_no_key(project):
    bad_key = "sk-definitely-wrong-8d1e"
    with GoliothClient(bad_key, project.project_id, base_url=project.url) as client:
        with pytest.raises(AuthenticationError) as info:
            client.list_devices()
    text = str(info.value)
    assert info.value.status == 401 and client.stats.requests == 1 and client.stats.retries == 0
    assert project.project_id in text and project.url in text and "GOLIOTH_API_KEY" in text
    assert bad_key not in text and bad_key not in repr(info.value)


def test_another_projects_key_is_403_authentication_error(project, sim_project_factory):
    other = sim_project_factory(devices=1)
    with GoliothClient(other.api_key, project.project_id, base_url=project.url) as client:
        with pytest.raises(AuthenticationError) as info:
            client.get_device("0" * 24)
    assert info.value.status == 403 and "not allowed" in str(info.value)


def test_key_never_reaches_logs_over_real_http(project, caplog):
    caplog.set_level(logging.DEBUG)  # includes httpx and httpcore debug output
    project.set_faults(error_rate=0.3, seed=2)
    with client_for(project, retry=RetryPolicy(sleep=NoSleep(), max_attempts=8)) as client:
        devices = client.list_devices(per_page=20)
        client.update_device(devices[0].id, DeviceUpdate(name="renamed"))
        with pytest.raises(AlreadyExistsError) as info:
            client.create_device(DeviceCreate(name=devices[1].name))
        assert project.api_key not in repr(client)
    assert client.stats.retries > 0 and "httpcore" in caplog.text  # the logs were really captured
    assert project.api_key not in caplog.text and project.api_key not in str(info.value)


# -- retries over real HTTP -----------------------------------------------------------------------


def test_injected_429_and_500_are_retried_and_counted(project):
    project.set_faults(rate_limit_share=0.2, error_rate=0.2, retry_after_s=3, seed=9)
    sleep = NoSleep()
    policy = RetryPolicy(max_attempts=10, max_delay=5, sleep=sleep, random=lambda: 0.0)
    with client_for(project, retry=policy) as client:
        devices = client.list_devices(per_page=10)
    stats = client.stats
    assert len(devices) == 250 and len({d.id for d in devices}) == 250
    assert stats.by_status[429] > 0 and stats.by_status[500] > 0 and stats.by_status[200] == 25
    assert stats.retries == stats.by_status[429] + stats.by_status[500]
    assert sleep.calls.count(3.0) == stats.by_status[429]  # Retry-After honoured for every 429
    assert stats.backoff_seconds == 3.0 * stats.by_status[429]  # 500s: jitter drew 0
    server = project.stats()
    assert server["total"] == stats.requests
    assert server["byStatus"] == {str(k): v for k, v in stats.by_status.items()}


def test_retry_budget_exhaustion_stops_retrying(project):
    project.set_faults(unavailable_rate=1.0)
    policy = RetryPolicy(max_attempts=5, budget=6, sleep=NoSleep(), random=lambda: 0.0)
    with client_for(project, retry=policy) as client:
        with pytest.raises(Exception) as first:
            client.get_device("0" * 24)
        with pytest.raises(RetryBudgetExceeded):
            client.get_device("0" * 24)
        with pytest.raises(RetryBudgetExceeded):
            client.get_device("0" * 24)
    assert first.value.status == 503
    assert client.stats.retries == 6 and project.stats()["total"] == 5 + 3 + 1


# -- bulk writes ----------------------------------------------------------------------------------


def test_run_many_patches_all_devices_despite_faults(project):
    project.set_faults(error_rate=0.1, unavailable_rate=0.05, methods=["PATCH"], seed=4)
    with client_for(project, retry=RetryPolicy(max_attempts=8, sleep=NoSleep())) as client:
        devices = client.list_devices()
        results = client.run_many(
            (d.id, lambda d=d: client.update_device(d.id, DeviceUpdate(name=f"{d.name}-x"))) for d in devices
        )
        assert all(not isinstance(r, Exception) for r in results.values())
        assert client.stats.retries > 0
        project.clear_faults()
        names = {d.id: d.name for d in client.list_devices()}
    assert names == {d.id: f"{d.name}-x" for d in devices}


def test_run_many_reports_per_item_failures_and_applies_the_rest(client):
    devices = client.list_devices(per_page=5)[:5]
    taken = devices[0].name
    calls = {d.id: (lambda d=d: client.update_device(d.id, DeviceUpdate(name=f"n-{d.id}"))) for d in devices[1:]}
    calls["clash"] = lambda: client.update_device(devices[1].id, DeviceUpdate(name=taken))
    results = client.run_many(calls)
    assert isinstance(results["clash"], AlreadyExistsError)
    assert sum(not isinstance(r, Exception) for r in results.values()) == 4


def test_run_many_stops_the_batch_on_a_revoked_key(project, simulator):
    with client_for(project, max_concurrency=4) as client:
        devices = client.list_devices()
        simulator.control.set_project_deleted(project.project_id, True)  # keys die with it
        project.reset_stats()
        results = client.run_many(
            (d.id, lambda d=d: client.update_device(d.id, DeviceUpdate(enabled=True))) for d in devices
        )
    kinds = [type(r) for r in results.values()]
    assert kinds.count(AuthenticationError) <= 4 and kinds.count(BatchAborted) >= 246
    assert project.stats()["total"] <= 4
