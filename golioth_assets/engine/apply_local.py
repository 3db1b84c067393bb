"""Apply a plan's local side, in named phases with explicit inputs and outputs:

    local_writes      plan + the rows as read now → what to write to the local table (pure)
    write_local       LocalWrites → LocalResults, in the local table's transaction (set-based)
    bookkeeping       plan + writes + results → Bookkeeping: links, base snapshots, plan statuses,
                      conflicts and audit entries owed to golioth-sync's own tables (pure, JSON-able)
    apply_bookkeeping Bookkeeping → golioth-sync's tables, in one transaction

The local table may live in another database than golioth-sync's state, so the two transactions
are tied by an intent row (engine/local_apply.py runs the protocol; docs/reliability.md).

A base snapshot only moves for a device field whose write succeeded, so a failure anywhere is
retried by the next run. Decisions are taken on the plan's structured fields (action, side,
status, kind), never on display text.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields

import numpy as np
import pandas as pd
from sqlalchemy.engine import Connection

from golioth_assets.core.fields import DESIRED_PREFIX, OBSERVED_FIELDS
from golioth_assets.core.normalize import canonicalize, decode
from golioth_assets.core.vocabulary import Action, PlanStatus, Reason, Side
from golioth_assets.store import assignments, conflicts, sync_log
from golioth_assets.store.local_table.table import LocalTable

SKIPPED_EDITED = "the device was edited locally during the sync; next run retries"


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


@dataclass
class LocalWrites:
    """What a run writes to the local table, decided before the table's transaction writes it."""

    creates: pd.DataFrame  # one row per device new in Golioth: plan_id, golioth_device_id, values
    updates: list[dict]  # compare-and-set records: device_id, fingerprint, fields to change
    update_rows: dict[str, list[int]]  # device_id → the plan rows its record carries
    observed: pd.DataFrame  # device_id + observed fields
    observe_ids: list[int]
    deletes: list[dict]  # compare-and-set soft deletes
    delete_rows: pd.DataFrame  # the plan's delete rows
    links: list[tuple[str, str]]  # (device_id, golioth_device_id) for the link column, if mapped


@dataclass
class LocalResults:
    """What the local table's transaction did: keys inserted, rows written (the rest were skipped)."""

    created: dict[str, str] = field(default_factory=dict)  # golioth_device_id → new local key
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    observed: int = 0  # rows whose observed fields were written


@dataclass
class Bookkeeping:
    """What golioth-sync's own tables owe a committed local transaction. JSON-able: it is stored in
    the intent row and applied from there, now or by recovery."""

    created_keys: list[str] = field(default_factory=list)  # rows inserted: proof of a commit, if need be
    new_links: list[dict] = field(default_factory=list)
    removed_links: list[list[str]] = field(default_factory=list)
    link_status: list[dict] = field(default_factory=list)
    bases: list[dict] = field(default_factory=list)
    plan_status: list[dict] = field(default_factory=list)
    conflicts_applied: list[int] = field(default_factory=list)
    entries: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        # Shallow: it is serialized at once (`asdict` deep-copied every entry first, 0.17 s at 10k).
        return {f.name: getattr(self, f.name) for f in dataclass_fields(self)}

    @classmethod
    def from_json(cls, payload: dict) -> Bookkeeping:
        return cls(**payload)


class _Rows:
    """A plan's rows selected by action, side and status through numpy masks: a steady run's plan
    of a few rows is selected a dozen times, where each pandas selection costs tens of µs."""

    def __init__(self, plan: pd.DataFrame) -> None:
        self.frame = plan
        self._values = {c: plan[c].to_numpy(dtype=object) for c in ("action", "side", "status")}
        self._none = plan.iloc[:0]

    def mask(self, **where: str | tuple[str, ...]) -> np.ndarray:
        mask = np.ones(len(self.frame), dtype=bool)
        for name, wanted in where.items():
            values = self._values[name]
            choices = wanted if isinstance(wanted, tuple) else (wanted,)
            hit = values == choices[0]
            for value in choices[1:]:
                hit |= values == value
            mask &= hit
        return mask

    def select(self, mask: np.ndarray | None = None, **where: str | tuple[str, ...]) -> pd.DataFrame:
        mask = self.mask(**where) if mask is None else mask
        return self.frame[mask] if mask.any() else self._none


def _status(plan_id, status: str, error: str | None = None) -> dict:
    return {"id": int(plan_id), "status": status, "error": error}


def _remote_base(remote_rows: pd.DataFrame, fields: tuple[str, ...]) -> list[dict]:
    """Base snapshots for devices created locally from Golioth: the values we copied."""
    scalar = tuple(f for f in fields if f != "desired_state")
    canonical = canonicalize(remote_rows, scalar)
    bases = [{f: decode(f, v) for f, v in zip(scalar, row)} for row in canonical.itertuples(index=False)]
    if "desired_state" in fields:
        for base, desired in zip(bases, remote_rows["desired_state"]):
            base["desired_state"] = {k: v for k, v in (desired or {}).items() if v is not None}
    return bases


# -- phase 1: what to write ---------------------------------------------------------------------------


def nothing_to_write(links: Sequence[tuple[str, str]] = ()) -> LocalWrites:
    """No row to write (the link column aside, where `links` has pairs)."""
    return LocalWrites(
        creates=pd.DataFrame(columns=["plan_id", "golioth_device_id"]),
        updates=[],
        update_rows={},
        observed=pd.DataFrame(columns=["device_id"]),
        observe_ids=[],
        deletes=[],
        delete_rows=pd.DataFrame(columns=["id", "device_id", "golioth_device_id"]),
        links=list(links),
    )


def local_writes(
    plan: pd.DataFrame,
    local: pd.DataFrame,
    remote: pd.DataFrame,
    fingerprints: dict[str, str],
    *,
    fields: tuple[str, ...],
    observed_fields: tuple[str, ...],
    links: Sequence[tuple[str, str]] = (),
) -> LocalWrites:
    """plan: every decoded row of the run; local / remote: raw frames indexed by device_id /
    golioth_device_id (local as read in the write transaction); fingerprints: each device's as the
    plan read it (an edit made since makes the write skip)."""
    rows = _Rows(_Rows(plan).select(status=PlanStatus.planned, side=Side.local))
    if rows.frame.empty:  # a steady run's usual case: nothing to write but links, maybe
        return nothing_to_write(links)
    fingerprint = {d: fingerprints.get(d, fp) for d, fp in zip(local["device_id"], local["fingerprint"])}
    updates, update_rows = _field_updates(rows, local, remote, fingerprint, fields)
    deletes = rows.select(action=Action.delete)
    return LocalWrites(
        creates=_creates(rows, remote, fields, observed_fields),
        updates=updates,
        update_rows=update_rows,
        observed=_observed(rows),
        observe_ids=[int(i) for i in rows.select(action=Action.observe)["id"]],
        deletes=[
            {"device_id": d, "fingerprint": fingerprint.get(d), "deleted_at": pd.Timestamp.now(tz="UTC").isoformat()}
            for d in deletes["device_id"]
            if d in fingerprint
        ],
        delete_rows=deletes,
        links=list(links),
    )


def _creates(
    rows: _Rows, remote: pd.DataFrame, fields: tuple[str, ...], observed_fields: tuple[str, ...]
) -> pd.DataFrame:
    """Devices new in Golioth, in Golioth's values: only the fields this table syncs."""
    creates = rows.select(rows.mask(action=Action.create) & rows.frame["device_id"].isna().to_numpy())
    source = remote.loc[list(creates["golioth_device_id"])]
    columns = [c for c in (*fields, *observed_fields) if c in source.columns]
    frame = source[columns].reset_index(drop=True)
    frame.insert(0, "golioth_device_id", list(source.index))
    frame.insert(0, "plan_id", [int(i) for i in creates["id"]])
    return frame


def _field_updates(
    rows: _Rows, local: pd.DataFrame, remote: pd.DataFrame, fingerprint: dict, fields: tuple[str, ...]
) -> tuple[list[dict], dict[str, list[int]]]:
    """One compare-and-set record per device: its changed fields (desired state merged key by key
    into the row's current one), or, for a device an operator brought back, all of Golioth's."""
    records: list[dict] = []
    by_device: dict[str, list[int]] = defaultdict(list)
    known = rows.frame["device_id"].isin(fingerprint).to_numpy()
    updates = rows.select(rows.mask(action=Action.update) & known)
    current = dict(zip(local["device_id"], local["desired_state"])) if "desired_state" in local else {}
    for device_id, changes in _by_device(updates, "field", "new_value", "id").items():
        record: dict = {"device_id": device_id, "fingerprint": fingerprint[device_id]}
        desired = dict(current.get(device_id) or {})
        touched_desired = False
        for f, v, _ in changes:
            if f.startswith(DESIRED_PREFIX):
                key = f[len(DESIRED_PREFIX) :]
                desired.pop(key, None) if v is None else desired.__setitem__(key, v)
                touched_desired = True
            else:
                record[f] = v
        if touched_desired:
            record["desired_state"] = desired
        records.append(record)
        by_device[device_id] += [int(i) for _, _, i in changes]
    # A delete-vs-modify conflict an operator settled for Golioth's copy of a device deleted
    # locally: undelete it, with Golioth's values.
    recreated = rows.select(rows.mask(action=Action.create) & known)
    for device_id, gid, plan_id in zip(recreated["device_id"], recreated["golioth_device_id"], recreated["id"]):
        values = remote.loc[gid]
        record = {"device_id": device_id, "fingerprint": fingerprint[device_id], "deleted_at": None}
        record.update({f: values[f] for f in fields})
        records.append(record)
        by_device[device_id].append(int(plan_id))
    return records, dict(by_device)


def _observed(rows: _Rows) -> pd.DataFrame:
    observe = rows.select(action=Action.observe)
    if observe.empty:
        return pd.DataFrame(columns=["device_id"])
    observed = pd.DataFrame(list(observe["new_value"]))
    observed["device_id"] = observe["device_id"].to_numpy()
    return observed[[c for c in ("device_id", *OBSERVED_FIELDS) if c in observed]]


# -- phase 2: write the local table (the caller owns its transaction) ------------------------------------


def write_local(conn: Connection, table: LocalTable, writes: LocalWrites) -> LocalResults:
    """All of a run's local writes, set-based: inserts with keys chosen first, compare-and-set
    updates, observed fields, soft deletes, the link column."""
    results = LocalResults()
    if not writes.creates.empty:
        keys = table.choose_keys(conn, len(writes.creates))
        frame = writes.creates.drop(columns=["plan_id"]).assign(device_id=keys)
        inserted = set(table.insert(conn, frame))
        results.created = {g: k for g, k in zip(frame["golioth_device_id"], keys) if k in inserted}
    results.updated = table.update(conn, writes.updates)
    if not writes.observed.empty:
        results.observed = table.update_observed(conn, writes.observed)
    if writes.deletes:
        results.deleted = table.update(conn, writes.deletes)
    table.set_links(conn, writes.links)
    return results


# -- phase 3: what golioth-sync's tables owe the local transaction ----------------------------------------


def bookkeeping(
    plan: pd.DataFrame,
    writes: LocalWrites,
    results: LocalResults,
    remote: pd.DataFrame,
    *,
    fields: tuple[str, ...],
    table_name: str,
) -> Bookkeeping:
    book = Bookkeeping(
        counts={"created_local": 0, "updated_local": 0, "deleted_local": 0, "observed_local": 0, "skipped": 0}
    )
    rows = _Rows(plan)
    _book_creates(book, writes, results, remote, fields, table_name)
    _book_links(book, rows)
    applied = _book_updates(book, plan, writes, results)
    _book_observed(book, plan, writes, results)
    _book_deletes(book, writes, results)
    applied |= _book_unlinks(book, rows)
    _book_bases(book, rows, applied)
    _book_conflicts_and_failures(book, rows)
    return book


def _book_creates(book: Bookkeeping, writes: LocalWrites, results: LocalResults, remote, fields, table_name) -> None:
    """Devices new in Golioth: linked, base = what we copied; a row refused by the table fails."""
    creates = writes.creates
    if creates.empty:
        return
    done = creates[creates["golioth_device_id"].isin(results.created)]
    bases = _remote_base(remote.loc[list(done["golioth_device_id"])], fields) if not done.empty else []
    book.new_links += [
        {"device_id": results.created[g], "golioth_device_id": g, "base_snapshot": b}
        for g, b in zip(done["golioth_device_id"], bases)
    ]
    refused = f"{table_name} already has a row with this key or one of its unique values"
    book.plan_status += [
        _status(i, PlanStatus.applied) if g in results.created else _status(i, PlanStatus.failed, refused)
        for i, g in zip(creates["plan_id"], creates["golioth_device_id"])
    ]
    book.entries += [
        {"device_id": results.created[g], "golioth_device_id": g, "side": Side.local, "action": Action.create}
        for g in done["golioth_device_id"]
    ]
    book.created_keys = [results.created[g] for g in done["golioth_device_id"]]
    book.counts["created_local"] = len(done)


def _book_links(book: Bookkeeping, rows: _Rows) -> None:
    """New matches by hardware id: link them; their "agree" rows fill the base. A device an
    unfinished run created starts from the base the plan gives it (what a create leaves)."""
    links = rows.select(status=PlanStatus.planned, action=Action.link)
    book.new_links += [
        {"device_id": d, "golioth_device_id": g, **({"base_snapshot": b} if isinstance(b, dict) else {})}
        for d, g, b in zip(links["device_id"], links["golioth_device_id"], links["new_value"])
    ]


def _book_updates(book: Bookkeeping, plan: pd.DataFrame, writes: LocalWrites, results: LocalResults) -> set[int]:
    """Compare-and-set results: applied, or skipped (edited locally meanwhile). Returns applied ids."""
    if not writes.update_rows:
        return set()
    done = set(results.updated)
    applied: set[int] = set()
    for device_id, ids in writes.update_rows.items():
        ok = device_id in done
        book.plan_status += [
            _status(i, PlanStatus.applied) if ok else _status(i, PlanStatus.skipped, SKIPPED_EDITED) for i in ids
        ]
        if ok:
            applied.update(ids)
    updates = plan[plan["id"].isin([i for ids in writes.update_rows.values() for i in ids])]
    updates = updates[updates["action"] == Action.update]
    book.counts["updated_local"] = len(done & set(updates["device_id"]))
    book.counts["skipped"] = len(set(writes.update_rows) - done)
    grouped = _by_device(updates, "golioth_device_id", "field", "old_value", "new_value", "changed_by")
    for device_id, rows in grouped.items():
        book.entries.append(
            {
                "device_id": device_id,
                "golioth_device_id": rows[0][0],
                "side": Side.local,
                "action": Action.update,
                "status": "ok" if device_id in done else "skipped",
                "changes": {f: {"old": o, "new": n} for _, f, o, n, _ in rows},
                "changed_by": next((c for *_, c in rows if not pd.isna(c)), None),
            }
        )
    return applied


def _by_device(rows: pd.DataFrame, *columns: str) -> dict[str, list[tuple]]:
    """The rows' values of `columns`, grouped by device in order of first appearance (as
    `groupby(sort=False)`, rows without a device left out), without a frame per group."""
    grouped: dict[str, list[tuple]] = {}
    for device_id, *values in zip(rows["device_id"], *(rows[c] for c in columns)):
        if not pd.isna(device_id):
            grouped.setdefault(device_id, []).append(tuple(values))
    return grouped


def _book_observed(book: Bookkeeping, plan: pd.DataFrame, writes: LocalWrites, results: LocalResults) -> None:
    """Observed fields are never compare-and-set, so every planned one is applied; they go into the
    audit trail too, so that a device's history shows what Golioth reported."""
    book.counts["observed_local"] = results.observed
    if not writes.observe_ids:
        return
    book.plan_status += [_status(i, PlanStatus.applied) for i in writes.observe_ids]
    rows = plan[plan["id"].isin(writes.observe_ids)]
    book.entries += [
        {
            "device_id": d,
            "golioth_device_id": g,
            "side": Side.local,
            "action": Action.observe,
            "changes": {f: {"new": v} for f, v in (new or {}).items()},
        }
        for d, g, new in zip(rows["device_id"], rows["golioth_device_id"], rows["new_value"])
    ]


def _book_deletes(book: Bookkeeping, writes: LocalWrites, results: LocalResults) -> None:
    """Soft deletes propagated from Golioth (compare-and-set too): the link goes with the device."""
    deleted = set(results.deleted)
    rows = writes.delete_rows
    for plan_id, d, g in zip(rows["id"], rows["device_id"], rows["golioth_device_id"]):
        ok = d in deleted
        book.plan_status.append(
            _status(plan_id, PlanStatus.applied)
            if ok
            else _status(plan_id, PlanStatus.skipped, "edited during the sync")
        )
        book.entries.append(
            {
                "device_id": d,
                "golioth_device_id": g,
                "side": Side.local,
                "action": Action.delete,
                "status": "ok" if ok else "skipped",
            }
        )
        if ok:
            book.removed_links.append([d, g])
    book.counts["deleted_local"] = len(deleted)


def _gone_on_both_sides(rows: pd.DataFrame) -> pd.Series:
    return rows["kind"] == Reason.gone_on_both_sides


def _book_unlinks(book: Bookkeeping, rows: _Rows) -> set[int]:
    """Links whose Golioth device is gone (deleted by us, or on both sides) go; others that a
    delete could not propagate are marked unlinked. Bookkeeping rows are applied."""
    remote_deleted = rows.select(side=Side.remote, action=Action.delete, status=PlanStatus.applied)
    book.removed_links += [[d, g] for d, g in zip(remote_deleted["device_id"], remote_deleted["golioth_device_id"])]
    kept_books = rows.select(status=PlanStatus.planned, action=(Action.link, Action.unlink, Action.agree))
    if kept_books.empty:
        return set()
    unlinks = kept_books[kept_books["action"] == Action.unlink]
    both_gone = _gone_on_both_sides(unlinks)
    book.removed_links += [
        [d, g] for d, g in zip(unlinks.loc[both_gone, "device_id"], unlinks.loc[both_gone, "golioth_device_id"])
    ]
    kept = unlinks[~both_gone]
    book.link_status += [
        {"device_id": d, "golioth_device_id": g, "sync_status": "unlinked", "error": r}
        for d, g, r in zip(kept["device_id"], kept["golioth_device_id"], kept["reason"])
    ]
    book.entries += [
        {"device_id": d, "golioth_device_id": g, "side": Side.none, "action": Action.unlink, "error": r}
        for d, g, r in zip(unlinks["device_id"], unlinks["golioth_device_id"], unlinks["reason"])
    ]
    book.plan_status += [_status(i, PlanStatus.applied) for i in kept_books["id"]]
    return {int(i) for i in kept_books["id"]}


def _book_bases(book: Bookkeeping, rows: _Rows, applied: set[int]) -> None:
    """Base snapshots for every field write that succeeded on either side, and for agreements."""
    remote_applied = rows.select(side=Side.remote, status=PlanStatus.applied, action=Action.update)
    parts = [remote_applied]
    if applied:
        mine = rows.frame["id"].isin(applied).to_numpy() & rows.mask(action=(Action.update, Action.agree))
        parts.insert(0, rows.select(mine))
    book.bases = _base_records(*parts)


def _book_conflicts_and_failures(book: Bookkeeping, rows: _Rows) -> None:
    """Resolutions whose writes all succeeded are done; devices with a failed write are marked."""
    plan = rows.frame
    resolved = rows.select(plan["conflict_id"].notna().to_numpy())
    if not resolved.empty:
        statuses = {**dict(zip(plan["id"], plan["status"])), **{s["id"]: s["status"] for s in book.plan_status}}
        book.conflicts_applied = [
            int(cid)
            for cid, ids in resolved.groupby("conflict_id")["id"]
            if all(statuses.get(int(i)) == PlanStatus.applied for i in ids)
        ]
    failed = rows.select(status=PlanStatus.failed)
    if failed.empty:
        return
    failed = failed[failed["device_id"].notna() & failed["golioth_device_id"].notna()]
    book.link_status += [
        {"device_id": d, "golioth_device_id": g, "sync_status": "failed", "error": e}
        for (d, g), e in failed.groupby(["device_id", "golioth_device_id"])["error"].first().items()
    ]


def _base_records(*parts: pd.DataFrame) -> list[dict]:
    records: dict[tuple[str, str], dict] = {}
    for rows in parts:
        _add_bases(records, rows)
    return list(records.values())


def _add_bases(records: dict[tuple[str, str], dict], rows: pd.DataFrame) -> None:
    for d, g, f, v in zip(rows["device_id"], rows["golioth_device_id"], rows["field"], rows["new_value"]):
        if not isinstance(d, str) or not isinstance(g, str):
            continue
        record = records.setdefault((d, g), {"device_id": d, "golioth_device_id": g, "fields": {}, "desired_keys": {}})
        if f.startswith(DESIRED_PREFIX):
            record["desired_keys"][f[len(DESIRED_PREFIX) :]] = v
        else:
            record["fields"][f] = v


# -- phase 4: golioth-sync's tables, in one transaction ----------------------------------------------------


def apply_bookkeeping(conn: Connection, service_id: int, organization_id: str, sync_log_id: int, book: Bookkeeping):
    """Links, base snapshots, conflicts, link statuses, audit entries, plan statuses and counts."""
    assignments.insert_links(conn, service_id, book.new_links)
    assignments.delete_links(conn, service_id, [(local, remote) for local, remote in book.removed_links])
    assignments.set_status(conn, service_id, [s for s in book.link_status if s["sync_status"] == "unlinked"])
    assignments.merge_bases(conn, service_id, book.bases)
    conflicts.mark(conn, book.conflicts_applied, "applied")
    conflicts.refresh_link_status(conn, service_id)
    assignments.set_status(conn, service_id, [s for s in book.link_status if s["sync_status"] != "unlinked"])
    sync_log.insert_entries(conn, sync_log_id, organization_id, book.entries)
    sync_log.mark_plan(conn, book.plan_status)
    sync_log.add_counts(conn, sync_log_id, book.counts)
