"""Issue 16, item 2: a sync run closes its golioth_sync_log row however it ends, from inside the run
(engine RunLog), without waiting for a sensor: success, a failed step, a failed blocking check, a
cancellation. Each through a real Dagster run against the simulator and PostgreSQL."""

import os
import signal
import threading
import time

import dagster as dg
import pytest

from golioth_assets.engine import sync as engine_sync
from golioth_assets.engine.sync import INTERRUPTED
from tests.fixtures.faults import WRITE_METHODS, check_results, materialize, sync_log_rows, write_requests


def _closed(h, result) -> dict:
    [row] = [r for r in sync_log_rows(h) if r["dagster_run_id"] == result.run_id]
    assert row["finished_at"] is not None and row["status"] != "running", row
    return row


def _materialized(result) -> list[str]:
    return [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()]


def test_success_closes_the_row(make_harness, instance, db_url):
    h = make_harness(devices=20)
    result = materialize(h, instance, db_url)
    assert result.success
    row = _closed(h, result)
    assert row["status"] == "success" and row["error"] is None and row["created_local"] == 20


def test_a_step_failing_mid_run_closes_the_row_failed(make_harness, instance, db_url, monkeypatch):
    """The key is revoked after the plan was made (the project deleted in the console, say): the
    Golioth writes stop at the first 401, the local step records nothing was applied, the row says why."""
    h = make_harness(devices=20)
    assert h.sync().status == "success"
    h.edit_local(h.local().index[0], name="renamed-locally")
    plan_step = engine_sync.plan_step

    def plan_then_revoke(*args, **kwargs):
        plan = plan_step(*args, **kwargs)
        h.project.control.set_project_deleted(h.project.project_id, True)
        return plan

    monkeypatch.setattr(engine_sync, "plan_step", plan_then_revoke)
    try:
        result = materialize(h, instance, db_url, raise_on_error=False)
    finally:
        h.project.control.set_project_deleted(h.project.project_id, False)
    assert not result.success
    assert _materialized(result) == ["golioth_device_inventory", "local_devices", "device_reconciliation"]
    row = _closed(h, result)
    assert row["status"] == "failed" and "rejected the API key" in row["error"]
    assert row["api_requests"] > 0  # the requests of the failed step are counted too


def test_a_failed_blocking_check_refuses_to_write_and_closes_the_row(make_harness, instance, db_url):
    """Devices re-provisioned while the list pages (deleted, created again with the same hardware
    ids under new ids) appear twice in the listing: the inventory holds a hardware id twice. The
    check fails, the engine plans and writes nothing, the row says why; the next sync converges."""
    h = make_harness(devices=250, allow_deletes=True)
    assert h.sync().status == "success"
    local_before = h.local(include_deleted=True)[["name", "fingerprint", "deleted_at"]].astype(str)
    control, project = h.project.control, h.project.project_id
    control.set_churn(project, {"page": 2, "recreateRead": 3})
    h.project.reset_stats()
    result = materialize(h, instance, db_url, raise_on_error=False)
    [done] = control.churn(project)["done"]
    control.clear_churn(project)
    with h.http() as http:
        moved = sum(
            len(http.get(f"/v1/projects/{project}/devices/{new}").json()["data"]["hardwareIds"])
            for _, new in done["recreated"]
        )

    assert not result.success
    assert check_results(result) == {"inventory_ids_unique": False, "inventory_accounts_for_total": True}
    assert _materialized(result) == ["golioth_device_inventory", "local_devices"]
    row = _closed(h, result)
    assert row["status"] == "failed" and "the Golioth inventory does not add up" in row["error"]
    assert f"0 device ids and {moved} hardware ids are held by more than one inventory row" in row["error"]
    # Nothing planned, nothing written on either side.
    with h.engine.connect() as conn:
        planned = conn.exec_driver_sql("SELECT count(*) FROM sync_plan WHERE sync_log_id = %(r)s", {"r": row["id"]})
        assert planned.scalar_one() == 0
    assert write_requests(h.project.stats()) == 0 and len(done["recreated"]) == 3
    assert h.local(include_deleted=True)[["name", "fingerprint", "deleted_at"]].astype(str).equals(local_before)

    # The next listing is consistent: the sync goes ahead (re-provisioned devices are the plan's
    # business: a device whose hardware id moved to a new Golioth id).
    again = materialize(h, instance, db_url)
    checks = check_results(again)
    assert again.success and checks["inventory_ids_unique"] and checks["inventory_accounts_for_total"]
    assert _closed(h, again)["status"] == "success"


def test_a_cancelled_run_closes_the_row(make_harness, instance, db_url):
    """Cancelling a run interrupts its op (Dagster raises in the op's thread, as the run worker
    does on termination): the row is closed as interrupted before the run ends."""
    h = make_harness(devices=20)
    h.project.set_faults(latency_ms=1500, methods=["GET"])  # every read waits: the run is mid-fetch
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signo, frame: received.append(signo))  # if one lands late
    cancel_error: list[BaseException] = []

    def cancel_once_mid_fetch() -> None:
        try:
            deadline = time.monotonic() + 60
            while not (h.project.stats()["inFlight"] and sync_log_rows(h) and instance.get_runs()):
                assert time.monotonic() < deadline, "the run never started its fetch"
                time.sleep(0.02)
            instance.report_run_canceling(instance.get_runs()[0])
            os.kill(os.getpid(), signal.SIGINT)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            cancel_error.append(exc)

    canceller = threading.Thread(target=cancel_once_mid_fetch)
    canceller.start()
    try:
        result = materialize(h, instance, db_url, raise_on_error=False)
    finally:
        canceller.join(60)
        signal.signal(signal.SIGINT, previous)
        h.project.clear_faults()
    assert not cancel_error and not received, (cancel_error, received)
    assert instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.CANCELED
    row = _closed(h, result)
    assert row["status"] == "failed" and row["error"] == INTERRUPTED
    assert h.local().empty and write_requests(h.project.stats()) == 0
    assert set(WRITE_METHODS).isdisjoint(h.project.stats()["byMethod"])


def test_the_engine_refuses_a_step_out_of_order_and_closes_the_row(make_harness):
    """Below Dagster too, the steps run in their one order: planning before fetching is refused."""
    from golioth_assets.engine.run import StepOutOfOrder, SyncRun
    from golioth_assets.engine.sync import SyncRequest, open_client

    h = make_harness(devices=3)
    with pytest.raises(StepOutOfOrder, match="'plan' called out of order \\(next: 'fetch'\\)"):
        with SyncRun(h.engine, h.service, SyncRequest(h.org), open_client=open_client) as run:
            run.plan()
    [row] = sync_log_rows(h)
    assert row["id"] == run.sync_log_id and row["status"] == "failed" and "out of order" in row["error"]
    assert h.project.stats()["total"] == 0  # nothing was fetched
