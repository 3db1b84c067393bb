"""Read the audit trail: runs (`golioth_sync_log`) and per-device changes (`golioth_sync_log_entries`).

A device is named by its local id (uuid), its Golioth id, or its exact local name; its history
covers both ids, so changes written to either side show up together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy.engine import Connection, Engine

from golioth_assets.actions.errors import InvalidInput, NotFound
from golioth_assets.store import history as history_store
from golioth_assets.store import services as services_store
from golioth_assets.store import sync_log as sync_log_store
from golioth_assets.store.local_table.connect import open_local_table
from golioth_assets.store.local_table.table import LocalTableError
from golioth_assets.store.sync_log import COUNT_COLUMNS

MAX_LIMIT = 10_000


def _check_limit(limit: int) -> int:
    if not 1 <= int(limit) <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
    return int(limit)


def _check_org(conn: Connection, organization_id: str) -> None:
    if not services_store.organization_exists(conn, organization_id):
        raise NotFound(f"unknown organization {organization_id!r}")


def runs(engine: Engine, organization_id: str, limit: int = 20) -> list[dict]:
    """An organization's runs, newest first, with their counts and status."""
    limit = _check_limit(limit)
    with engine.connect() as conn:
        _check_org(conn, organization_id)
        return sync_log_store.runs_of(conn, organization_id, limit)


def run_detail(
    engine: Engine, run_id: int, organization_id: str | None = None, limit: int = 500
) -> tuple[dict, list[dict]]:
    """One run and its per-device entries."""
    limit = _check_limit(limit)
    with engine.connect() as conn:
        run = sync_log_store.find_run(conn, int(run_id))
        if run is None or (organization_id is not None and run["organization_id"] != organization_id):
            raise NotFound(f"no run {run_id}" + (f" in organization {organization_id!r}" if organization_id else ""))
        entries = history_store.run_entries(conn, int(run_id), limit)
    return dict(run), entries


@dataclass
class DeviceHistory:
    organization_id: str
    device: dict | None  # the local row (None if the device only exists in Golioth)
    local_ids: list[str]
    golioth_ids: list[str]
    entries: list[dict] = field(default_factory=list)
    conflicts: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        name = (self.device or {}).get("name")
        ids = ", ".join(self.local_ids + self.golioth_ids)
        return f"{name} ({ids})" if name else ids

    def changes(self) -> list[dict]:
        """One row per field change (create/delete/unlink: one row with field '*'), newest first."""
        out = []
        for entry in self.entries:
            base = {
                k: entry[k]
                for k in (
                    "created_at",
                    "sync_log_id",
                    "dagster_run_id",
                    "side",
                    "action",
                    "status",
                    "changed_by",
                    "error",
                    "trigger",
                )
            }
            changes: dict[str, Any] = entry["changes"] or {}
            if not changes:
                out.append({**base, "field": "*", "old": None, "new": None})
            for name, change in sorted(changes.items()):
                change = change if isinstance(change, dict) else {"new": change}
                out.append({**base, "field": name, "old": change.get("old"), "new": change.get("new")})
        return out


def find_device(
    engine: Engine, conn: Connection, organization_id: str, ref: str
) -> tuple[dict | None, list[str], list[str]]:
    """(local row, local ids, Golioth ids) for a local id, Golioth id or exact local name. The
    local row is read through the organization's local table (maybe in another database)."""
    ref = ref.strip()
    if not ref:
        raise InvalidInput("give a device: its local id, Golioth id or name")
    side = _local_side(engine, conn, organization_id)
    local_ids: set[str] = set()
    golioth_ids: set[str] = set()
    their = side.engine.connect() if side else None
    try:
        present = side.table.existing_keys(their, [ref]) if side else []
        if present or history_store.local_id_known(conn, organization_id, ref):
            local_ids.add(present[0] if present else ref)
        elif history_store.golioth_id_known(conn, organization_id, ref):
            golioth_ids.add(ref)
        elif side:
            named = side.table.find_by_name(their, ref)
            if len(named) > 1:
                raise InvalidInput(f"{len(named)} devices of {organization_id!r} are named {ref!r}: give an id instead")
            local_ids.update(named)
        # Complete each side through the links and entries (any service of the organization).
        for device_id, golioth_id in history_store.linked_pairs(
            conn, organization_id, sorted(local_ids), sorted(golioth_ids)
        ):
            local_ids.add(device_id)
            golioth_ids.add(golioth_id)
        device = _device_row(side, their, sorted(local_ids)) if side and local_ids else None
    finally:
        if their is not None:
            their.close()
    return device, sorted(local_ids), sorted(golioth_ids)


def _local_side(engine: Engine, conn: Connection, organization_id: str):
    try:
        service = services_store.service_for_org(conn, organization_id)
        return open_local_table(engine, service)
    except (services_store.ServiceNotFound, LocalTableError):
        return None


def _device_row(side, their, local_ids: list[str]) -> dict | None:
    """The live row among these ids, else a deleted one, in the sync's vocabulary."""
    frame = side.table.load(their, local_ids)
    if frame.empty:
        return None
    frame = frame.sort_values("deleted_at", na_position="first")
    row = frame.iloc[0].to_dict()
    row["id"] = row.pop("device_id")
    return {k: (None if not isinstance(v, list | dict) and pd.isna(v) else v) for k, v in row.items()}


def device_history(engine: Engine, organization_id: str, device_ref: str, limit: int = 200) -> DeviceHistory:
    """Every recorded change of one device, both sides, newest first, plus its conflicts."""
    limit = _check_limit(limit)
    with engine.connect() as conn:
        _check_org(conn, organization_id)
        device, local_ids, golioth_ids = find_device(engine, conn, organization_id, device_ref)
        entries = history_store.device_entries(conn, organization_id, local_ids, golioth_ids, limit)
        if device is None and not entries and not golioth_ids:
            raise NotFound(f"no device {device_ref!r} in organization {organization_id!r}")
        found = history_store.device_conflicts(conn, organization_id, local_ids, golioth_ids)
        return DeviceHistory(organization_id, device, local_ids, golioth_ids, entries, found)


def run_counts(run: dict) -> dict[str, int]:
    return {k: int(run.get(k) or 0) for k in COUNT_COLUMNS}
