"""The Golioth inventory as last fetched (`golioth_inventory`) and Golioth's tags, blueprints and
cohorts by id and name (`golioth_references`).

The inventory asset writes here and the reconciliation reads from here, so the steps of a sync can
run in different processes (or pods) without pickles on one machine's disk.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from sqlalchemy.engine import Connection

from golioth_assets.store.bulk import read_frame, stage

REMOTE_COLUMNS = [
    "golioth_device_id",
    "name",
    "hardware_ids",
    "tag_ids",
    "tags",
    "blueprint_id",
    "blueprint",
    "cohort_id",
    "cohort",
    "enabled",
    "desired_state",
    "status",
    "last_seen_online",
    "last_seen_offline",
    "last_report",
    "firmware_versions",
    "settings_status",
    "metadata",
    "created_at",
    "updated_at",
]
TIMESTAMP_COLUMNS = ("last_seen_online", "last_seen_offline", "last_report", "created_at", "updated_at")

_UPSERT = """
INSERT INTO golioth_inventory (organization_id, golioth_device_id, name, hardware_ids, tag_ids, tags,
    blueprint_id, blueprint, cohort_id, cohort, enabled, desired_state, status, last_seen_online,
    last_seen_offline, last_report, firmware_versions, settings_status, metadata,
    golioth_created_at, golioth_updated_at, fetched_at)
SELECT %(org)s, r.golioth_device_id, r.name, coalesce(r.hardware_ids, '{{}}'), coalesce(r.tag_ids, '{{}}'),
       coalesce(r.tags, '{{}}'), r.blueprint_id, r.blueprint, r.cohort_id, r.cohort, coalesce(r.enabled, true),
       r.desired_state, r.status, r.last_seen_online, r.last_seen_offline, r.last_report,
       coalesce(r.firmware_versions, '{{}}'), r.settings_status, coalesce(r.metadata, '{{}}'),
       r.created_at, r.updated_at, now()
FROM {table} s,
     jsonb_to_record(s.doc) AS r(golioth_device_id text, name text, hardware_ids text[], tag_ids text[],
         tags text[], blueprint_id text, blueprint text, cohort_id text, cohort text, enabled boolean,
         desired_state jsonb, status text, last_seen_online timestamptz, last_seen_offline timestamptz,
         last_report timestamptz, firmware_versions jsonb, settings_status text, metadata jsonb,
         created_at timestamptz, updated_at timestamptz)
ON CONFLICT (organization_id, golioth_device_id) DO UPDATE SET
    name = excluded.name, hardware_ids = excluded.hardware_ids, tag_ids = excluded.tag_ids,
    tags = excluded.tags, blueprint_id = excluded.blueprint_id, blueprint = excluded.blueprint,
    cohort_id = excluded.cohort_id, cohort = excluded.cohort, enabled = excluded.enabled,
    desired_state = excluded.desired_state, status = excluded.status,
    last_seen_online = excluded.last_seen_online, last_seen_offline = excluded.last_seen_offline,
    last_report = excluded.last_report, firmware_versions = excluded.firmware_versions,
    settings_status = excluded.settings_status, metadata = excluded.metadata,
    golioth_created_at = excluded.golioth_created_at, golioth_updated_at = excluded.golioth_updated_at,
    fetched_at = now()
{only_changed}
"""

# The row's fetched values (fetched_at aside): a full fetch rewrites only the rows whose values moved.
_STORED = (
    "name, hardware_ids, tag_ids, tags, blueprint_id, blueprint, cohort_id, cohort, enabled, desired_state, "
    "status, last_seen_online, last_seen_offline, last_report, firmware_versions, settings_status, metadata, "
    "golioth_created_at, golioth_updated_at"
)
_ONLY_CHANGED = (
    f"WHERE (golioth_inventory.{_STORED.replace(', ', ', golioth_inventory.')}) "
    f"IS DISTINCT FROM (excluded.{_STORED.replace(', ', ', excluded.')})"
)


def replace_inventory(conn: Connection, organization_id: str, frame: pd.DataFrame) -> int:
    """Replace the organization's whole inventory with a full fetch, in the caller's transaction:
    the rows the fetch lacks are deleted, and only the rows whose values differ are written (a
    full sync of a mostly unchanged fleet rewrote every row: new tuples and index entries for
    nothing). So a row's `fetched_at` is when a fetch last found its values changed; when the
    last fetch ran is its run's `golioth_sync_log.started_at`. Returns the number of rows inserted
    or changed."""
    if frame.empty:
        conn.exec_driver_sql("DELETE FROM golioth_inventory WHERE organization_id = %(org)s", {"org": organization_id})
        return 0
    table = stage(conn, frame[[c for c in REMOTE_COLUMNS if c in frame]])
    conn.exec_driver_sql(
        f"""
        DELETE FROM golioth_inventory i WHERE i.organization_id = %(org)s
        AND NOT EXISTS (SELECT 1 FROM {table} s WHERE s.doc->>'golioth_device_id' = i.golioth_device_id)
        """,
        {"org": organization_id},
    )
    return conn.exec_driver_sql(
        _UPSERT.format(table=table, only_changed=_ONLY_CHANGED), {"org": organization_id}
    ).rowcount


def upsert_inventory(conn: Connection, organization_id: str, frame: pd.DataFrame) -> int:
    """Insert or refresh some devices (a targeted sync re-reads only the devices it was asked about)."""
    if frame.empty:
        return 0
    table = stage(conn, frame[[c for c in REMOTE_COLUMNS if c in frame]])
    return conn.exec_driver_sql(_UPSERT.format(table=table, only_changed=""), {"org": organization_id}).rowcount


def delete_inventory_rows(conn: Connection, organization_id: str, golioth_device_ids: Sequence[str]) -> int:
    if not golioth_device_ids:
        return 0
    return conn.exec_driver_sql(
        "DELETE FROM golioth_inventory WHERE organization_id = %(org)s AND golioth_device_id = ANY(%(ids)s)",
        {"org": organization_id, "ids": list(golioth_device_ids)},
    ).rowcount


def load_inventory(
    conn: Connection, organization_id: str, *, golioth_device_ids: Sequence[str] | None = None
) -> pd.DataFrame:
    # `metadata` stays in the table for SQL users; no step of a sync needs it back.
    sql = """
        SELECT golioth_device_id, name, hardware_ids, tag_ids, tags, blueprint_id, blueprint, cohort_id,
               cohort, enabled, desired_state, status, (extract(epoch FROM last_seen_online) * 1000000)::bigint,
               (extract(epoch FROM last_seen_offline) * 1000000)::bigint, (extract(epoch FROM last_report) * 1000000)::bigint, firmware_versions,
               settings_status, (extract(epoch FROM golioth_created_at) * 1000000)::bigint, (extract(epoch FROM golioth_updated_at) * 1000000)::bigint
        FROM golioth_inventory WHERE organization_id = %(org)s
    """
    params: dict = {"org": organization_id}
    if golioth_device_ids is not None:
        sql += " AND golioth_device_id = ANY(%(ids)s)"
        params["ids"] = list(golioth_device_ids)
    return read_frame(conn, sql, params, [c for c in REMOTE_COLUMNS if c != "metadata"], TIMESTAMP_COLUMNS)


def replace_references(conn: Connection, organization_id: str, references: pd.DataFrame) -> None:
    """references: kind (tag/blueprint/cohort), golioth_id, name."""
    conn.exec_driver_sql("DELETE FROM golioth_references WHERE organization_id = %(org)s", {"org": organization_id})
    if references.empty:
        return
    table = stage(conn, references[["kind", "golioth_id", "name"]])
    conn.exec_driver_sql(
        f"""
        INSERT INTO golioth_references (organization_id, kind, golioth_id, name)
        SELECT %(org)s, s.doc->>'kind', s.doc->>'golioth_id', s.doc->>'name' FROM {table} s
        ON CONFLICT DO NOTHING
        """,
        {"org": organization_id},
    )


def load_references(conn: Connection, organization_id: str) -> pd.DataFrame:
    rows = conn.exec_driver_sql(
        "SELECT kind, golioth_id, name FROM golioth_references WHERE organization_id = %(org)s",
        {"org": organization_id},
    ).fetchall()
    return pd.DataFrame.from_records(rows, columns=["kind", "golioth_id", "name"])


def duplicate_counts(conn: Connection, organization_id: str) -> tuple[int, int]:
    """(device ids, hardware ids) held by more than one inventory row: both 0 in a sound inventory."""
    return tuple(
        conn.exec_driver_sql(
            """
            SELECT (SELECT count(*) - count(DISTINCT golioth_device_id) FROM golioth_inventory
                    WHERE organization_id = %(org)s),
                   (SELECT count(*) - count(DISTINCT hw) FROM golioth_inventory, unnest(hardware_ids) hw
                    WHERE organization_id = %(org)s)
            """,
            {"org": organization_id},
        ).one()
    )


PREVIEW_COLUMNS = ["golioth_device_id", "name", "hardware_ids", "tags", "blueprint", "cohort", "enabled", "status"]


def preview_inventory(conn: Connection, organization_id: str, limit: int) -> pd.DataFrame:
    """The first `limit` inventory rows by name: a preview for operators."""
    rows = conn.exec_driver_sql(
        f"SELECT {', '.join(PREVIEW_COLUMNS)} FROM golioth_inventory WHERE organization_id = %(org)s "
        "ORDER BY name LIMIT %(limit)s",
        {"org": organization_id, "limit": int(limit)},
    ).fetchall()
    return pd.DataFrame.from_records(rows, columns=PREVIEW_COLUMNS)
