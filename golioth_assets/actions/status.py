"""Per-organization status: last sync, next due, counts, open conflicts, a link to the Dagster run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from golioth_assets.store import services as services_store
from golioth_assets.store import status as status_store
from golioth_assets.store.local_table.connect import open_local_table
from golioth_assets.store.local_table.table import LocalTableError

DEFAULT_DAGSTER_UI_URL = "http://127.0.0.1:3000"


def dagster_ui_url() -> str:
    return (os.environ.get("DAGSTER_UI_URL") or DEFAULT_DAGSTER_UI_URL).rstrip("/")


def dagster_run_url(run_id: str | None, base: str | None = None) -> str | None:
    if not run_id:
        return None
    return f"{(base or dagster_ui_url()).rstrip('/')}/runs/{run_id}"


@dataclass
class OrgStatus:
    organization_id: str
    service_id: int
    service_name: str
    sync_enabled: bool
    interval_seconds: int
    direction: str
    conflict_policy: str
    last_run: dict | None
    last_full_sync_started: datetime | None
    devices: int | None  # live local devices; None when the local table can't be read now
    linked: int
    failed_links: int
    pending_conflicts: int
    awaiting_apply: int
    dead_letters: int
    now: datetime

    @property
    def next_due(self) -> datetime | None:
        """When the schedule next syncs it: the last full sync's start + the interval (None: disabled)."""
        if not self.sync_enabled:
            return None
        if self.last_full_sync_started is None:
            return self.now
        return self.last_full_sync_started + timedelta(seconds=self.interval_seconds)

    @property
    def next_due_text(self) -> str:
        due = self.next_due
        if due is None:
            return "disabled"
        if self.last_full_sync_started is None:
            return "now (never synced)"
        if due <= self.now:
            return f"due now (since {due:%Y-%m-%d %H:%M:%S %Z})"
        return f"{due:%Y-%m-%d %H:%M:%S %Z} (in {_human(due - self.now)})"

    @property
    def dagster_url(self) -> str | None:
        return dagster_run_url((self.last_run or {}).get("dagster_run_id"))


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def organization_status(engine: Engine, organization_id: str | None = None) -> list[OrgStatus]:
    with engine.connect() as conn:
        now = status_store.database_now(conn)
        services = status_store.service_counts(conn, organization_id)
        last_runs = status_store.last_runs(conn, organization_id)
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    return [
        OrgStatus(
            organization_id=s["organization_id"],
            service_id=s["id"],
            service_name=s["name"],
            sync_enabled=s["sync_enabled"],
            interval_seconds=s["interval_seconds"],
            direction=s["direction"],
            conflict_policy=s["conflict_policy"],
            last_run=last_runs.get(s["organization_id"]),
            last_full_sync_started=s["last_full_sync_started"],
            devices=_local_device_count(engine, s["organization_id"]),
            linked=s["linked"],
            failed_links=s["failed_links"],
            pending_conflicts=s["pending_conflicts"],
            awaiting_apply=s["awaiting_apply"],
            dead_letters=s["dead_letters"],
            now=now,
        )
        for s in services
    ]


def _local_device_count(engine: Engine, organization_id: str) -> int | None:
    """Live devices in the organization's local table (maybe in another database)."""
    try:
        with engine.connect() as conn:
            service = services_store.service_for_org(conn, organization_id)
        side = open_local_table(engine, service)
        with side.engine.connect() as conn:
            return side.table.count_by_state(conn)["live"]
    except (LocalTableError, sa.exc.OperationalError):
        return None
