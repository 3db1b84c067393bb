"""Issue 15, item 4: every request and retry a sync makes (the convergence self-check included) is
counted in the sync log, the Dagster metadata and what `golioth-sync sync` prints, and matches the
simulator's own counters under injected 429s. Observed-field writes are counted (observed_local)
and appear in a device's history."""

from __future__ import annotations

import dagster as dg
import pytest
from click.testing import CliRunner

from golioth_assets.actions import history
from golioth_assets.cli.main import cli
from golioth_assets.core.vocabulary import RunTag
from golioth_assets.simulator import FaultConfig
from tests.fixtures.faults import bulk_create_local, bulk_edit_local, sync_log_rows

GOLIOTH_STEPS = ("golioth_device_inventory", "golioth_device_writes", "local_device_writes")


@pytest.fixture
def dagster_env(db_env, tmp_path, monkeypatch):
    """What `prepare()` needs to launch runs in this process: a throwaway DAGSTER_HOME (SQLite
    storage) and GOLIOTH_SYNC_HOME; the variables it sets are restored afterwards."""
    yaml = tmp_path / "dagster.yaml"
    yaml.write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("GOLIOTH_SYNC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GOLIOTH_SYNC_DAGSTER_YAML", str(yaml))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    monkeypatch.setenv("GOLIOTH_SYNC_DAGSTER_PG_URL", "unused-with-sqlite-storage")
    return tmp_path / "home" / "dagster"


def _summary(output: str) -> dict[str, str]:
    """The summary table `golioth-sync sync` prints: label → value."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) == 4 and cells[1]:
            rows[cells[1]] = cells[2]
    return rows


def _metadata(dagster_home, run_id: str) -> dict[str, dict]:
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    return {
        r.event_log_entry.dagster_event.asset_key.to_user_string(): {
            k: v.value for k, v in r.event_log_entry.dagster_event.materialization.metadata.items()
        }
        for r in records
    }


@pytest.mark.slow
def test_requests_and_retries_match_the_simulators_counters_under_429s(dagster_env, make_harness):
    h = make_harness(devices=200, seed=71)
    assert h.sync().status == "success"  # the import, without faults
    local = sorted(h.local().index)
    bulk_edit_local(h, local[:30], "counted")  # 30 PATCHes: the self-check reads Golioth's answers
    for device_id in local[30:33]:  # 3 state writes: a PUT answers nothing, so the self-check re-reads them
        h.edit_local(device_id, desired_state={"counted": True})
    bulk_create_local(h, 4, "counted-new")  # 4 creates
    observed = [h.golioth_id_of(d) for d in local[40:45]]
    for gid in observed:  # devices that talked to Golioth: observed fields move
        h.project.control.device_activity(h.project.project_id, gid, firmware_version="2.0.1")
    h.project.set_faults(FaultConfig(rate_limit_share=0.12, retry_after_s=0, seed=5))
    h.project.reset_stats()

    result = CliRunner().invoke(cli, ["sync", "--org", h.org], env={"COLUMNS": "250"})
    stats = h.project.stats()
    h.project.clear_faults()
    assert result.exit_code == 0, result.output

    # The simulator's own counters: every request it answered, and the 429s (each one retried).
    served, limited = stats["total"], stats["byStatus"].get("429", 0)
    assert limited > 0 and stats["inFlight"] == 0
    # (404s: LightDB State reads of devices without state, answered and never retried.)
    assert set(stats["byStatus"]) - {"404"} == {"200", "429"}
    row = sync_log_rows(h)[-1]
    assert row["status"] == "success"
    # The sync log.
    assert (row["api_requests"], row["api_retries"]) == (served, limited)
    # The Dagster metadata: each Golioth-facing step's share adds up, and the run's totals.
    meta = _metadata(dagster_env, row["dagster_run_id"])
    assert sum(meta[a]["golioth_requests"] for a in GOLIOTH_STEPS) == served
    assert sum(meta[a]["golioth_retries"] for a in GOLIOTH_STEPS) == limited
    assert sum(meta[a].get("golioth_status_429", 0) for a in GOLIOTH_STEPS) == limited
    assert meta["local_device_writes"]["golioth_requests"] >= 6  # the self-check's own reads count (2 per state write)
    assert (meta["local_device_writes"]["run_api_requests"], meta["local_device_writes"]["run_api_retries"]) == (
        served,
        limited,
    )
    # What the CLI prints.
    summary = _summary(result.output)
    assert (summary["Golioth API requests"], summary["Retries"]) == (str(served), str(limited))

    # Observed fields: counted apart from field updates, and in the devices' history.
    assert row["observed_local"] >= len(observed) and row["updated_local"] == 0
    assert summary["Observed fields updated locally"] == str(row["observed_local"])
    for gid in observed:
        found = history.device_history(h.engine, h.org, gid)
        entries = [c for c in found.changes() if c["action"] == "observe" and c["sync_log_id"] == row["id"]]
        assert {"firmware_versions", "last_seen_online"} <= {c["field"] for c in entries}, found.changes()
    with dg.DagsterInstance.from_config(str(dagster_env)) as instance:
        [record] = instance.get_run_records(dg.RunsFilter(tags={RunTag.org: h.org}))
    assert record.dagster_run.run_id == row["dagster_run_id"]


def test_a_failed_fetch_still_counts_its_requests(make_harness):
    """Requests a failing step made count too (they used to be lost with the step)."""
    h = make_harness(devices=5)
    h.project.set_faults(unavailable_rate=1.0, methods=["GET"], error_retry_after_s=0)  # retries at once
    h.project.reset_stats()
    from golioth_assets.engine.sync import SyncFailed

    with pytest.raises(SyncFailed):
        h.sync()
    stats = h.project.stats()
    h.project.clear_faults()
    row = sync_log_rows(h)[-1]
    assert row["status"] == "failed" and row["finished_at"] is not None
    assert row["api_requests"] == stats["total"] > 1 and row["api_retries"] == stats["total"] - 1
