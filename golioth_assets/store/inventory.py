"""The Golioth inventory as last fetched (`golioth_inventory`) and Golioth's tags, blueprints and
cohorts by id and name (`golioth_references`).

The inventory asset writes here and the reconciliation reads from here, so the steps of a sync can
run in different processes (or pods) without pickles on one machine's disk.
"""

from __future__ import annotations

import hashlib
import marshal
from collections.abc import Sequence

import pandas as pd
from sqlalchemy.engine import Connection

from golioth_assets.store.bulk import read_frame, source

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
    golioth_created_at, golioth_updated_at, fingerprint, fetched_at)
SELECT %(org)s, r.golioth_device_id, r.name, coalesce(r.hardware_ids, '{{}}'), coalesce(r.tag_ids, '{{}}'),
       coalesce(r.tags, '{{}}'), r.blueprint_id, r.blueprint, r.cohort_id, r.cohort, coalesce(r.enabled, true),
       r.desired_state, r.status, r.last_seen_online, r.last_seen_offline, r.last_report,
       coalesce(r.firmware_versions, '{{}}'), r.settings_status, coalesce(r.metadata, '{{}}'),
       r.created_at, r.updated_at, r.fingerprint, now()
FROM {source},
     jsonb_to_record(s.doc) AS r(golioth_device_id text, name text, hardware_ids text[], tag_ids text[],
         tags text[], blueprint_id text, blueprint text, cohort_id text, cohort text, enabled boolean,
         desired_state jsonb, status text, last_seen_online timestamptz, last_seen_offline timestamptz,
         last_report timestamptz, firmware_versions jsonb, settings_status text, metadata jsonb,
         created_at timestamptz, updated_at timestamptz, fingerprint bigint)
ON CONFLICT (organization_id, golioth_device_id) DO UPDATE SET
    name = excluded.name, hardware_ids = excluded.hardware_ids, tag_ids = excluded.tag_ids,
    tags = excluded.tags, blueprint_id = excluded.blueprint_id, blueprint = excluded.blueprint,
    cohort_id = excluded.cohort_id, cohort = excluded.cohort, enabled = excluded.enabled,
    desired_state = excluded.desired_state, status = excluded.status,
    last_seen_online = excluded.last_seen_online, last_seen_offline = excluded.last_seen_offline,
    last_report = excluded.last_report, firmware_versions = excluded.firmware_versions,
    settings_status = excluded.settings_status, metadata = excluded.metadata,
    golioth_created_at = excluded.golioth_created_at, golioth_updated_at = excluded.golioth_updated_at,
    fingerprint = excluded.fingerprint, fetched_at = now()
"""


def fingerprints(frame: pd.DataFrame) -> list[int]:
    """A 64-bit hash of each fetched row's stored values (REMOTE_COLUMNS): blake2b of the row in
    marshal's version-0 format, which writes every value in full (no shared references, so equal
    values give equal bytes) and tells a missing value from the text "None". About 3 µs a row:
    a tenth of serializing the row to send it. A dict whose keys came in another order hashes
    differently: one needless rewrite, never a missed one; two different rows of one device
    colliding is a 2**-64 chance per changed row."""
    columns = []
    for column in [c for c in REMOTE_COLUMNS if c in frame]:
        values = frame[column]
        if isinstance(values.dtype, pd.DatetimeTZDtype) or values.dtype.kind == "M":
            columns.append(values.dt.as_unit("us").to_numpy("int64").tolist())  # NaT: the smallest int64
        else:
            columns.append(values.tolist())
    return [
        int.from_bytes(hashlib.blake2b(marshal.dumps(row, 0), digest_size=8).digest(), "little", signed=True)
        for row in zip(*columns)
    ]


def _write(conn: Connection, organization_id: str, frame: pd.DataFrame, prints: list[int]) -> int:
    if frame.empty:
        return 0
    rows = frame[[c for c in REMOTE_COLUMNS if c in frame]].assign(fingerprint=prints)
    from_item, params = source(conn, rows)
    return conn.exec_driver_sql(_UPSERT.format(source=from_item), {**params, "org": organization_id}).rowcount


def replace_inventory(conn: Connection, organization_id: str, frame: pd.DataFrame) -> int:
    """Replace the organization's whole inventory with a full fetch, in the caller's transaction:
    the rows the fetch lacks are deleted, and only the rows whose fingerprint differs are written
    (sending all 10,000 rows of a mostly unchanged fleet for the server to compare cost more than
    the rest of the fetch). So a row's `fetched_at` is when a fetch last found its values changed;
    when the last fetch ran is its run's `golioth_sync_log.started_at`. Returns the number of rows
    inserted or changed."""
    stored: dict[str, int | None] = dict(
        conn.exec_driver_sql(
            "SELECT golioth_device_id, fingerprint FROM golioth_inventory WHERE organization_id = %(org)s",
            {"org": organization_id},
        ).fetchall()
    )
    ids = frame["golioth_device_id"].tolist() if not frame.empty else []
    delete_inventory_rows(conn, organization_id, sorted(set(stored) - set(ids)))
    if frame.empty:
        return 0
    prints = fingerprints(frame)
    changed = [stored.get(i) != p for i, p in zip(ids, prints)]
    return _write(conn, organization_id, frame[changed], [p for p, c in zip(prints, changed) if c])


def upsert_inventory(conn: Connection, organization_id: str, frame: pd.DataFrame) -> int:
    """Insert or refresh some devices (a targeted sync re-reads only the devices it was asked about)."""
    if frame.empty:
        return 0
    return _write(conn, organization_id, frame, fingerprints(frame))


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
    """references: kind (tag/blueprint/cohort), golioth_id, name. One statement: the ones no longer
    there deleted, new and renamed ones written, unchanged ones left alone (every fetch and every
    Golioth write step stores them, mostly unchanged)."""
    rows = references[["kind", "golioth_id", "name"]] if not references.empty else []
    from_item, params = source(conn, rows)
    conn.exec_driver_sql(
        f"""
        WITH fetched AS (
            SELECT s.doc->>'kind' AS kind, s.doc->>'golioth_id' AS golioth_id, s.doc->>'name' AS name
            FROM {from_item}
        ), gone AS (
            DELETE FROM golioth_references r WHERE r.organization_id = %(org)s
            AND NOT EXISTS (SELECT 1 FROM fetched f WHERE f.kind = r.kind AND f.golioth_id = r.golioth_id)
        )
        INSERT INTO golioth_references (organization_id, kind, golioth_id, name)
        SELECT DISTINCT ON (kind, golioth_id) %(org)s, kind, golioth_id, name FROM fetched
        ON CONFLICT (organization_id, kind, golioth_id) DO UPDATE
            SET name = excluded.name, fetched_at = now()
            WHERE golioth_references.name IS DISTINCT FROM excluded.name
        """,
        {**params, "org": organization_id},
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
