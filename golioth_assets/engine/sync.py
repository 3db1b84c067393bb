"""One sync of one organization, as four steps that read their input from PostgreSQL and write their
output there:

    fetch   Golioth → golioth_inventory (a full list, or a GET per device for a targeted sync), with
            the inventory's accounting in the run's log row
    plan    inventory + local devices + base snapshots → sync_plan, device_conflicts (refused when
            the inventory does not add up)
    remote  sync_plan (Golioth side) → Golioth
    local   sync_plan (local side) → the local table, links, base snapshots, audit entries

The local table is reached only through its `LocalTable` (store/local_table/): golioth-sync's
built-in `devices`, or the product's own table described by the service's mapping, maybe in
another database. Each step opens it afresh, and a mapping that no longer fits the live table
stops the step before anything is written, naming the column.

RunLog holds the run's golioth_sync_log row for the whole run. sync_organization runs the four in
one call (the engine's own callers and tests); engine/run.py runs them for the Dagster op.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import httpx
import pandas as pd
from sqlalchemy.engine import Engine

from golioth_assets.core.fields import DESIRED_PREFIX, FIELD_KIND, SYNCED_FIELDS
from golioth_assets.core.normalize import encode
from golioth_assets.core.plan import Plan, plan_sync
from golioth_assets.core.policy import SyncSettings
from golioth_assets.core.tables import changes_table, conflicts_table
from golioth_assets.engine.apply_remote import RemoteOutcome, apply_remote
from golioth_assets.engine.golioth_frames import References, devices_to_frame, fetch_references, records_to_frame
from golioth_assets.engine.local_apply import LocalApplyPending, apply_plan_locally, recover
from golioth_assets.golioth import errors
from golioth_assets.golioth.client import GoliothClient
from golioth_assets.golioth.gcpause import gc_paused
from golioth_assets.golioth.models import Device, DeviceRecord, device_record
from golioth_assets.golioth.stats import ClientStats
from golioth_assets.store import assignments, conflicts, inventory, services, sync_log
from golioth_assets.store.local_table.connect import LocalSide, open_local_table
from golioth_assets.store.local_table.table import LocalTable, LocalTableError

log = logging.getLogger(__name__)


# Garbage collection: the heavy steps below run with the cyclic garbage collector paused (golioth.gcpause). At 100k
# devices a step holds millions of acyclic containers (parsed devices, frames of lists and dicts),
# and each generation-2 collection rescanned all of them: 15 of them took 7 of a 25 s sync. The
# collector runs again once the step is over, so a cycle made during a step is only collected late.


class SyncFailed(RuntimeError):
    """The run could not complete (e.g. Golioth rejected the API key); the sync log says why."""


class InventoryInconsistent(SyncFailed):
    """The fetched inventory does not add up: nothing may be planned or written from it."""


INTERRUPTED = "the run was interrupted before it finished (cancelled, or its process was stopped)"


@dataclass
class SyncRequest:
    organization_id: str
    direction: str | None = None  # overrides the service's direction for this run
    policy: str | None = None  # overrides the service's conflict policy (all groups) for this run
    dry_run: bool = False
    device_ids: Sequence[str] | None = None  # local ids or Golioth ids: a targeted sync
    trigger: str = "manual"
    dagster_run_id: str | None = None


@dataclass
class Scope:
    """Which devices a targeted sync looks at (None everywhere: a full sync)."""

    local_ids: list[str] | None = None
    golioth_ids: list[str] | None = None
    links: pd.DataFrame | None = field(default=None, repr=False)  # the links between the two, when resolved

    @property
    def full(self) -> bool:
        return self.local_ids is None


@dataclass
class SyncResult:
    sync_log_id: int
    status: str
    counts: dict[str, int] = field(default_factory=dict)
    plan: pd.DataFrame | None = None
    conflicts: pd.DataFrame | None = None
    seconds: float = 0.0


def settings_for(service: services.Service, request: SyncRequest, table: LocalTable | None = None) -> SyncSettings:
    """The run's settings. With the local table known, they are the effective ones: fields the
    table doesn't map are not synced, and without a soft-delete column nothing is deleted."""
    return SyncSettings(
        direction=request.direction or service.direction,
        policy=request.policy or service.conflict_policy,
        policy_overrides={} if request.policy else {str(k): str(v) for k, v in service.policy_overrides.items()},
        field_groups=frozenset(service.field_groups),
        allow_deletes=service.allow_deletes and (table is None or table.deletes_possible),
        unsynced_fields=frozenset(f for f in SYNCED_FIELDS if table is not None and f not in table.synced_fields),
    )


def open_client(
    service: services.Service, *, transport: httpx.BaseTransport | None = None, max_concurrency: int = 16
) -> GoliothClient:
    return GoliothClient(
        api_key=service.api_key(),
        project_id=service.project_id,
        base_url=service.base_url,
        organization_id=service.golioth_organization_id,
        transport=transport,
        max_concurrency=max_concurrency,
        key_env_var=service.api_key_env,
    )


# -- the run's log row ---------------------------------------------------------------------------------


def begin(db: Engine, service: services.Service, request: SyncRequest) -> int:
    """Open the run's golioth_sync_log row. Later steps (maybe in other processes) find it again by
    id or by Dagster run id, and rebuild the request from it."""
    settings = settings_for(service, request)
    try:
        recover(db, service)  # an earlier run's local writes, interrupted: settle them first
    except (LocalApplyPending, LocalTableError) as exc:
        log.warning("%s: %s", service.organization_id, exc)
    with db.begin() as conn:
        sync_log_id = sync_log.start_run(
            conn,
            organization_id=service.organization_id,
            service_id=service.id,
            direction=settings.direction,
            policy=settings.policy,
            trigger=request.trigger,
            dry_run=request.dry_run,
            scope=request.device_ids,
            dagster_run_id=request.dagster_run_id,
            details={"request": asdict(request)},
        )
    return sync_log_id


def request_of(run: dict) -> SyncRequest:
    """The request a log row was opened for."""
    saved = (run.get("details") or {}).get("request") or {}
    return SyncRequest(**{**saved, "organization_id": run["organization_id"]})


# -- scope ----------------------------------------------------------------------------------------


def resolve_scope(db: Engine, service: services.Service, device_ids: Sequence[str] | None) -> Scope:
    """Split requested ids into local and Golioth ids, each side completed through the links. An
    id is local when a link or the local table has it (keys may be uuids, integers or text, like
    Golioth's ids); every other id is a Golioth id."""
    if device_ids is None:
        return Scope()
    ids = list(dict.fromkeys(device_ids))
    side = open_local_table(db, service)
    with db.connect() as conn:
        linked = assignments.load_links(conn, service.id, device_ids=ids, golioth_device_ids=[])
    with side.engine.connect() as their:
        present = set(side.table.existing_keys(their, ids))
    local = present | (set(linked["device_id"]) & set(ids))
    local_ids = [i for i in ids if i in local]
    golioth_ids = [i for i in ids if i not in local]
    with db.connect() as conn:
        links = assignments.load_links(conn, service.id, device_ids=local_ids, golioth_device_ids=golioth_ids)
    return Scope(
        local_ids=sorted(set(local_ids) | set(links["device_id"])),
        golioth_ids=sorted(set(golioth_ids) | set(links["golioth_device_id"])),
        links=links,
    )


# -- fetch ------------------------------------------------------------------------------------------


@dataclass
class InventoryCount:
    """What a fetch saw, counted so that the blocking inventory check asserts what matters: every
    device the API says exists is accounted for, and none counts twice.

    A full listing: the API reports `api_total`; its pages served `listed` distinct devices plus
    `duplicates` (served twice when devices created on pages already read shifted the rest right).
    Linked devices the listing lacked (hidden when deletes on pages already read shifted the rest
    left, or really deleted) were fetched one by one: `confirmed` exist, `gone` answered 404.
    A targeted sync reads its `requested` devices one by one, so it has no total."""

    api_total: int | None = None
    listed: int = 0
    duplicates: int = 0
    relistings: int = 0
    requested: int = 0
    confirmed: int = 0
    gone: int = 0
    duplicate_ids: int = 0  # rows of the stored inventory sharing a device id
    duplicate_hardware_ids: int = 0  # ... or a hardware id

    @property
    def stored(self) -> int:
        return self.listed + self.confirmed

    @property
    def accounts_for_total(self) -> bool:
        """Every device the API's `total` counts was served by a page (a page that came back short
        would hide devices with nothing to tell which). Linked devices the listing lacked were
        looked up one by one, so each is confirmed or gone: none can go missing unnoticed."""
        return self.api_total is None or self.listed + self.duplicates == self.api_total

    @property
    def ids_unique(self) -> bool:
        return not (self.duplicate_ids or self.duplicate_hardware_ids)

    def problems(self) -> list[str]:
        found = []
        if not self.accounts_for_total:
            found.append(
                f"the listing's pages held {self.listed + self.duplicates} devices for the API's total of "
                f"{self.api_total}: a page came back short"
            )
        if not self.ids_unique:
            found.append(
                f"{self.duplicate_ids} device ids and {self.duplicate_hardware_ids} hardware ids are held by "
                "more than one inventory row"
            )
        return found


@dataclass
class FetchResult:
    fetched: int
    total: int | None
    missing: list[str]
    references: References
    requests: int = 0
    retries: int = 0
    count: InventoryCount = field(default_factory=InventoryCount)
    # The devices just stored, as load_inventory would read them back: a plan in the same process
    # takes them from here instead of reading 10,000 rows it has just written.
    devices: pd.DataFrame | None = field(default=None, repr=False)


@gc_paused()  # see "Garbage collection" at the top
def fetch_step(
    db: Engine,
    service: services.Service,
    client: GoliothClient,
    scope: Scope,
    sync_log_id: int | None = None,
    *,
    refs: References | None = None,
    answered: tuple[list[Device], list[str]] = ([], []),
) -> FetchResult:
    """Read Golioth into golioth_inventory. A device that a link expects but the list lacks is
    confirmed with a GET before anyone treats it as deleted: offset pages can shift under writes.
    With a log row, the inventory's accounting goes into its details (plan_step checks it), the
    duplicate counts included. `refs`: the tags, blueprints and cohorts as this run already has them
    (stored by its Golioth writes), for a re-read of a few devices; otherwise they are listed.
    `answered`: for a targeted read, devices already known as Golioth has them now (its answers to
    this run's writes, and the ones it deleted): stored as they are, not asked for again."""
    before = client.stats.snapshot()
    listed_refs = refs is None
    refs = refs if refs is not None else _project_read(client, lambda: fetch_references(client, service))
    state_path = service.desired_state_path if "desired_state" in service.field_groups else None
    if scope.full:
        listing = _project_read(client, lambda: client.list_devices_counted(state_path=state_path))
        with db.connect() as conn:
            linked = assignments.linked_golioth_ids(conn, service.id)
        unexpected_gone = sorted(linked - {r["id"] for r in listing.records})
        found, missing = _get_devices(client, unexpected_gone, state_path)
        count = InventoryCount(
            api_total=listing.total,
            listed=len(listing.records),
            duplicates=listing.duplicates,
            relistings=listing.relistings,
            confirmed=len(found),
            gone=len(missing),
        )
        records = listing.records + [device_record(d) for d in found]
        del listing, found  # `records` is the one reference left: each is freed as its row is built
        frame = _listed_frame(client, records, refs)
    else:
        known, deleted = answered
        asked = sorted(set(scope.golioth_ids or []) - {d.id for d in known} - set(deleted))
        found, missing = _get_devices(client, asked, state_path)
        if missing:
            # Every device of a deleted project answers 404 too: check that the project is there
            # before taking these devices for deleted (and deleting or unlinking them locally).
            _project_read(client, lambda: next(client.iter_device_pages(per_page=1)))
        found, missing = found + list(known), missing + list(deleted)
        count = InventoryCount(requested=len(scope.golioth_ids or []), confirmed=len(found), gone=len(missing))
        frame = devices_to_frame(found, refs)
    with db.begin() as conn:
        _store_inventory(conn, service.organization_id, scope, frame, missing, refs if listed_refs else None)
        if sync_log_id is not None:
            # A full fetch stored exactly `frame`: count there, not by a scan of what was just written.
            count.duplicate_ids, count.duplicate_hardware_ids = (
                _duplicates(frame) if scope.full else inventory.duplicate_counts(conn, service.organization_id)
            )
            sync_log.set_details(conn, sync_log_id, {"inventory": asdict(count)})
    used = client.stats.since(before)
    stored = frame.drop(columns=["metadata"])  # load_inventory's columns: no step reads `metadata` back
    return FetchResult(len(frame), count.api_total, missing, refs, used.requests, used.retries, count, stored)


def _listed_frame(client: GoliothClient, records: list[DeviceRecord], refs: References) -> pd.DataFrame:
    """The listing's records as the inventory frame (emptying `records`); a value the frame cannot
    hold (a timestamp that is not one) is an unreadable answer of this project's device list."""
    try:
        return records_to_frame(records, refs, consume=True)
    except errors.InvalidResponseError as exc:
        raise errors.InvalidResponseError(
            exc.message,
            method="GET",
            path=f"/v1/projects/{client.project_id}/devices",
            project_id=client.project_id,
            base_url=client.base_url,
        ) from exc


def _duplicates(frame: pd.DataFrame) -> tuple[int, int]:
    """(device ids, hardware ids) held by more than one row of a fetched inventory."""
    hardware_ids = [h for ids in frame["hardware_ids"] for h in ids]
    return len(frame) - frame["golioth_device_id"].nunique(), len(hardware_ids) - len(set(hardware_ids))


def _store_inventory(
    conn, org: str, scope: Scope, frame: pd.DataFrame, missing: list[str], refs: References | None
) -> None:
    """refs: the references just listed, to store; None when they came from storage."""
    if scope.full:
        inventory.replace_inventory(conn, org, frame)
    else:
        inventory.upsert_inventory(conn, org, frame)
    inventory.delete_inventory_rows(conn, org, missing)
    if refs is not None:
        inventory.replace_references(conn, org, refs.to_frame())


def _project_read(client: GoliothClient, read):
    """A project-level read (a list). Its 404 means the project itself is gone: deleted in the
    Golioth console, or the service names the wrong project. Say so, rather than a bare 404 on a path."""
    try:
        return read()
    except errors.NotFoundError as exc:
        raise errors.NotFoundError(
            f"Golioth project {client.project_id!r} was not found: it was deleted, or the service "
            f"names the wrong project ({exc.message})",
            status=exc.status,
            code=exc.code,
            method=exc.method,
            path=exc.path,
            project_id=exc.project_id,
            base_url=exc.base_url,
        ) from exc


def _get_devices(client: GoliothClient, ids: Sequence[str], state_path: str | None):
    """GET devices one by one (concurrently); a 404 means the device is gone."""
    if not ids:
        return [], []

    def get(device_id: str):
        device = client.get_device(device_id)
        if state_path:
            value = client.get_state(device_id, state_path)
            device = device.model_copy(update={"data": value if isinstance(value, dict) else {}})
        return device

    results = client.run_many({i: (lambda i=i: get(i)) for i in ids})
    found, missing = [], []
    for device_id, result in results.items():
        if isinstance(result, errors.NotFoundError):
            missing.append(device_id)
        elif isinstance(result, BaseException):
            raise result
        else:
            found.append(result)
    return found, missing


# -- plan -------------------------------------------------------------------------------------------


@dataclass
class LocalSnapshot:
    """The local side of a full sync as the plan reads it: every device of the organization and
    every link. SyncRun reads it while the Golioth listing is on the wire."""

    devices: pd.DataFrame
    links: pd.DataFrame


def read_local_snapshot(db: Engine, service: services.Service) -> LocalSnapshot:
    side = open_local_table(db, service)
    with side.engine.connect() as their:
        devices = side.table.load(their, None)
    with db.connect() as conn:
        return LocalSnapshot(devices, assignments.load_links(conn, service.id))


def _load_inputs(
    db: Engine,
    service: services.Service,
    scope: Scope,
    side: LocalSide,
    fetched: pd.DataFrame | None,
    snapshot: LocalSnapshot | None,
):
    """fetched: the run's inventory as its fetch stored it (None: read it back from golioth_inventory).
    snapshot: the local side, already read (a full sync only)."""
    org = service.organization_id
    if scope.full and snapshot is not None:
        remote = fetched if fetched is not None else _stored_inventory(db, org, None)
        with db.connect() as conn:
            open_conflicts = conflicts.load_open(conn, service.id)
        return complete_local(snapshot.devices), side.table.comparable_remote(remote), snapshot.links, open_conflicts
    with side.engine.connect() as their:
        local = side.table.load(their, scope.local_ids)
        if fetched is None:
            remote = _stored_inventory(db, org, scope.golioth_ids)
        else:
            remote = fetched if scope.full else fetched[fetched["golioth_device_id"].isin(scope.golioth_ids or [])]
        if not scope.full:
            # Unlinked devices in scope may match unlinked devices outside it by hardware id.
            hw = sorted({h for ids in pd.concat([local["hardware_ids"], remote["hardware_ids"]]) for h in ids})
            more = [d for d in side.table.find_by_hardware_ids(their, hw) if d not in set(local["device_id"])]
            if more:
                local = pd.concat([local, side.table.load(their, more)], ignore_index=True)
    with db.connect() as conn:
        if scope.full:
            links = assignments.load_links(conn, service.id)
        else:
            links = assignments.load_links(
                conn,
                service.id,
                device_ids=list(local["device_id"]),
                golioth_device_ids=list(remote["golioth_device_id"]),
            )
        open_conflicts = conflicts.load_open(conn, service.id)
    return complete_local(local), side.table.comparable_remote(remote), links, open_conflicts


def _stored_inventory(db: Engine, org: str, golioth_ids: list[str] | None) -> pd.DataFrame:
    with db.connect() as conn:
        return inventory.load_inventory(conn, org, golioth_device_ids=golioth_ids)


def complete_local(local: pd.DataFrame) -> pd.DataFrame:
    """Columns for the synced fields a table doesn't map (the plan and the Golioth writer don't
    read them for this run, but expect a frame of one shape)."""
    empty: dict[str, object] = {"text": None, "list": [], "bool": True, "json": {}}
    missing = {f: [empty[FIELD_KIND[f]]] * len(local) for f in SYNCED_FIELDS if f not in local}
    return local.assign(**missing) if missing else local


def _resolutions(open_conflicts: pd.DataFrame) -> pd.DataFrame:
    resolved = open_conflicts[open_conflicts["status"] == "resolved"].copy()
    resolved["chosen"] = [encode(f, v) for f, v in zip(resolved["field"], resolved["resolved_value"])]
    return resolved


def _unconfirmed_writes(db: Engine, service: services.Service) -> pd.DataFrame:
    """Golioth writes that may have happened without their bookkeeping: creates planned or failed
    since the last fully successful run (a create's POST may land and its follow-ups fail), and
    updates still "planned" since then (the process died mid-apply). Whether such a run was later
    marked finished does not matter: the failure sensor finishes the log row of a run that Dagster
    reports failed (a dead worker, a step that raised part-way through its writes), and its
    landed PATCHes must not then read as Golioth console edits that conflict with newer local ones."""
    with db.connect() as conn:
        return sync_log.unconfirmed_remote_writes(conn, service.id)


def _confirm_landed_updates(
    links: pd.DataFrame, local: pd.DataFrame, remote: pd.DataFrame, unconfirmed: pd.DataFrame
) -> pd.DataFrame:
    """A crashed run's PATCH that Golioth now shows did land, while the local value has changed
    since: move the base to the written value, so the plan doesn't take our own write for an edit
    made in Golioth (and conflict with, or undo, the newer local edit). When the local value is
    still the written one, the plan records the agreement by itself."""
    updates = unconfirmed[unconfirmed["action"] == "update"]
    if updates.empty or links.empty:
        return links
    sides = {"local": local.set_index("device_id"), "remote": remote.set_index("golioth_device_id")}
    bases = dict(zip(zip(links["device_id"], links["golioth_device_id"]), links["base_snapshot"]))

    def value_of(side: str, key: str, f: str):
        row = sides[side].loc[key]
        if f.startswith(DESIRED_PREFIX):
            return encode(
                f,
                (row["desired_state"] if isinstance(row["desired_state"], dict) else {}).get(f[len(DESIRED_PREFIX) :]),
            )
        return encode(f, row[f])

    for d, g, f, value in updates[["device_id", "golioth_device_id", "field", "new_value"]].itertuples(index=False):
        base = bases.get((d, g))
        if base is None or g not in sides["remote"].index or d not in sides["local"].index:
            continue
        written = encode(f, value)
        if value_of("remote", g, f) == written != value_of("local", d, f):
            base = bases[(d, g)] = dict(base)
            if f.startswith(DESIRED_PREFIX):
                key = f[len(DESIRED_PREFIX) :]
                desired = {k: v for k, v in (base.get("desired_state") or {}).items() if k != key}
                base["desired_state"] = desired if value is None else {**desired, key: value}
            else:
                base[f] = value
    return links.assign(base_snapshot=[bases[k] for k in zip(links["device_id"], links["golioth_device_id"])])


@gc_paused()  # see "Garbage collection" at the top
def build_plan(
    db: Engine,
    service: services.Service,
    request: SyncRequest,
    scope: Scope,
    fetched: pd.DataFrame | None = None,
    snapshot: LocalSnapshot | None = None,
) -> tuple[Plan, dict]:
    """fetched: the Golioth devices of the scope as this process just stored them (FetchResult.devices);
    None reads them from golioth_inventory (a plan made in another process, a dry run re-planned).
    snapshot: a full sync's local side, already read (read_local_snapshot)."""
    side = open_local_table(db, service)
    local, remote, links, open_conflicts = _load_inputs(db, service, scope, side, fetched, snapshot)
    settings = settings_for(service, request, side.table)
    unconfirmed = _unconfirmed_writes(db, service)
    plan = plan_sync(
        local,
        remote,
        _confirm_landed_updates(links, local, remote, unconfirmed),
        settings,
        resolutions=_resolutions(open_conflicts),
        open_conflicts=open_conflicts[open_conflicts["status"] == "pending"],
        unconfirmed_creates=unconfirmed.loc[unconfirmed["action"] == "create", "device_id"],
    )
    # The local rows' fingerprints the plan was made from: what local_step compares-and-sets against.
    fingerprints = dict(zip(local["device_id"], local["fingerprint"]))
    return plan, {"fetched_local": len(local), "fetched_remote": len(remote), "local_fingerprints": fingerprints}


@gc_paused()  # see "Garbage collection" at the top
def plan_step(
    db: Engine,
    service: services.Service,
    request: SyncRequest,
    scope: Scope,
    sync_log_id: int,
    fetched: FetchResult | None = None,
    snapshot: LocalSnapshot | None = None,
) -> Plan:
    """Plan and store the plan; outside a dry run, record the conflicts. Refuses (InventoryInconsistent)
    when the run's inventory does not add up: no plan, so nothing is written on either side.
    fetched: this run's fetch, when it ran in this process (else its log row and golioth_inventory
    say); snapshot: see build_plan."""
    refuse_inconsistent_inventory(db, sync_log_id, fetched.count if fetched is not None else None)
    devices = fetched.devices if fetched is not None else None
    plan, fetched_counts = build_plan(db, service, request, scope, devices, snapshot)
    fingerprints = fetched_counts.pop("local_fingerprints")
    counts = plan.counts()
    changes = changes_table(plan)
    written = changes.loc[(changes["side"] == "local") & changes["device_id"].notna(), "device_id"].unique()
    with db.begin() as conn:
        sync_log.save_plan(conn, sync_log_id, service.organization_id, changes)
        sync_log.add_counts(conn, sync_log_id, {**fetched_counts, "conflicts": counts["conflicts"]})
        sync_log.set_details(
            conn,
            sync_log_id,
            {"plan": counts, "local_fingerprints": {d: fingerprints[d] for d in written if d in fingerprints}},
        )
        if not request.dry_run:
            conflicts.upsert_conflicts(conn, service.organization_id, service.id, sync_log_id, conflicts_table(plan))
            conflicts.mark(conn, plan.superseded, "superseded")
    return plan


def refuse_inconsistent_inventory(db: Engine, sync_log_id: int, count: InventoryCount | None = None) -> None:
    """The guard behind the blocking inventory checks. In Dagster they run inside the same op as
    the writes, where a blocking check cannot stop a later asset: the engine stops itself.
    count: the fetch's accounting, when it ran in this process (else read from the log row)."""
    if count is None:
        with db.connect() as conn:
            saved = (sync_log.get_run(conn, sync_log_id)["details"] or {}).get("inventory")
        count = InventoryCount(**saved) if saved else InventoryCount()
    problems = count.problems()
    if problems:
        raise InventoryInconsistent(
            f"the Golioth inventory does not add up ({'; '.join(problems)}): nothing was planned or written, "
            "and the next sync lists Golioth again"
        )


# -- apply ------------------------------------------------------------------------------------------


@gc_paused()  # see "Garbage collection" at the top
def remote_step(
    db: Engine,
    service: services.Service,
    client: GoliothClient,
    sync_log_id: int,
    request: SyncRequest | None = None,
    fetched: FetchResult | None = None,
) -> RemoteOutcome:
    """request: the run's, when known (else rebuilt from its log row). fetched: the run's fetch,
    when it ran in this process: its devices and references instead of reading them back."""
    request = request or request_of_run(db, sync_log_id)
    side = open_local_table(db, service)
    with db.connect() as conn:
        plan = sync_log.load_plan(conn, sync_log_id, side="remote")
    planned = plan[plan["status"] == "planned"]
    if planned.empty:
        return RemoteOutcome()
    local, remote, refs = _remote_inputs(db, service, side, planned, fetched)
    stored_refs = refs.to_frame()

    def persist_hardware_ids(generated: dict[str, str]) -> None:
        with side.engine.begin() as their:
            side.table.mark_writer(their)
            side.table.ensure_hardware_ids(their, generated)

    outcome = apply_remote(
        client,
        service,
        refs,
        planned,
        local.set_index("device_id", drop=False),
        remote.set_index("golioth_device_id", drop=False),
        before_create=persist_hardware_ids,
        fields=settings_for(service, request, side.table).fields,
    )
    with db.begin() as conn:
        assignments.insert_links(conn, service.id, outcome.new_links)
        sync_log.mark_plan(conn, outcome.plan_status)
        sync_log.insert_entries(conn, sync_log_id, service.organization_id, outcome.entries)
        sync_log.add_counts(conn, sync_log_id, outcome.counts)
        if not refs.to_frame().equals(stored_refs):  # new tags (and the like) the writes made
            inventory.replace_references(conn, service.organization_id, refs.to_frame())
    if outcome.auth_error:
        raise SyncFailed(outcome.auth_error)
    return outcome


def _remote_inputs(
    db: Engine, service: services.Service, side: LocalSide, planned: pd.DataFrame, fetched: FetchResult | None
) -> tuple[pd.DataFrame, pd.DataFrame, References]:
    """The planned devices' local rows (read now: their values are what gets written), their Golioth
    rows and the references, as the run's fetch stored them."""
    golioth_ids = list(planned["golioth_device_id"].dropna().unique())
    with side.engine.connect() as their:
        local = complete_local(side.table.load(their, list(planned["device_id"].dropna().unique())))
    if fetched is not None and fetched.devices is not None:
        devices = fetched.devices
        return local, devices[devices["golioth_device_id"].isin(golioth_ids)], fetched.references
    with db.connect() as conn:
        remote = inventory.load_inventory(conn, service.organization_id, golioth_device_ids=golioth_ids)
        refs = References.from_frame(inventory.load_references(conn, service.organization_id))
    return local, remote, refs


@gc_paused()  # see "Garbage collection" at the top
def local_step(db: Engine, service: services.Service, sync_log_id: int, request: SyncRequest | None = None):
    """The plan's local side, through the two-database protocol (engine/local_apply.py). request:
    the run's, when known (else rebuilt from its log row)."""
    side = open_local_table(db, service)
    fields = settings_for(service, request or request_of_run(db, sync_log_id), side.table).fields
    try:
        return apply_plan_locally(db, side, service, sync_log_id, fields)
    except LocalApplyPending as exc:
        raise SyncFailed(str(exc)) from exc


def request_of_run(db: Engine, sync_log_id: int) -> SyncRequest:
    with db.connect() as conn:
        return request_of(sync_log.get_run(conn, sync_log_id))


def golioth_side(
    db: Engine,
    service: services.Service,
    client: GoliothClient,
    sync_log_id: int,
    request: SyncRequest | None = None,
    fetched: FetchResult | None = None,
):
    """remote_step. When it stops the run (SyncFailed: Golioth rejected the key mid-way), the
    local step still records what did succeed before the failure (links, base snapshots, audit),
    then the failure goes on."""
    try:
        return remote_step(db, service, client, sync_log_id, request, fetched)
    except SyncFailed:
        local_step(db, service, sync_log_id, request)
        raise


def finish(db: Engine, sync_log_id: int, *, error: str | None = None, counts: Mapping[str, int] | None = None) -> str:
    return close(db, sync_log_id, error=error, counts=counts)["status"]


def close(db: Engine, sync_log_id: int, *, error: str | None = None, counts: Mapping[str, int] | None = None) -> dict:
    """Finish the run's log row (success, partial or failed) and return it, closed."""
    with db.begin() as conn:
        return sync_log.close_run(conn, sync_log_id, error=error, counts=counts)


class RunLog:
    """A run's golioth_sync_log row: opened on entry, closed on exit however the run ends. A clean
    exit finishes it (success or partial); an exception fails it with the exception's words; an
    interrupt (Ctrl-C, a Dagster cancellation, a closed generator) fails it as INTERRUPTED. Closing
    also records the API requests and retries the run's one client made since the row was opened:
    every step, the convergence self-check and the requests of a step that failed included."""

    def __init__(
        self, db: Engine, service: services.Service, request: SyncRequest, client: GoliothClient | None = None
    ) -> None:
        self.db, self.service, self.request = db, service, request
        self.id = 0
        self.status: str | None = None
        self.row: dict = {}
        self.client: GoliothClient | None = None
        self._since = ClientStats()
        if client is not None:
            self.attach(client)

    def attach(self, client: GoliothClient) -> None:
        """The client whose requests this run's row counts (from now on)."""
        self.client, self._since = client, client.stats.snapshot()

    def __enter__(self) -> RunLog:
        self.id = begin(self.db, self.service, self.request)
        return self

    def close(self, error: str | None = None) -> str:
        """Finish the row, once: a later call returns the status it got (`row`: the closed row)."""
        if self.status is None:
            used = self.client.stats.since(self._since) if self.client is not None else ClientStats()
            counts = {"api_requests": used.requests, "api_retries": used.retries}
            self.row = close(self.db, self.id, error=error, counts=counts)
            self.status = self.row["status"]
        return self.status

    def __exit__(self, exc_type, exc, traceback) -> Literal[False]:
        if exc is None:
            self.close()
            return False
        error = (str(exc) or type(exc).__name__) if isinstance(exc, Exception) else INTERRUPTED
        try:
            self.close(error=error[:2000])
        except Exception:  # the database may be what failed: never hide the run's own error
            log.warning("could not record the end of sync run %s", self.id, exc_info=True)
        return False


# -- all four steps in one process --------------------------------------------------------------------


def _all_steps(db: Engine, service: services.Service, request: SyncRequest, client: GoliothClient, run_id: int) -> Plan:
    scope = resolve_scope(db, service, request.device_ids)
    fetched = fetch_step(db, service, client, scope, run_id)
    plan = plan_step(db, service, request, scope, run_id, fetched)
    if not request.dry_run:
        golioth_side(db, service, client, run_id, request, fetched)
        local_step(db, service, run_id, request)
    return plan


def sync_organization(db: Engine, request: SyncRequest, *, client: GoliothClient | None = None) -> SyncResult:
    started = time.perf_counter()
    with db.connect() as conn:
        service = services.service_for_org(conn, request.organization_id)
    own_client = client is None
    client = client or open_client(service)
    try:
        with RunLog(db, service, request, client) as run:
            try:
                plan = _all_steps(db, service, request, client, run.id)
            except (LocalTableError, errors.GoliothError) as exc:  # the run could not complete
                raise SyncFailed(str(exc)) from exc
            status = run.close()
        with db.connect() as conn:
            row = sync_log.get_run(conn, run.id)
        return SyncResult(
            sync_log_id=run.id,
            status=status,
            counts={k: row[k] for k in sync_log.COUNT_COLUMNS},
            plan=changes_table(plan),
            conflicts=conflicts_table(plan),
            seconds=time.perf_counter() - started,
        )
    finally:
        if own_client:
            client.close()
