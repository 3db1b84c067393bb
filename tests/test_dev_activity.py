"""The demo's simulated traffic (`golioth-sync dev`): device data often, console edits in bursts,
so that the demo starts about one Dagster run a minute and its run list stays readable."""

import json
import threading

from golioth_assets.cli.dev import DEMO_ACTIVITY, DEMO_INTERVAL_SECONDS, ActivityRate, _activity

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the simulator signs; this test only reads


def test_the_demo_starts_about_one_run_a_minute():
    ids = [f"d{i}" for i in range(50)]
    ticks = int(600 / DEMO_ACTIVITY.tick_seconds)  # ten minutes
    bursts = [DEMO_ACTIVITY.edits_at(t, ids) for t in range(1, ticks + 1)]
    bursts = [b for b in bursts if b]
    targeted_runs = len(bursts)  # the webhook sensor claims a burst's events in one tick: one run
    scheduled_runs = 600 // DEMO_INTERVAL_SECONDS
    assert (targeted_runs + scheduled_runs) / 10 <= 1.0
    assert all(len(b) == len(set(b)) == DEMO_ACTIVITY.burst_size for b in bursts)
    assert sum(len(b) for b in bursts) == DEMO_ACTIVITY.burst_size * targeted_runs


def test_console_edits_reach_golioth_in_bursts_of_distinct_devices(sim_project, webhook_receiver):
    """The activity thread against a real simulator, its signed console events to a receiver:
    each burst edits `burst_size` different devices at one tick."""
    sim_project.control.set_events(sim_project.project_id, webhook_receiver.url, SECRET)
    with sim_project.client() as client:
        listed = client.get(f"/v1/projects/{sim_project.project_id}/devices", params={"perPage": 10}).json()
    ids = [d["id"] for d in listed["list"]]
    fast = ActivityRate(tick_seconds=0.02, burst_every_ticks=5, burst_size=3, first_burst_tick=2)
    stop = threading.Event()
    worker = threading.Thread(target=_activity, args=(sim_project.control, stop, ids, fast, sim_project.project_id))
    worker.start()
    try:
        webhook_receiver.wait_for(6, timeout_s=30)
    finally:
        stop.set()
        worker.join(10)
    events = [json.loads(r.body) for r in webhook_receiver.requests]
    edits: dict[str, list[str]] = {}
    for event in events:
        assert event["type"] == "device.updated"
        burst = event["data"]["name"].rsplit("-", 1)[0]  # device-edited-in-console-<session>-<tick>-<n>
        edits.setdefault(burst, []).append(event["device_id"])
    complete = [devices for devices in edits.values() if len(devices) == fast.burst_size]
    assert len(complete) >= 2, edits
    assert all(len(set(devices)) == fast.burst_size for devices in complete)
    assert not set(complete[0]) & set(complete[1])  # the next burst edits other devices
