"""The convergence self-check: after a run's writes, a fresh diff of a sample of the devices it wrote
should find nothing left to do (pending conflicts and writes the direction blocks aside).

It is there to catch a kind of write that does not converge (a field that doesn't round-trip), not
to re-verify every device, so it diffs a sample: up to PER_KIND devices of each kind of write (side,
action, field), so that every kind is covered however large the run, and at most SAMPLE in all.
Failed writes have their own check.

Devices the run wrote in Golioth are diffed as Golioth answered the writes, when the writes ran in
this process: a POST, PATCH or PUT of a device answers with the device as Golioth stored it, which is
what a GET right after would show, so a field that does not round-trip shows there. A device whose
desired state was written, and every written device when the writes ran elsewhere, is re-read, with
the run's own client, so that those requests and their retries count in the run's log (the tags,
blueprints and cohorts are not listed again: the run's Golioth writes stored them as they left
them). Devices it wrote only locally are diffed against the inventory this very run fetched, which
their writes were planned from: re-reading them from Golioth (a GET and a state GET each) would only
cost requests.
"""

from __future__ import annotations

import pandas as pd
from sqlalchemy.engine import Engine

from golioth_assets.core.vocabulary import Action, PlanStatus, Side
from golioth_assets.engine import sync as steps
from golioth_assets.engine.apply_remote import WriteAnswers
from golioth_assets.engine.golioth_frames import References
from golioth_assets.golioth.client import GoliothClient
from golioth_assets.golioth.models import Device
from golioth_assets.store import inventory, services, sync_log

PER_KIND = 10  # devices re-checked per kind of write (side, action, field)
SAMPLE = 200  # and at most this many in all


def sample_written(plan: pd.DataFrame) -> pd.DataFrame:
    """The plan rows of the sampled devices, among the applied creates, updates and deletes."""
    touched = plan[
        (plan["status"] == PlanStatus.applied) & plan["action"].isin([Action.create, Action.update, Action.delete])
    ]
    if touched.empty:
        return touched
    key = touched["device_id"].where(touched["device_id"].notna(), touched["golioth_device_id"])
    touched = touched.assign(key=key)
    sample: dict[str, None] = {}
    for _, rows in touched.groupby(["side", "action", touched["field"].fillna("")], sort=True):
        sample.update(dict.fromkeys(sorted(set(rows["key"]))[:PER_KIND]))
    return touched[touched["key"].isin(list(sample)[:SAMPLE])]


def _ids(rows: pd.DataFrame) -> list[str]:
    return sorted(set(rows["golioth_device_id"].dropna()) | set(rows["device_id"].dropna()))


def writes_left(
    db: Engine,
    service: services.Service,
    client: GoliothClient,
    sync_log_id: int,
    fetched: steps.FetchResult | None = None,
    plan_rows: pd.DataFrame | None = None,
    answers: WriteAnswers | None = None,
) -> int:
    """How many writes a fresh diff of the sampled devices still plans: 0 when the run converged.
    When the run's own steps ran in this process: `fetched`, its fetch (its devices are the
    inventory the local-only writes were planned from; the re-read devices replace theirs; its
    references are the ones its Golioth writes left), `plan_rows`, its stored plan with the
    status each write got, and `answers`, what Golioth answered its writes."""
    if plan_rows is None:
        with db.connect() as conn:
            plan_rows = sync_log.load_plan(conn, sync_log_id)
    picked = sample_written(plan_rows)
    if picked.empty:
        return 0
    scope = steps.resolve_scope(db, service, _ids(picked))
    remote = fetched.devices if fetched is not None and fetched.devices is not None else None
    if remote is not None:  # the rows the targeted plan reads, not the whole organization's
        remote = remote[remote["golioth_device_id"].isin(scope.golioth_ids or [])]
    reread = _written_in_golioth(picked, scope)
    if reread:
        # The devices are re-read; the tags, blueprints and cohorts are the run's own (its writes
        # stored them, new tags included): listing them again would only cost requests.
        refs = fetched.references if fetched is not None else None
        if refs is None:
            with db.connect() as conn:
                refs = References.from_frame(inventory.load_references(conn, service.organization_id))
        answered = _as_answered(answers, reread, fetched) if answers is not None else ([], [])
        scope_again = steps.Scope(local_ids=[], golioth_ids=reread)
        again = steps.fetch_step(db, service, client, scope_again, refs=refs, answered=answered)
        remote = _replaced(remote, again) if remote is not None else None
    request = steps.SyncRequest(service.organization_id, device_ids=_ids(picked), dry_run=True)
    fresh, _ = steps.build_plan(db, service, request, scope, remote)
    return len(fresh.writes())


def _written_in_golioth(picked: pd.DataFrame, scope: steps.Scope) -> list[str]:
    """The Golioth ids of the sampled devices the run wrote in Golioth: the ids its rows name, and
    for a create (its row names the local device) the id the new link gave it."""
    rows = picked[picked["side"] == Side.remote]
    named = set(rows["golioth_device_id"].dropna())
    created = set(rows["device_id"].dropna())
    links = scope.links if scope.links is not None else pd.DataFrame(columns=["device_id", "golioth_device_id"])
    twins = set(links.loc[links["device_id"].isin(created), "golioth_device_id"].dropna())
    return sorted((named | twins) & set(scope.golioth_ids or []))


def _as_answered(
    answers: WriteAnswers, golioth_ids: list[str], fetched: steps.FetchResult | None
) -> tuple[list[Device], list[str]]:
    """The answered devices among `golioth_ids`, with the desired state the run fetched (it did not
    write theirs: a device whose state it wrote is left out of the answers, and re-read)."""
    if fetched is None or fetched.devices is None:
        return [], []  # the states are not at hand: read them all
    devices, gone = answers.answered(golioth_ids)
    states = dict(zip(fetched.devices["golioth_device_id"], fetched.devices["desired_state"]))
    return [d.model_copy(update={"data": states.get(d.id) or {}}) for d in devices], gone


def _replaced(devices: pd.DataFrame, reread: steps.FetchResult) -> pd.DataFrame:
    """The run's fetched devices as Golioth shows them now: the re-read ones replaced, the ones found
    gone dropped (exactly what the re-read did to golioth_inventory)."""
    fresh = reread.devices if reread.devices is not None else devices.iloc[:0]
    stale = set(fresh["golioth_device_id"]) | set(reread.missing)
    kept = devices[~devices["golioth_device_id"].isin(stale)]
    return pd.concat([kept, fresh], ignore_index=True) if not fresh.empty else kept
