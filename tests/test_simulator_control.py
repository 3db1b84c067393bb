"""Control API: console edits, device activity, webhooks, projects, reset; CLI and subprocess mode."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time

import httpx
import pytest
from click.testing import CliRunner
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from golioth_assets.simulator import ProjectSpec, SimulatorControlError, SimulatorServer
from golioth_assets.simulator.cli import simulator_command
from tests.fixtures.network import free_port

SECRET = "whsec_" + base64.b64encode(b"simulator-test-secret-0123456789").decode()


def devices_url(project) -> str:
    return f"/v1/projects/{project.project_id}/devices"


def get_device(project, device_id: str) -> dict:
    with project.client() as c:
        return c.get(f"{devices_url(project)}/{device_id}").json()["data"]


def some_device(project) -> dict:
    with project.client() as c:
        return c.get(devices_url(project), params={"perPage": 1}).json()["list"][0]


# ---- console edits ----------------------------------------------------------------------


def test_console_edit_is_visible_and_moves_updated_at(sim_project):
    before = some_device(sim_project)
    edited = sim_project.control.console_update(sim_project.project_id, before["id"], name="renamed-in-console")
    after = get_device(sim_project, before["id"])
    assert after == edited
    assert after["name"] == "renamed-in-console" and after["updatedAt"] > before["updatedAt"]


def test_console_create_and_delete(sim_project):
    created = sim_project.control.console_create(sim_project.project_id, name="from-console", hardwareIds=["c-1"])
    assert get_device(sim_project, created["id"])["hardwareIds"] == ["c-1"]
    sim_project.control.console_delete(sim_project.project_id, created["id"])
    with sim_project.client() as c:
        assert c.get(f"{devices_url(sim_project)}/{created['id']}").status_code == 404


def test_console_errors_are_reported(sim_project):
    existing = some_device(sim_project)
    with pytest.raises(SimulatorControlError, match="409"):
        sim_project.control.console_create(sim_project.project_id, name=existing["name"])


def test_mutate_edits_random_devices(sim_project):
    with sim_project.client() as c:
        before = {d["id"]: d for d in c.get(devices_url(sim_project)).json()["list"]}
    changed = sim_project.control.mutate(sim_project.project_id, count=5, seed=1)
    assert len(set(changed)) == 5
    for device_id in changed:
        after = get_device(sim_project, device_id)
        assert after["updatedAt"] > before[device_id]["updatedAt"]
        assert after != {**before[device_id], "updatedAt": after["updatedAt"]}  # something really changed


# ---- device activity and webhooks --------------------------------------------------------


def test_activity_moves_observed_metadata_not_updated_at(sim_project):
    before = some_device(sim_project)
    sim_project.control.device_activity(sim_project.project_id, before["id"], {"temp": 30}, firmware_version="9.9.9")
    after = get_device(sim_project, before["id"])
    assert after["metadata"]["lastSeenOnline"] > before["metadata"]["lastSeenOnline"]
    assert after["metadata"]["lastReport"] == after["lastReport"] == after["metadata"]["lastSeenOnline"]
    assert after["metadata"]["update"]["main"]["version"] == "9.9.9"
    assert after["updatedAt"] == before["updatedAt"]


def test_data_webhook_with_inject_metadata(sim_project, webhook_receiver):
    device = some_device(sim_project)
    sim_project.control.set_webhook(
        sim_project.project_id, f"{webhook_receiver.url}/hook/1", {"x-golioth-sync-secret": "s3cret"}
    )
    for temp in (32, 33):
        sim_project.control.device_activity(sim_project.project_id, device["id"], {"temp": temp}, path="sensor")
    first, second = webhook_receiver.wait_for(2)
    body = first.json()
    assert first.path == "/hook/1"
    assert body["data"] == {"temp": 32} and second.json()["data"] == {"temp": 33}
    assert body["device_id"] == device["id"] and body["project_id"] == sim_project.project_id
    assert set(body["timestamp"]) == {"seconds", "nanos"} and abs(body["timestamp"]["seconds"] - time.time()) < 60
    h = first.headers
    assert h["Ce-Source"] == device["id"]
    assert h["Ce-Subject"] == sim_project.project_id
    assert h["Ce-Type"] == "io.golioth.data.v1/.s/sensor"
    assert h["Content-Type"] == "application/json"
    assert h["x-golioth-sync-secret"] == "s3cret"
    assert h["Ce-Id"] and h["Ce-Id"] != second.headers["Ce-Id"]


def test_data_webhook_raw_payload(sim_project, webhook_receiver):
    device = some_device(sim_project)
    sim_project.control.set_webhook(sim_project.project_id, webhook_receiver.url, inject_metadata=False)
    sim_project.control.device_activity(sim_project.project_id, device["id"], {"temp": 32})
    (request,) = webhook_receiver.wait_for(1)
    assert request.json() == {"temp": 32}
    assert request.headers["Ce-Type"] == "io.golioth.data.v1/.s/data"


def test_signed_device_events_verify_with_standard_webhooks(sim_project, webhook_receiver):
    sim_project.control.set_events(sim_project.project_id, webhook_receiver.url, SECRET)
    device = some_device(sim_project)
    sim_project.control.console_update(sim_project.project_id, device["id"], enabled=not device["enabled"])
    created = sim_project.control.console_create(sim_project.project_id, name="evented")
    sim_project.control.console_delete(sim_project.project_id, created["id"])
    requests = webhook_receiver.wait_for(3)
    verifier = Webhook(SECRET)
    events = [verifier.verify(r.body, r.headers) for r in requests]
    assert [e["type"] for e in events] == ["device.updated", "device.created", "device.deleted"]
    assert events[0]["device_id"] == device["id"] and events[0]["data"]["enabled"] is not device["enabled"]
    assert events[1]["data"]["name"] == "evented" and events[1]["project_id"] == sim_project.project_id
    assert requests[0].headers["webhook-signature"].startswith("v1,")
    tampered = requests[0].body.replace(b"device.updated", b"device.deleted")
    with pytest.raises(WebhookVerificationError):
        verifier.verify(tampered, requests[0].headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"another-secret-another-secret!!").decode()).verify(
            requests[0].body, requests[0].headers
        )


def test_api_writes_do_not_emit_console_events(sim_project, webhook_receiver):
    sim_project.control.set_events(sim_project.project_id, webhook_receiver.url, SECRET)
    with sim_project.client() as c:
        c.post(devices_url(sim_project), json={"name": "via-api"})
    sim_project.control.console_create(sim_project.project_id, name="via-console")
    sim_project.control.flush_webhooks()
    assert [json.loads(r.body)["data"]["name"] for r in webhook_receiver.requests] == ["via-console"]


def test_webhook_delivery_retries_server_errors(simulator, sim_project, webhook_receiver):
    webhook_receiver.status = 503
    simulator.control.flush_webhooks()  # another test's deliveries still retrying would count here
    simulator.state.sender.reset_stats()
    sim_project.control.set_webhook(sim_project.project_id, webhook_receiver.url)
    sim_project.control.device_activity(sim_project.project_id, some_device(sim_project)["id"], {"x": 1})
    stats = sim_project.control.flush_webhooks()
    assert len(webhook_receiver.requests) == 3  # the first try plus two retries
    assert stats["failed"] == 1 and "503" in stats["lastError"]


def test_activity_does_not_wait_for_slow_receivers(sim_project):
    # A blackholed target: delivery happens in the background, the control call returns at once.
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(1)
    try:
        sim_project.control.set_webhook(sim_project.project_id, f"http://127.0.0.1:{sink.getsockname()[1]}")
        started = time.perf_counter()
        sim_project.control.device_activity(sim_project.project_id, some_device(sim_project)["id"], {"x": 1})
        assert time.perf_counter() - started < 2.0  # a delivery in line would wait out its 5 s timeout
    finally:
        sim_project.control.clear_webhook(sim_project.project_id)
        sink.close()
        sim_project.control.flush_webhooks()  # its retries end here, not in a later test


# ---- projects and reset ------------------------------------------------------------------


def test_add_project_with_chosen_id_and_key(simulator):
    info = simulator.control.add_project("tenant-fixed", "tenant-fixed-key", devices=12, seed=5)
    try:
        assert info["devices"] == 12 and info["apiKey"] == "tenant-fixed-key"
        with pytest.raises(SimulatorControlError, match="409"):
            simulator.control.add_project("tenant-fixed", "other-key")
        r = httpx.get(f"{simulator.url}/v1/projects/tenant-fixed/devices", headers={"x-api-key": "tenant-fixed-key"})
        assert r.json()["total"] == 12
        assert "tenant-fixed" in {p["projectId"] for p in simulator.control.projects()}
    finally:
        simulator.control.remove_project("tenant-fixed")


def test_reset_restores_the_start_state():
    with SimulatorServer(projects=[ProjectSpec("r", "r-key", devices=10, seed=2)]) as sim:
        headers = {"x-api-key": "r-key"}
        before = httpx.get(f"{sim.url}/v1/projects/r/devices", headers=headers).json()
        device = before["list"][0]
        sim.control.console_update("r", device["id"], name="changed")
        sim.control.add_project("extra", "extra-key")
        sim.control.set_faults(error_rate=1.0)
        sim.control.reset()
        after = httpx.get(f"{sim.url}/v1/projects/r/devices", headers=headers).json()
        assert after == before
        assert [p["projectId"] for p in sim.control.projects()] == ["r"]
        assert sim.control.faults()["error_rate"] == 0.0
        assert sim.control.stats()["total"] == 1


# ---- CLI and subprocess mode ---------------------------------------------------------------


def test_cli_command_options():
    result = CliRunner().invoke(simulator_command, ["--help"])
    assert result.exit_code == 0
    for option in ("--devices", "--seed", "--port", "--api-key", "--project-id", "--fail-rate", "--rate-limit"):
        assert option in result.output
    for option in ("--latency-ms", "--webhook-url", "--webhook-secret", "--events-url", "--extra-projects"):
        assert option in result.output


def test_cli_runs_a_server_with_faults():
    port = free_port()
    args = ["--devices", "20", "--port", str(port), "--api-key", "cli-key", "--project-id", "cli-p"]
    args += ["--fail-rate", "1.0", "--extra-projects", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "golioth_assets.simulator", *args], stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/_sim/health").raise_for_status()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        projects = {p["projectId"]: p for p in httpx.get(f"{url}/_sim/projects").json()["list"]}
        assert set(projects) == {"cli-p", "cli-p-1"} and projects["cli-p-1"]["apiKey"] == "cli-key-1"
        assert projects["cli-p"]["devices"] == 20
        r = httpx.get(f"{url}/v1/projects/cli-p/devices", headers={"x-api-key": "cli-key"})
        assert r.status_code == 500
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_subprocess_mode():
    sim = SimulatorServer(projects=[ProjectSpec("sp", "sp-key", devices=25, seed=1)]).start_subprocess()
    try:
        r = httpx.get(f"{sim.url}/v1/projects/sp/devices", headers={"x-api-key": "sp-key"})
        assert r.json()["total"] == 25
        assert sim.control.stats()["total"] == 1
        with pytest.raises(RuntimeError):
            sim.state  # noqa: B018 (state lives in the child)
    finally:
        sim.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{sim.url}/_sim/health", timeout=1)


# ---- churn while a listing pages ---------------------------------------------------------


def _page(client, project, page: int, per_page: int = 10) -> dict:
    return client.get(devices_url(project), params={"page": page, "perPage": per_page}).raise_for_status().json()


def _all_ids(project) -> list[str]:
    with project.client() as c:
        return [d["id"] for d in _page(c, project, 0, 100)["list"]]


def test_churn_serves_a_listing_as_an_in_order_reader_sees_it_whatever_the_request_order(sim_project_factory):
    """Deletes on the pages already read and creates after the last page, total unchanged: the
    first devices of page 2 slide onto page 1, already read, and are hidden; the deleted ones
    were read before they went. Requests out of order (as concurrent pages arrive) see the same."""
    orders = {"in order": [0, 1, 2, 3, 4], "out of order": [0, 4, 2, 3, 1]}
    hidden = {}
    for label, order in orders.items():
        project = sim_project_factory(devices=50, seed=3)
        before = _all_ids(project)
        project.control.set_churn(project.project_id, {"page": 2, "deleteRead": 4, "createEnd": 4})
        with project.client() as c:
            pages = {p: _page(c, project, p) for p in order}
        report = project.control.churn(project.project_id)
        [done] = report["done"]
        assert report["listings"] == 1 and (done["listing"], done["page"]) == (1, 2)
        assert {p["total"] for p in pages.values()} == {50}  # nothing tells the reader
        listed = [d["id"] for p in sorted(pages) for d in pages[p]["list"]]
        assert len(listed) == len(set(listed)) == 50
        assert set(done["deleted"]) <= set(before[:20]) and set(done["deleted"]) <= set(listed)  # read, then gone
        assert set(listed) == (set(before) - set(before[20:24])) | set(done["created"])  # 20..23 hidden
        hidden[label] = [before.index(i) for i in set(before) - set(listed) - set(done["deleted"])]
    # The same step hides the same positions whatever the order of the requests.
    assert sorted(hidden["in order"]) == sorted(hidden["out of order"]) == [20, 21, 22, 23]


def test_churn_creates_on_pages_already_read_repeat_devices_and_renames_do_not_move_them(sim_project_factory):
    project = sim_project_factory(devices=30, seed=4)
    before = _all_ids(project)
    project.control.set_churn(
        project.project_id, {"page": 1, "createRead": 3}, {"listing": 2, "page": 1, "renameRead": 2}
    )
    with project.client() as c:
        first = [_page(c, project, p) for p in range(4)]
        second = [_page(c, project, p) for p in range(4)]
    done = project.control.churn(project.project_id)["done"]
    # Listing 1: three devices inserted on page 0 push page 0's last three onto page 1: served twice.
    assert [p["total"] for p in first] == [30, 33, 33, 33]
    served = [d["id"] for p in first for d in p["list"]]
    assert sorted({i for i in served if served.count(i) > 1}) == sorted(before[7:10])
    assert len(served) == 33 and set(served) == set(before)  # the three new ones went unseen
    # Listing 2: a rename does not move a device; the renamed ones keep their place.
    names = {d["id"]: d["name"] for p in second for d in p["list"]}
    assert [d["id"] for p in second for d in p["list"]] == _all_ids(project)
    # Renamed on a page already read: the listing has the old name, Golioth the new one.
    assert done[1]["renamed"] and all(not names[i].endswith("-renamed") for i in done[1]["renamed"])
    assert all(get_device(project, i)["name"] == names[i] + "-renamed" for i in done[1]["renamed"])


def test_churn_control_refuses_bad_steps_and_can_be_cleared(sim_project):
    control, pid = sim_project.control, sim_project.project_id
    for bad in (
        {"deleteRead": 1},
        {"page": 1, "deleteReed": 1},
        {"page": 1, "deleteRead": -1},
        {"page": 1, "listing": 0},
    ):
        with pytest.raises(SimulatorControlError, match="400"):
            control.set_churn(pid, bad)
    control.set_churn(pid, {"page": 1, "deleteRead": 1})
    control.clear_churn(pid)
    assert control.churn(pid) == {"steps": [], "listings": 0, "done": []}
    assert len(_all_ids(sim_project)) == 50  # nothing fired
