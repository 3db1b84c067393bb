"""The local step: apply a plan's local side to a table that may live in another database than
golioth-sync's state, with no distributed transaction (docs/reliability.md, "Two databases").

    a. In the local table's database: one transaction does every local write (inserts with keys
       chosen first, compare-and-set updates, observed fields, soft deletes) and reads its
       txid_current(); the bookkeeping those writes need is computed from what they returned.
    b. In golioth-sync's database: an intent row (run, txid, bookkeeping) commits.
    c. The local transaction commits.
    d. In golioth-sync's database, one transaction applies the bookkeeping and marks the intent done.

A crash anywhere converges: before (b) the local transaction never committed and nothing is owed;
after (b), `recover` asks the local database what became of that txid (txid_status): committed →
(d) from the intent; aborted → the intent is dropped and the plan rows stay unapplied (the next
plan redoes them); still in progress → this organization's local writes wait, with a message.
The built-in table goes through the same protocol: one path. A plan with nothing to write locally
(a steady run's usual case) opens no local transaction: nothing to tie, its bookkeeping commits alone.
"""

from __future__ import annotations

import logging

import pandas as pd
from sqlalchemy.engine import Connection, Engine

from golioth_assets.core.vocabulary import Action, PlanStatus, Side
from golioth_assets.engine.apply_local import (
    Bookkeeping,
    LocalOutcome,
    LocalResults,
    apply_bookkeeping,
    bookkeeping,
    local_writes,
    nothing_to_write,
    write_local,
)
from golioth_assets.store import assignments, intents, inventory, sync_log
from golioth_assets.store.local_table.connect import LocalSide, open_local_table

log = logging.getLogger(__name__)


class LocalApplyPending(RuntimeError):
    """A previous local write transaction is still open in the local database: this run's local
    writes wait for it (the next run retries)."""


def apply_plan_locally(db: Engine, side: LocalSide, service, sync_log_id: int, fields: tuple[str, ...]) -> LocalOutcome:
    """Steps a–d for one run (recover first: an unsettled earlier intent blocks new writes)."""
    plan, remote, fingerprints = _inputs(db, service, side, sync_log_id)
    rows = _planned_local(plan)
    table = side.table
    links = _links_to_write(db, service, plan, table)
    if rows.empty and not links:
        return _bookkeeping_only(db, service, sync_log_id, plan, fields, table.name)
    remote = table.comparable_remote(remote)  # as the plan saw it: the bases it leaves must agree
    with side.engine.connect() as their:
        with their.begin():  # (a) … (c) on leaving the block
            txid = table.begin_write(their)  # marked as the sync's own: change capture skips it
            local = table.load(their, list(rows["device_id"].dropna().unique())).set_index("device_id", drop=False)
            writes = local_writes(
                plan,
                local,
                remote,
                fingerprints,
                fields=fields,
                observed_fields=table.observed_fields,
                links=links,
            )
            results = write_local(their, table, writes)
            book = bookkeeping(plan, writes, results, remote, fields=fields, table_name=table.name)
            intent_id = _record_intent(db, service.id, sync_log_id, txid, book)  # (b)
    _finish(db, service, sync_log_id, intent_id, book)  # (d)
    return LocalOutcome(counts=dict(book.counts), plan_status=book.plan_status)


def _bookkeeping_only(db: Engine, service, sync_log_id: int, plan: pd.DataFrame, fields, table_name: str):
    """Nothing to write to the local table (a steady run's usual case: the plan's rows are
    Golioth's writes and agreements): no transaction there, so no intent to tie one to. The
    bookkeeping (bases of Golioth's writes, plan statuses, audit) commits in one transaction; a
    crash before it leaves what a crash before (b) leaves: nothing owed, the next plan redoes it."""
    book = bookkeeping(plan, nothing_to_write(), LocalResults(), pd.DataFrame(), fields=fields, table_name=table_name)
    with db.begin() as conn:
        apply_bookkeeping(conn, service.id, service.organization_id, sync_log_id, book)
    return LocalOutcome(counts=dict(book.counts), plan_status=book.plan_status)


def _planned_local(plan: pd.DataFrame) -> pd.DataFrame:
    return plan[(plan["status"] == PlanStatus.planned) & (plan["side"] == Side.local)]


def _inputs(db: Engine, service, side: LocalSide, sync_log_id: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The plan (read after any earlier intent is settled: recovery may apply this very run's
    bookkeeping, when its step is retried), and what its local writes need."""
    with db.connect() as conn:
        settled = not intents.has_pending(conn, service.id)
        if settled:  # the usual case: one connection for all of it
            return _read_inputs(conn, service, sync_log_id)
    recover(db, service, side)
    with db.connect() as conn:
        return _read_inputs(conn, service, sync_log_id)


def _read_inputs(conn: Connection, service, sync_log_id: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    plan = sync_log.load_plan(conn, sync_log_id)
    planned_local = _planned_local(plan)
    if planned_local.empty:  # nothing to write locally: no fingerprints, no Golioth values needed
        return plan, pd.DataFrame(), {}
    # Compare-and-set against the fingerprints the plan was made from, not the ones read now: a
    # local edit made while the Golioth writes ran (seconds, minutes at scale) must make the
    # write skip, not be overwritten by a value planned before it existed.
    fingerprints = (sync_log.get_run(conn, sync_log_id)["details"] or {}).get("local_fingerprints", {})
    remote = inventory.load_inventory(
        conn,
        service.organization_id,
        golioth_device_ids=list(planned_local["golioth_device_id"].dropna().unique()),
    )
    return plan, remote.set_index("golioth_device_id", drop=False), fingerprints


def _links_to_write(db: Engine, service, plan: pd.DataFrame, table) -> list[tuple[str, str]]:
    """Where the mapping has a link column: the Golioth ids of devices linked by this run (matches
    by hardware id, and devices the remote step created in Golioth)."""
    if not table.mapping.link:
        return []
    matched = plan[(plan["action"] == Action.link) & (plan["status"] == PlanStatus.planned)]
    pairs = list(zip(matched["device_id"], matched["golioth_device_id"]))
    created = plan[
        (plan["side"] == Side.remote) & (plan["action"] == Action.create) & (plan["status"] == PlanStatus.applied)
    ]
    if not created.empty:
        with db.connect() as conn:
            links = assignments.load_links(conn, service.id, device_ids=list(created["device_id"]))
        pairs += list(zip(links["device_id"], links["golioth_device_id"]))
    return pairs


def _record_intent(db: Engine, service_id: int, sync_log_id: int, txid: int, book: Bookkeeping) -> int:
    """(b): committed before the local transaction commits, so whatever happens next is known."""
    with db.begin() as conn:
        return intents.record(conn, service_id, sync_log_id, txid, book.to_json())


def _finish(db: Engine, service, sync_log_id: int | None, intent_id: int, book: Bookkeeping) -> bool:
    """(d): the bookkeeping and the intent's end, in one transaction (False: settled elsewhere)."""
    with db.begin() as conn:
        if not intents.settle(conn, intent_id, "done"):
            return False
        if sync_log_id is not None:
            apply_bookkeeping(conn, service.id, service.organization_id, sync_log_id, book)
    return True


def recover(db: Engine, service, side: LocalSide | None = None) -> int:
    """Settle the service's unsettled intents from what the local database says became of their
    transactions. Returns how many were settled; raises LocalApplyPending if one is still open."""
    with db.connect() as conn:
        if not intents.has_pending(conn, service.id):
            return 0
    side = side or open_local_table(db, service)
    with db.connect() as conn:
        pending = intents.pending(conn, service.id)
    with side.engine.connect() as their:
        statuses = intents.transaction_status(their, [i.txid for i in pending])
        unknown = [i for i in pending if statuses.get(i.txid) is None]
        for intent in unknown:  # too old for txid_status: rows it inserted tell whether it committed
            created = intent.payload.get("created_keys") or []
            statuses[intent.txid] = "committed" if created and side.table.existing_keys(their, created) else "aborted"
    settled = 0
    for intent in pending:
        status = statuses[intent.txid]
        if status == "in progress":
            raise LocalApplyPending(
                f"a local write transaction of run {intent.sync_log_id} (txid {intent.txid}) is still open in "
                f"{side.where}; this run's local writes wait, the next run retries"
            )
        if status == "committed":
            settled += _finish(db, service, intent.sync_log_id, intent.id, Bookkeeping.from_json(intent.payload))
        else:
            with db.begin() as conn:
                settled += intents.settle(conn, intent.id, "aborted")
    if settled:
        log.info("settled %d local write(s) of %s left by an interrupted run", settled, service.organization_id)
    return settled
