"""Apply a plan's local side and its bookkeeping, in one transaction: local creates, updates,
observed fields and soft deletes; links; base snapshots for every write that succeeded (on either
side); conflicts; the audit entries.

A base snapshot only moves for a device field whose write succeeded, so a failure anywhere is
retried by the next run.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import pandas as pd
from sqlalchemy.engine import Connection

from golioth_assets.core.fields import DESIRED_PREFIX, OBSERVED_FIELDS, enabled_fields
from golioth_assets.core.normalize import canonicalize, decode
from golioth_assets.store import assignments, conflicts, devices, sync_log
from golioth_assets.store.services import Service


@dataclass
class LocalOutcome:
    counts: dict[str, int] = field(
        default_factory=lambda: {
            "created_local": 0,
            "updated_local": 0,
            "deleted_local": 0,
            "observed_local": 0,
            "skipped": 0,
        }
    )
    plan_status: list[dict] = field(default_factory=list)


def _remote_base(remote_rows: pd.DataFrame, fields: tuple[str, ...]) -> list[dict]:
    """Base snapshots for devices created locally from Golioth: the values we copied."""
    scalar = tuple(f for f in fields if f != "desired_state")
    canonical = canonicalize(remote_rows, scalar)
    bases = [{f: decode(f, v) for f, v in zip(scalar, row)} for row in canonical.itertuples(index=False)]
    if "desired_state" in fields:
        for base, desired in zip(bases, remote_rows["desired_state"]):
            base["desired_state"] = {k: v for k, v in (desired or {}).items() if v is not None}
    return bases


def apply_local(
    conn: Connection,
    service: Service,
    sync_log_id: int,
    plan: pd.DataFrame,
    local: pd.DataFrame,
    remote: pd.DataFrame,
) -> LocalOutcome:
    """plan: every decoded row of the run (remote rows carry the status the remote step gave them).
    local / remote: raw frames indexed by device_id / golioth_device_id."""
    org = service.organization_id
    fields = enabled_fields(frozenset(service.field_groups))
    out = LocalOutcome()
    entries: list[dict] = []
    planned = plan[plan["status"] == "planned"]
    local_rows = planned[planned["side"] == "local"]

    # 1. Devices new in Golioth → created locally, linked, base = what we copied.
    creates = local_rows[(local_rows["action"] == "create") & local_rows["device_id"].isna()]
    if not creates.empty:
        source = remote.loc[creates["golioth_device_id"]].copy()
        new_ids = [str(uuid.uuid4()) for _ in range(len(source))]
        frame = source.assign(device_id=new_ids)
        for group, column, empty in (
            ("tags", "tags", []),
            ("blueprint", "blueprint", None),
            ("cohort", "cohort", None),
            ("desired_state", "desired_state", {}),
        ):
            if group not in service.field_groups:
                frame[column] = [empty] * len(frame)
        devices.insert_devices(conn, org, frame)
        assignments.insert_links(
            conn,
            service.id,
            [
                {"device_id": d, "golioth_device_id": g, "base_snapshot": b}
                for d, g, b in zip(new_ids, source.index, _remote_base(source, fields))
            ],
        )
        out.counts["created_local"] = len(new_ids)
        out.plan_status += [{"id": int(i), "status": "applied", "error": None} for i in creates["id"]]
        entries += [
            {"device_id": d, "golioth_device_id": g, "side": "local", "action": "create"}
            for d, g in zip(new_ids, source.index)
        ]

    # 2. New matches by hardware id: link them; their "agree" rows below fill the base. A device an
    #    unfinished run created starts from the base the plan gives it (what a create leaves).
    links = planned[planned["action"] == "link"]
    assignments.insert_links(
        conn,
        service.id,
        [
            {"device_id": d, "golioth_device_id": g, **({"base_snapshot": b} if isinstance(b, dict) else {})}
            for d, g, b in zip(links["device_id"], links["golioth_device_id"], links["new_value"])
        ],
    )
    # Devices created in Golioth by the remote step were linked there; nothing to do here.

    # 3. Field updates, compare-and-set on the version this run read.
    applied_ids: set[int] = set()
    updates = local_rows[local_rows["action"] == "update"]
    recreated = local_rows[(local_rows["action"] == "create") & local_rows["device_id"].notna()]
    records = []
    rows_by_device: dict[str, list[int]] = defaultdict(list)
    for device_id, rows in updates.groupby("device_id", sort=False):
        record = {"device_id": device_id, "expected_version": int(local.at[device_id, "version"])}
        desired = dict(local.at[device_id, "desired_state"] or {})
        touched_desired = False
        for f, v in zip(rows["field"], rows["new_value"]):
            if f.startswith(DESIRED_PREFIX):
                key = f[len(DESIRED_PREFIX) :]
                desired.pop(key, None) if v is None else desired.__setitem__(key, v)
                touched_desired = True
            else:
                record[f] = v
        if touched_desired:
            record["desired_state"] = desired
        records.append(record)
        rows_by_device[device_id] += [int(i) for i in rows["id"]]
    # A delete-vs-modify conflict an operator settled for Golioth's copy of a device deleted
    # locally: undelete it, with Golioth's values.
    for device_id, gid in zip(recreated["device_id"], recreated["golioth_device_id"]):
        values = remote.loc[gid]
        record = {"device_id": device_id, "expected_version": int(local.at[device_id, "version"]), "deleted_at": None}
        record.update({f: values[f] for f in fields})
        records.append(record)
        rows_by_device[device_id] += [int(i) for i in recreated.loc[recreated["device_id"] == device_id, "id"]]
    done = set(devices.update_devices(conn, org, records))
    for device_id, ids in rows_by_device.items():
        status = "applied" if device_id in done else "skipped"
        error = None if status == "applied" else "the device was edited locally during the sync; next run retries"
        out.plan_status += [{"id": i, "status": status, "error": error} for i in ids]
        if status == "applied":
            applied_ids.update(ids)
    out.counts["updated_local"] = len(done & set(updates["device_id"]))
    out.counts["skipped"] = len(set(rows_by_device) - done)
    for device_id, rows in updates.groupby("device_id", sort=False):
        entries.append(
            {
                "device_id": device_id,
                "golioth_device_id": rows["golioth_device_id"].iloc[0],
                "side": "local",
                "action": "update",
                "status": "ok" if device_id in done else "skipped",
                "changes": {
                    f: {"old": o, "new": n} for f, o, n in zip(rows["field"], rows["old_value"], rows["new_value"])
                },
                "changed_by": rows["changed_by"].dropna().iloc[0] if rows["changed_by"].notna().any() else None,
            }
        )

    # 4. Observed fields (never conflicts, never versioned).
    observe = local_rows[local_rows["action"] == "observe"]
    if not observe.empty:
        observed = pd.DataFrame(list(observe["new_value"]))
        observed["device_id"] = observe["device_id"].to_numpy()
        written = observed[[c for c in ("device_id", *OBSERVED_FIELDS) if c in observed]]
        out.counts["observed_local"] = devices.update_observed(conn, org, written)
        out.plan_status += [{"id": int(i), "status": "applied", "error": None} for i in observe["id"]]
        # In the audit trail too, so that a device's history shows what Golioth reported.
        entries += [
            {
                "device_id": d,
                "golioth_device_id": g,
                "side": "local",
                "action": "observe",
                "changes": {f: {"new": v} for f, v in (new or {}).items()},
            }
            for d, g, new in zip(observe["device_id"], observe["golioth_device_id"], observe["new_value"])
        ]

    # 5. Soft deletes (propagated from Golioth), compare-and-set too.
    deletes = local_rows[local_rows["action"] == "delete"]
    if not deletes.empty:
        now = pd.Timestamp.now(tz="UTC").isoformat()
        deleted = set(
            devices.update_devices(
                conn,
                org,
                [
                    {"device_id": d, "expected_version": int(local.at[d, "version"]), "deleted_at": now}
                    for d in deletes["device_id"]
                ],
            )
        )
        for i, d, g in zip(deletes["id"], deletes["device_id"], deletes["golioth_device_id"]):
            ok = d in deleted
            out.plan_status.append(
                {
                    "id": int(i),
                    "status": "applied" if ok else "skipped",
                    "error": None if ok else "edited during the sync",
                }
            )
            entries.append(
                {
                    "device_id": d,
                    "golioth_device_id": g,
                    "side": "local",
                    "action": "delete",
                    "status": "ok" if ok else "skipped",
                }
            )
        assignments.delete_links(
            conn,
            service.id,
            [(d, g) for d, g in zip(deletes["device_id"], deletes["golioth_device_id"]) if d in deleted],
        )
        out.counts["deleted_local"] = len(deleted)

    # 6. Links whose Golioth device is gone (deleted by us) or that a delete could not propagate.
    remote_deleted = plan[(plan["side"] == "remote") & (plan["action"] == "delete") & (plan["status"] == "applied")]
    assignments.delete_links(conn, service.id, zip(remote_deleted["device_id"], remote_deleted["golioth_device_id"]))
    unlinks = planned[planned["action"] == "unlink"]
    both_gone = unlinks["reason"] == "gone on both sides"
    assignments.delete_links(
        conn, service.id, zip(unlinks.loc[both_gone, "device_id"], unlinks.loc[both_gone, "golioth_device_id"])
    )
    assignments.set_status(
        conn,
        service.id,
        [
            {"device_id": d, "golioth_device_id": g, "sync_status": "unlinked", "error": r}
            for d, g, r in zip(
                unlinks.loc[~both_gone, "device_id"],
                unlinks.loc[~both_gone, "golioth_device_id"],
                unlinks.loc[~both_gone, "reason"],
            )
        ],
    )
    entries += [
        {"device_id": d, "golioth_device_id": g, "side": "none", "action": "unlink", "error": r}
        for d, g, r in zip(unlinks["device_id"], unlinks["golioth_device_id"], unlinks["reason"])
    ]
    bookkeeping = planned[planned["action"].isin(["link", "unlink", "agree"])]
    out.plan_status += [{"id": int(i), "status": "applied", "error": None} for i in bookkeeping["id"]]
    applied_ids.update(int(i) for i in bookkeeping["id"])

    # 7. Base snapshots for every field write that succeeded on either side, and for agreements.
    remote_applied = plan[(plan["side"] == "remote") & (plan["status"] == "applied") & (plan["action"] == "update")]
    based = pd.concat(
        [
            plan[plan["id"].isin(applied_ids) & plan["action"].isin(["update", "agree"])],
            remote_applied,
        ]
    )
    assignments.merge_bases(conn, service.id, _base_records(based))

    # 8. Resolutions whose writes all succeeded are done; links show whether a conflict is open.
    statuses = {**dict(zip(plan["id"], plan["status"])), **{s["id"]: s["status"] for s in out.plan_status}}
    resolved = plan[plan["conflict_id"].notna()]
    finished = [
        int(cid)
        for cid, ids in resolved.groupby("conflict_id")["id"]
        if all(statuses.get(int(i)) == "applied" for i in ids)
    ]
    conflicts.mark(conn, finished, "applied")
    conflicts.refresh_link_status(conn, service.id)

    # 9. Devices with a failed write are marked, with the reason, for operators and the next run.
    failed = plan[(plan["status"] == "failed") & plan["device_id"].notna() & plan["golioth_device_id"].notna()]
    assignments.set_status(
        conn,
        service.id,
        [
            {"device_id": d, "golioth_device_id": g, "sync_status": "failed", "error": e}
            for (d, g), e in failed.groupby(["device_id", "golioth_device_id"])["error"].first().items()
        ],
    )

    sync_log.insert_entries(conn, sync_log_id, org, entries)
    sync_log.mark_plan(conn, out.plan_status)
    return out


def _base_records(rows: pd.DataFrame) -> list[dict]:
    records: dict[tuple[str, str], dict] = {}
    for d, g, f, v in zip(rows["device_id"], rows["golioth_device_id"], rows["field"], rows["new_value"]):
        if not isinstance(d, str) or not isinstance(g, str):
            continue
        record = records.setdefault((d, g), {"device_id": d, "golioth_device_id": g, "fields": {}, "desired_keys": {}})
        if f.startswith(DESIRED_PREFIX):
            record["desired_keys"][f[len(DESIRED_PREFIX) :]] = v
        else:
            record["fields"][f] = v
    return list(records.values())
