"""Read the audit trail: runs (`golioth_sync_log`) and per-device changes (`golioth_sync_log_entries`).

A device is named by its local id (uuid), its Golioth id, or its exact local name; its history
covers both ids, so changes written to either side show up together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from golioth_assets.actions.errors import InvalidInput, NotFound
from golioth_assets.store.sync_log import COUNT_COLUMNS

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
MAX_LIMIT = 10_000


def _check_limit(limit: int) -> int:
    if not 1 <= int(limit) <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
    return int(limit)


def _check_org(conn: Connection, organization_id: str) -> None:
    if not conn.execute(sa.text("SELECT 1 FROM organizations WHERE id = :o"), {"o": organization_id}).first():
        raise NotFound(f"unknown organization {organization_id!r}")


def runs(engine: Engine, organization_id: str, limit: int = 20) -> list[dict]:
    """An organization's runs, newest first, with their counts and status."""
    limit = _check_limit(limit)
    with engine.connect() as conn:
        _check_org(conn, organization_id)
        rows = conn.execute(
            sa.text("SELECT * FROM golioth_sync_log WHERE organization_id = :o ORDER BY id DESC LIMIT :limit"),
            {"o": organization_id, "limit": limit},
        ).mappings()
        return [dict(r) for r in rows]


def run_detail(
    engine: Engine, run_id: int, organization_id: str | None = None, limit: int = 500
) -> tuple[dict, list[dict]]:
    """One run and its per-device entries."""
    limit = _check_limit(limit)
    with engine.connect() as conn:
        run = (
            conn.execute(sa.text("SELECT * FROM golioth_sync_log WHERE id = :id"), {"id": int(run_id)})
            .mappings()
            .first()
        )
        if run is None or (organization_id is not None and run["organization_id"] != organization_id):
            raise NotFound(f"no run {run_id}" + (f" in organization {organization_id!r}" if organization_id else ""))
        entries = _entries(conn, "e.sync_log_id = :run", {"run": int(run_id)}, limit)
    return dict(run), entries


def _entries(conn: Connection, where: str, params: dict, limit: int) -> list[dict]:
    rows = conn.execute(
        sa.text(
            f"""
            SELECT e.id, e.sync_log_id, e.device_id::text AS device_id, e.golioth_device_id, e.side, e.action,
                   e.status, e.changes, e.error, e.changed_by, e.created_at,
                   l.dagster_run_id, l.trigger, l.started_at AS run_started_at,
                   coalesce(d.name, g.name) AS device_name
            FROM golioth_sync_log_entries e
            JOIN golioth_sync_log l ON l.id = e.sync_log_id
            LEFT JOIN devices d ON d.id = e.device_id
            LEFT JOIN golioth_inventory g ON g.organization_id = e.organization_id
                                          AND g.golioth_device_id = e.golioth_device_id
            WHERE {where}
            ORDER BY e.id DESC LIMIT :limit
            """
        ),
        {**params, "limit": limit},
    ).mappings()
    return [dict(r) for r in rows]


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


def find_device(conn: Connection, organization_id: str, ref: str) -> tuple[dict | None, list[str], list[str]]:
    """(local row, local ids, Golioth ids) for a local id, Golioth id or exact local name."""
    ref = ref.strip()
    if not ref:
        raise InvalidInput("give a device: its local id, Golioth id or name")
    local_ids: set[str] = set()
    golioth_ids: set[str] = set()
    if _UUID.match(ref):
        local_ids.add(ref.lower())
    else:
        found_golioth = conn.execute(
            sa.text(
                """
                SELECT 1 FROM device_service_assignments a JOIN device_services s ON s.id = a.service_id
                WHERE s.organization_id = :o AND a.golioth_device_id = :g
                UNION ALL SELECT 1 FROM golioth_inventory WHERE organization_id = :o AND golioth_device_id = :g
                UNION ALL SELECT 1 FROM golioth_sync_log_entries WHERE organization_id = :o AND golioth_device_id = :g
                LIMIT 1
                """
            ),
            {"o": organization_id, "g": ref},
        ).first()
        if found_golioth:
            golioth_ids.add(ref)
        else:
            named = (
                conn.execute(
                    sa.text(
                        "SELECT id::text FROM devices WHERE organization_id = :o AND name = :n ORDER BY deleted_at NULLS FIRST"
                    ),
                    {"o": organization_id, "n": ref},
                )
                .scalars()
                .all()
            )
            if len(named) > 1:
                raise InvalidInput(f"{len(named)} devices of {organization_id!r} are named {ref!r}: give an id instead")
            local_ids.update(named)
    # Complete each side through the links (any service of the organization).
    links = conn.execute(
        sa.text(
            """
            SELECT a.device_id::text, a.golioth_device_id FROM device_service_assignments a
            JOIN device_services s ON s.id = a.service_id
            WHERE s.organization_id = :o AND (a.device_id::text = ANY(:l) OR a.golioth_device_id = ANY(:g))
            UNION
            SELECT DISTINCT device_id::text, golioth_device_id FROM golioth_sync_log_entries
            WHERE organization_id = :o AND device_id IS NOT NULL AND golioth_device_id IS NOT NULL
              AND (device_id::text = ANY(:l) OR golioth_device_id = ANY(:g))
            """
        ),
        {"o": organization_id, "l": sorted(local_ids), "g": sorted(golioth_ids)},
    ).all()
    for device_id, golioth_id in links:
        local_ids.add(device_id)
        golioth_ids.add(golioth_id)
    device = None
    if local_ids:
        row = (
            conn.execute(
                sa.text(
                    "SELECT id::text AS id, name, hardware_ids, tags, blueprint, cohort, enabled, desired_state, status, "
                    "version, updated_at, deleted_at FROM devices WHERE organization_id = :o AND id::text = ANY(:l) "
                    "ORDER BY deleted_at NULLS FIRST LIMIT 1"
                ),
                {"o": organization_id, "l": sorted(local_ids)},
            )
            .mappings()
            .first()
        )
        device = dict(row) if row else None
    return device, sorted(local_ids), sorted(golioth_ids)


def device_history(engine: Engine, organization_id: str, device_ref: str, limit: int = 200) -> DeviceHistory:
    """Every recorded change of one device, both sides, newest first, plus its conflicts."""
    limit = _check_limit(limit)
    with engine.connect() as conn:
        _check_org(conn, organization_id)
        device, local_ids, golioth_ids = find_device(conn, organization_id, device_ref)
        params = {"o": organization_id, "l": local_ids, "g": golioth_ids}
        entries = _entries(
            conn,
            "e.organization_id = :o AND (e.device_id::text = ANY(:l) OR e.golioth_device_id = ANY(:g))",
            params,
            limit,
        )
        if device is None and not entries and not golioth_ids:
            raise NotFound(f"no device {device_ref!r} in organization {organization_id!r}")
        conflicts = conn.execute(
            sa.text(
                """
                SELECT id, field, conflict_type, status, base_value, local_value, remote_value, resolution,
                       resolved_value, resolved_by, resolved_at, applied_at, detected_at
                FROM device_conflicts
                WHERE organization_id = :o AND (device_id::text = ANY(:l) OR golioth_device_id = ANY(:g))
                ORDER BY id DESC
                """
            ),
            params,
        ).mappings()
        return DeviceHistory(organization_id, device, local_ids, golioth_ids, entries, [dict(c) for c in conflicts])


def run_counts(run: dict) -> dict[str, int]:
    return {k: int(run.get(k) or 0) for k in COUNT_COLUMNS}
