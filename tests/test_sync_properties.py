"""Property tests of the sync semantics (issue 3, "Tests").

Two layers:

(a) Pure and fast: random base/local/remote states (edits, creates, deletes and soft deletes on both
    sides), planned with `plan_sync` and applied by a small reference applier over plain dicts. Many
    examples.
(b) The real stack: the simulator over HTTP and real PostgreSQL through the sync harness, random
    edits on both sides, `sync_organization`. Few examples, a fresh simulator project each; marked
    slow (about a minute in all).

Properties:
- local_wins / remote_wins (and newest_wins), bidirectional: one sync makes both sides equal on
  every synced field of every linked device (the winner's value where both edited), creates every
  new device on the other side, and a second plan writes nothing. A delete-vs-modify conflict is the
  one exception: whatever the policy, it waits for an operator, and nothing is deleted meanwhile.
- manual: every edit is either applied to the other side or recorded as a conflict that left both
  sides alone; no edit is lost or silently overwritten.
- import / export: writes the direction forbids stay in the plan, blocked, run after run.
"""

from __future__ import annotations

import copy
import itertools
import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

from golioth_assets.core.fields import ALL_GROUPS, DESIRED_PREFIX, SCALAR_FIELDS, enabled_fields
from golioth_assets.core.normalize import NULL, encode
from golioth_assets.core.plan import Plan, plan_sync
from golioth_assets.core.policy import SyncSettings
from golioth_assets.core.tables import changes_table
from golioth_assets.core.vocabulary import Reason

T0 = pd.Timestamp("2024-05-01T00:00:00Z")

# -- a tiny in-memory world -------------------------------------------------------------------------


@dataclass
class World:
    """Both sides and the links, as plain dicts: what the engine keeps in PostgreSQL and Golioth."""

    local: dict[str, dict] = field(default_factory=dict)  # device_id -> values (+ updated_at, deleted_at)
    remote: dict[str, dict] = field(default_factory=dict)  # golioth_device_id -> values (+ updated_at)
    links: dict[str, dict] = field(default_factory=dict)  # device_id -> golioth_device_id, base, status
    _ids: Any = field(default_factory=lambda: itertools.count(1000))

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        local = pd.DataFrame(
            [{"device_id": d, **v} for d, v in self.local.items()],
            columns=["device_id", *SCALAR_FIELDS, "desired_state", "updated_at", "deleted_at"],
        )
        remote = pd.DataFrame(
            [{"golioth_device_id": g, **v} for g, v in self.remote.items()],
            columns=["golioth_device_id", *SCALAR_FIELDS, "desired_state", "updated_at"],
        )
        links = pd.DataFrame(
            [
                {
                    "device_id": d,
                    "golioth_device_id": link["gid"],
                    "base_snapshot": link["base"],
                    "link_status": link["status"],
                }
                for d, link in self.links.items()
            ],
            columns=["device_id", "golioth_device_id", "base_snapshot", "link_status"],
        )
        return local, remote, links

    def plan(self, settings: SyncSettings) -> Plan:
        return plan_sync(*self.frames(), settings)

    def link_of_remote(self, gid: str) -> str | None:
        return next((d for d, link in self.links.items() if link["gid"] == gid), None)


def _set(values: dict, field_name: str, value: Any) -> None:
    if field_name.startswith(DESIRED_PREFIX):
        key = field_name[len(DESIRED_PREFIX) :]
        desired = dict(values.get("desired_state") or {})
        if value is None:
            desired.pop(key, None)
        else:
            desired[key] = value
        values["desired_state"] = desired
    else:
        values[field_name] = value


def _copy_values(source: dict, fields: tuple[str, ...]) -> dict:
    return {f: copy.deepcopy(source[f]) for f in (*SCALAR_FIELDS, "desired_state")}


def _base_from(values: dict, fields: tuple[str, ...]) -> dict:
    """The base a create records: the synced values as written (canonical, like the engine)."""
    from golioth_assets.core.normalize import decode

    base = {f: decode(f, encode(f, values[f])) for f in fields if f != "desired_state"}
    if "desired_state" in fields:
        base["desired_state"] = {k: v for k, v in (values["desired_state"] or {}).items() if v is not None}
    return base


def apply_plan(world: World, plan: Plan, settings: SyncSettings) -> None:
    """A reference applier with the engine's semantics, over dicts: every planned (not blocked) row
    is written; base snapshots move for every write and agreement."""
    fields = enabled_fields(settings.field_groups)
    rows = changes_table(plan)
    rows = rows[rows["status"] == "planned"]
    for r in rows.itertuples(index=False):
        if r.action == "link":
            world.links[r.device_id] = {"gid": r.golioth_device_id, "base": {}, "status": "linked"}
    for r in rows.itertuples(index=False):
        d, g = r.device_id, r.golioth_device_id
        if r.action == "update":
            target = world.local[d] if r.side == "local" else world.remote[g]
            _set(target, r.field, copy.deepcopy(r.new_value))
            target["updated_at"] = T0 + pd.Timedelta(days=30)
        if r.action in ("update", "agree"):
            base = world.links[d]["base"]
            if r.field == "desired_state":
                base["desired_state"] = copy.deepcopy(r.new_value)
            elif r.field.startswith(DESIRED_PREFIX):
                desired = base.setdefault("desired_state", {})
                key = r.field[len(DESIRED_PREFIX) :]
                desired.pop(key, None) if r.new_value is None else desired.__setitem__(key, r.new_value)
            else:
                base[r.field] = copy.deepcopy(r.new_value)
        elif r.action == "create" and r.side == "local" and not isinstance(d, str):
            new_id = f"L{next(world._ids)}"
            values = _copy_values(world.remote[g], fields)
            world.local[new_id] = {**values, "updated_at": T0, "deleted_at": None}
            world.links[new_id] = {"gid": g, "base": _base_from(values, fields), "status": "linked"}
        elif r.action == "create" and r.side == "remote" and not isinstance(g, str):
            new_gid = f"G{next(world._ids)}"
            values = _copy_values(world.local[d], fields)
            world.remote[new_gid] = {**values, "updated_at": T0}
            world.links[d] = {"gid": new_gid, "base": _base_from(values, fields), "status": "linked"}
        elif r.action == "delete" and r.side == "local":
            world.local[d]["deleted_at"] = T0 + pd.Timedelta(days=30)
            world.links.pop(d, None)
        elif r.action == "delete" and r.side == "remote":
            world.remote.pop(g, None)
            world.links.pop(d, None)
        elif r.action == "unlink":
            if r.kind == Reason.gone_on_both_sides:
                world.links.pop(d, None)
            else:
                world.links[d]["status"] = "unlinked"


# -- canonical views, to compare sides ----------------------------------------------------------------


def cells(values: dict | None, fields: tuple[str, ...]) -> dict[str, str]:
    """Canonical value per synced field; the desired state key by key (a missing key is NULL)."""
    if values is None:
        return {}
    out = {f: encode(f, values.get(f)) for f in fields if f != "desired_state"}
    if "desired_state" in fields:
        for key, value in (values.get("desired_state") or {}).items():
            if value is not None:
                out[DESIRED_PREFIX + key] = encode(DESIRED_PREFIX + key, value)
    return out


def cell(c: dict[str, str], name: str) -> str:
    return c.get(name, NULL)


def differing(a: dict[str, str], b: dict[str, str]) -> set[str]:
    return {k for k in set(a) | set(b) if cell(a, k) != cell(b, k)}


# -- strategies ------------------------------------------------------------------------------------

names = st.sampled_from(["alpha", "beta", " beta ", "gamma"])  # " beta " normalizes to "beta"
tag_lists = st.lists(st.sampled_from(["t1", "t2", "t3", " t1"]), max_size=3)
blueprints = st.sampled_from([None, "bp1", "bp2"])
cohorts = st.sampled_from([None, "c1", "c2"])
desired_values = st.one_of(st.integers(0, 2), st.sampled_from(["on", "off"]), st.just({"nested": [1, 2]}))
desired_states = st.dictionaries(st.sampled_from(["a", "b", "c"]), desired_values, max_size=3)


def hardware_ids(prefix: str) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from([f"{prefix}-x", f"{prefix}-y"]), min_size=1, max_size=2, unique=True)


@st.composite
def device_values(draw, prefix: str) -> dict:
    return {
        "name": draw(names),
        "hardware_ids": draw(hardware_ids(prefix)),
        "tags": draw(tag_lists),
        "blueprint": draw(blueprints),
        "cohort": draw(cohorts),
        "enabled": draw(st.booleans()),
        "desired_state": draw(desired_states),
    }


@st.composite
def edits(draw, prefix: str) -> dict:
    """Some fields of a device, changed (possibly to the same value: a no-op edit)."""
    values = draw(device_values(prefix))
    chosen = draw(st.sets(st.sampled_from([*SCALAR_FIELDS, "desired_key", "desired_drop"]), min_size=1, max_size=4))
    out: dict[str, Any] = {f: values[f] for f in chosen if f in SCALAR_FIELDS}
    if "desired_key" in chosen:
        out["desired_key"] = (draw(st.sampled_from(["a", "b", "c"])), draw(desired_values))
    if "desired_drop" in chosen:
        out["desired_drop"] = draw(st.sampled_from(["a", "b", "c"]))
    return out


def apply_edit(values: dict, edit: dict, when: pd.Timestamp) -> None:
    for f, v in edit.items():
        if f == "desired_key":
            values["desired_state"] = {**(values["desired_state"] or {}), v[0]: v[1]}
        elif f == "desired_drop":
            values["desired_state"] = {k: x for k, x in (values["desired_state"] or {}).items() if k != v}
        else:
            values[f] = copy.deepcopy(v)
    values["updated_at"] = when


side_ops = st.sampled_from(["keep", "keep", "edit", "edit", "delete"])


@dataclass
class Scenario:
    world: World
    settings: SyncSettings
    before: World  # a deep copy of the world as planned
    local_edited: set[str] = field(default_factory=set)  # device ids
    remote_edited: set[str] = field(default_factory=set)  # golioth ids
    new_local: list[str] = field(default_factory=list)
    new_remote: list[str] = field(default_factory=list)


@st.composite
def scenarios(draw, policy: str, direction: str = "bidirectional") -> Scenario:
    groups = draw(st.sets(st.sampled_from(ALL_GROUPS), min_size=1))
    sync_settings = SyncSettings(
        direction=direction,
        policy=policy,
        field_groups=frozenset(groups),
        allow_deletes=draw(st.booleans()),
    )
    fields = enabled_fields(sync_settings.field_groups)
    world = World()
    n = draw(st.integers(0, 6))
    for i in range(n):
        values = draw(device_values(f"hw{i}"))
        world.local[f"d{i}"] = {**copy.deepcopy(values), "updated_at": T0, "deleted_at": None}
        world.remote[f"g{i}"] = {**copy.deepcopy(values), "updated_at": T0}
        world.links[f"d{i}"] = {"gid": f"g{i}", "base": _base_from(values, fields), "status": "linked"}
    scenario_local, scenario_remote = set(), set()
    for i in range(n):
        l_op, r_op = draw(side_ops), draw(side_ops)
        # Timestamps for newest_wins: each side's edit lands at some minute of the day.
        l_when = T0 + pd.Timedelta(minutes=draw(st.integers(1, 5)))
        r_when = T0 + pd.Timedelta(minutes=draw(st.integers(1, 5)))
        if l_op == "edit":
            apply_edit(world.local[f"d{i}"], draw(edits(f"hw{i}")), l_when)
            scenario_local.add(f"d{i}")
        elif l_op == "delete":
            world.local[f"d{i}"]["deleted_at"] = l_when
        if r_op == "edit":
            apply_edit(world.remote[f"g{i}"], draw(edits(f"hw{i}")), r_when)
            scenario_remote.add(f"g{i}")
        elif r_op == "delete":
            del world.remote[f"g{i}"]
    # New devices on each side; the same index on both sides may share a hardware id (a match).
    new_local, new_remote = [], []
    for j in range(draw(st.integers(0, 2))):
        values = draw(device_values(f"nl{j}"))
        if draw(st.booleans()):
            values["hardware_ids"] = [f"shared-{j}"]
        deleted = T0 if draw(st.integers(0, 4)) == 0 else None  # created, then soft-deleted: never exported
        world.local[f"n{j}"] = {**values, "updated_at": T0, "deleted_at": deleted}
        new_local.append(f"n{j}")
    for j in range(draw(st.integers(0, 2))):
        values = draw(device_values(f"nr{j}"))
        if draw(st.booleans()):
            values["hardware_ids"] = [f"shared-{j}"]
        world.remote[f"r{j}"] = {**values, "updated_at": T0}
        new_remote.append(f"r{j}")
    return Scenario(world, sync_settings, copy.deepcopy(world), scenario_local, scenario_remote, new_local, new_remote)


# The kinds a row of each action may carry: the engine decides on kinds (an unlink of a device gone on
# both sides deletes the link; any other unlink keeps it as a tombstone).
KINDS_OF = {
    "agree": {Reason.agreed, Reason.resolved_by_operator},
    "update": {
        Reason.changed_locally,
        Reason.changed_in_golioth,
        Reason.settled_by_policy,
        Reason.resolved_by_operator,
    },
    "unlink": {Reason.gone_on_both_sides, Reason.deletes_off},
    "delete": {Reason.deleted_locally, Reason.deleted_in_golioth, Reason.resolved_by_operator},
    "create": {Reason.new_locally, Reason.new_in_golioth, Reason.resolved_by_operator},
    "link": {Reason.matched_by_hardware_id, Reason.matched_unfinished_create},
    "observe": {Reason.observed_in_golioth},
}


def run_once(s: Scenario) -> Plan:
    plan = s.world.plan(s.settings)
    note(changes_table(plan).to_string())
    for action, kind in zip(plan.changes["action"], plan.changes["kind"]):
        assert kind in KINDS_OF[action], (action, kind)
    apply_plan(s.world, plan, s.settings)
    return plan


def assert_quiet(plan: Plan) -> None:
    """Nothing to write, nothing to record; only still-open delete-vs-modify conflicts may remain."""
    assert plan.writes().empty, changes_table(plan).to_string()
    assert not plan.changes["action"].isin(["agree", "link", "unlink", "create", "delete"]).any()
    assert set(plan.conflicts["conflict_type"]) <= {"delete_vs_modify"}
    assert not plan.superseded


# -- (a) pure properties -----------------------------------------------------------------------------

# 40 examples each keeps the file fast (a few seconds per test). Before changing core/, hunt harder:
# SYNC_PROPERTY_EXAMPLES=2000 .venv/bin/pytest tests/test_sync_properties.py -m "not slow"
PURE = settings(
    max_examples=int(os.environ.get("SYNC_PROPERTY_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _check_converged(s: Scenario, plan: Plan, winner: str | None) -> None:
    fields = enabled_fields(s.settings.field_groups)
    w, before = s.world, s.before
    dvm = set(plan.conflicts.loc[plan.conflicts["conflict_type"] == "delete_vs_modify", "device_id"])
    assert set(plan.conflicts["conflict_type"]) <= {"delete_vs_modify"}, plan.conflicts.to_string()
    for d, link in w.links.items():
        if link["status"] != "linked":
            continue
        local, remote = w.local.get(d), w.remote.get(link["gid"])
        if d in dvm:
            assert (local is None or local["deleted_at"] is not None) != (remote is None)
            continue
        assert local is not None and local["deleted_at"] is None and remote is not None
        lc, rc = cells(local, fields), cells(remote, fields)
        assert not differing(lc, rc), (d, differing(lc, rc))
        # Where both sides edited the same field differently, the policy's side won.
        if winner and d in before.links and before.links[d]["gid"] in before.remote:
            l0 = cells(before.local[d], fields)
            r0 = cells(before.remote[link["gid"]], fields)
            b0 = cells(before.links[d]["base"], fields)
            for f in differing(l0, r0) & differing(l0, b0) & differing(r0, b0):
                assert cell(lc, f) == cell(l0 if winner == "local" else r0, f), f
    # Every live device on either side is linked (created on the other side, or matched).
    for d, values in w.local.items():
        if values["deleted_at"] is None and d in before.local and before.local[d]["deleted_at"] is None:
            assert d in w.links, f"local device {d} was neither linked nor created in Golioth"
    linked_remote = {link["gid"] for link in w.links.values()}
    for g in w.remote:
        assert g in linked_remote, f"Golioth device {g} was neither linked nor created locally"


@pytest.mark.parametrize("policy", ["local_wins", "remote_wins"])
@PURE
@given(data=st.data())
def test_pure_one_sync_converges_and_second_plan_is_noop(policy, data):
    s = data.draw(scenarios(policy))
    plan = run_once(s)
    _check_converged(s, plan, "local" if policy == "local_wins" else "remote")
    second = s.world.plan(s.settings)
    assert_quiet(second)
    # Pending delete-vs-modify conflicts are found again, identically: nothing new appears.
    assert sorted(map(tuple, second.conflicts[["device_id", "field"]].to_numpy())) == sorted(
        map(tuple, plan.conflicts[["device_id", "field"]].to_numpy())
    )


@PURE
@given(data=st.data())
def test_pure_newest_wins_converges(data):
    s = data.draw(scenarios("newest_wins"))
    plan = run_once(s)
    _check_converged(s, plan, None)
    assert_quiet(s.world.plan(s.settings))


@PURE
@given(data=st.data())
def test_pure_manual_never_loses_or_overwrites_an_edit(data):
    s = data.draw(scenarios("manual"))
    plan = run_once(s)
    fields = enabled_fields(s.settings.field_groups)
    w, before = s.world, s.before
    conflicts = plan.conflicts
    field_conflicts = {
        (d, f) for d, f, t in conflicts[["device_id", "field", "conflict_type"]].itertuples(index=False) if t == "field"
    }
    dvm = set(conflicts.loc[conflicts["conflict_type"] == "delete_vs_modify", "device_id"])
    assert set(conflicts["conflict_type"]) <= {"field", "delete_vs_modify"}

    for d, link in before.links.items():
        g = link["gid"]
        l_before, r_before = before.local[d], before.remote.get(g)
        l_gone = l_before["deleted_at"] is not None
        r_gone = r_before is None
        b0 = cells(link["base"], fields)
        l0 = cells(l_before, fields)
        r0 = cells(r_before, fields) if r_before else {}
        l1 = cells(w.local[d], fields)
        r1 = cells(w.remote.get(g), fields)
        if l_gone and r_gone:
            assert d not in w.links
            continue
        if l_gone or r_gone:
            survivor_before, survivor_after = (r0, r1) if l_gone else (l0, l1)
            modified = differing(survivor_before, b0)
            if modified:
                # Deleted on one side, edited on the other: a conflict, and the edit is kept.
                assert d in dvm
                assert not differing(survivor_before, survivor_after)
            elif s.settings.allow_deletes:
                assert d not in w.links
                assert (w.local[d]["deleted_at"] is not None) and g not in w.remote
            else:
                assert w.links[d]["status"] == "unlinked"
                assert not differing(survivor_before, survivor_after)
            continue
        # Both present: field by field, with the three-way rule, computed here independently.
        for f in differing(l0, r0) | differing(l0, b0) | differing(r0, b0):
            L, R, B = cell(l0, f), cell(r0, f), cell(b0, f)
            if L != B and R != B and L != R:
                assert (d, f) in field_conflicts, f
                assert cell(l1, f) == L and cell(r1, f) == R, f"{f}: a conflicting field was written"
            elif L != B:
                assert cell(l1, f) == L and cell(r1, f) == L, f"{f}: local edit not applied"
            elif R != B:
                assert cell(l1, f) == R and cell(r1, f) == R, f"{f}: Golioth edit not applied"
        # Fields not conflicting are in sync afterwards.
        assert differing(l1, r1) <= {f for (x, f) in field_conflicts if x == d}

    # New devices were created on the other side (or matched and linked by hardware id).
    for d in s.new_local:
        if before.local[d]["deleted_at"] is None:
            assert d in w.links
        else:
            assert d not in w.links
    linked_remote = {link["gid"] for link in w.links.values()}
    assert set(s.new_remote) <= linked_remote
    # Applying the plan twice changes nothing more; conflicts are stable.
    second = s.world.plan(s.settings)
    assert second.writes().empty
    assert sorted(map(tuple, second.conflicts[["device_id", "field"]].fillna("").astype(str).to_numpy())) == sorted(
        map(tuple, conflicts[["device_id", "field"]].fillna("").astype(str).to_numpy())
    )


@pytest.mark.parametrize("direction", ["import", "export"])
@PURE
@given(data=st.data())
def test_pure_direction_blocks_writes_but_keeps_them_visible(direction, data):
    s = data.draw(scenarios("local_wins", direction=direction))
    plan = s.world.plan(s.settings)
    forbidden = "remote" if direction == "import" else "local"
    on_forbidden = plan.changes[plan.changes["side"] == forbidden]
    assert on_forbidden["blocked"].all()
    assert not plan.changes.loc[plan.changes["side"] != forbidden, "blocked"].any()
    apply_plan(s.world, plan, s.settings)
    # The blocked rows are planned again next time: nothing was silently dropped.
    again = s.world.plan(s.settings)
    blocked_keys = lambda p: sorted(  # noqa: E731
        map(
            tuple,
            p.changes.loc[p.changes["blocked"], ["device_id", "golioth_device_id", "field", "action"]]
            .fillna("")
            .astype(str)
            .to_numpy(),
        )
    )
    assert blocked_keys(again) == blocked_keys(plan)
    assert again.writes().empty


# -- (b) the real stack: simulator over HTTP, real PostgreSQL -----------------------------------------

# Each example is a fresh simulator project and organization: a few syncs over HTTP and PostgreSQL.
REAL = settings(
    # Each table (built-in, mapped) gets these examples: about the time 15 on one table took.
    max_examples=int(os.environ.get("SYNC_STACK_EXAMPLES", "8")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
STACK_DEVICES = 4
LOCAL_TAGS = ["production", "beta", "brand-new"]  # "brand-new" does not exist in Golioth yet
COHORTS = {"field-sensors": "Field sensors", "nrf9151-cell-gateways": "nRF9151 cell gateways"}


def _remote_views(h) -> dict[str, dict]:
    """Every Golioth device in the local vocabulary (names for tags, blueprints and cohorts)."""
    tags = h.tag_names()
    with h.http() as client:
        blueprints = {
            b["id"]: b["name"]
            for b in client.get(f"/v1/projects/{h.project.project_id}/blueprints", params={"perPage": 100}).json()[
                "list"
            ]
        }
    out = {}
    for gid, d in h.remote().items():
        out[gid] = {
            "name": d["name"],
            "hardware_ids": sorted(d.get("hardwareIds", [])),
            "tags": sorted(tags.get(t, t) for t in d.get("tagIds", [])),
            "blueprint": blueprints.get(d.get("blueprintId")) if d.get("blueprintId") else None,
            "cohort": COHORTS.get(d.get("cohortId"), d.get("cohortId")) or None,
            "enabled": bool(d.get("enabled", False)),
            "desired_state": {k: v for k, v in (d.get("data") or {}).items() if v is not None},
        }
    return out


def _local_views(h) -> dict[str, dict]:
    out = {}
    for device_id, row in h.local().iterrows():
        out[device_id] = {
            "name": row["name"],
            "hardware_ids": sorted(row["hardware_ids"]),
            "tags": sorted(row["tags"]),
            "blueprint": row["blueprint"] if isinstance(row["blueprint"], str) else None,
            "cohort": row["cohort"] if isinstance(row["cohort"], str) else None,
            "enabled": bool(row["enabled"]),
            "desired_state": {k: v for k, v in (row["desired_state"] or {}).items() if v is not None},
        }
    return out


@st.composite
def stack_edits(draw, side: str, index: int) -> dict:
    """Edits for one device on one side, as column values in that side's vocabulary. Names and
    hardware ids stay unique per device (Golioth refuses duplicates)."""
    out: dict[str, Any] = {}
    for f in draw(
        st.sets(st.sampled_from(["name", "tags", "enabled", "cohort", "desired_state"]), min_size=1, max_size=3)
    ):
        if f == "name":
            out["name"] = f"dev{index}-{draw(st.sampled_from(['x', side]))}"  # "x": both sides may agree
        elif f == "tags":
            out["tags"] = draw(
                st.lists(st.sampled_from(LOCAL_TAGS[:2] if side == "remote" else LOCAL_TAGS), max_size=2, unique=True)
            )
        elif f == "enabled":
            out["enabled"] = draw(st.booleans())
        elif f == "cohort":
            out["cohort"] = draw(st.sampled_from([None, *COHORTS]))
        elif f == "desired_state":
            out["desired_state"] = draw(
                st.dictionaries(st.sampled_from(["led", "interval"]), st.sampled_from([0, 1, "on"]), max_size=2)
            )
    return out


def _edit_local(h, device_id: str, edit: dict) -> None:
    columns = dict(edit)
    if "cohort" in columns:
        columns["cohort"] = COHORTS.get(columns["cohort"])  # local cohorts are names
    h.edit_local(device_id, **columns)


def _edit_remote(h, gid: str, edit: dict) -> None:
    body: dict[str, Any] = {}
    if "name" in edit:
        body["name"] = edit["name"]
    if "enabled" in edit:
        body["enabled"] = edit["enabled"]
    if "cohort" in edit:
        body["cohortId"] = edit["cohort"] or ""
    if "tags" in edit:
        ids = {name: tid for tid, name in h.tag_names().items()}
        body["tagIds"] = [ids[t] for t in edit["tags"]]
    if body:
        h.edit_remote(gid, **body)
    if "desired_state" in edit:
        h.put_remote_state(gid, edit["desired_state"])


def _expected(view: dict, edit: dict) -> dict:
    """A side's view after its own edit (tags sorted, local cohort names)."""
    out = dict(view)
    for f, v in edit.items():
        if f == "tags":
            out["tags"] = sorted(v)
        elif f == "cohort":
            out["cohort"] = COHORTS.get(v) if v else None
        else:
            out[f] = v
    return out


@dataclass
class StackCase:
    local_edits: dict[int, dict]
    remote_edits: dict[int, dict]
    local_deletes: set[int]
    remote_deletes: set[int]
    new_local: list[dict]
    new_remote: list[dict]
    allow_deletes: bool


@st.composite
def stack_cases(draw) -> StackCase:
    ops = {i: (draw(side_ops), draw(side_ops)) for i in range(STACK_DEVICES)}
    new_local, new_remote = [], []
    for j in range(draw(st.integers(0, 2))):
        shared = draw(st.booleans())
        new_local.append({"name": f"new-local-{j}", "hardware_ids": [f"shared-{j}"] if shared else []})
        if shared and draw(st.booleans()):
            new_remote.append({"name": f"new-remote-{j}", "hardwareIds": [f"shared-{j}"]})
    for j in range(draw(st.integers(0, 1))):
        new_remote.append({"name": f"only-remote-{j}", "hardwareIds": [f"only-remote-hw-{j}"]})
    return StackCase(
        local_edits={i: draw(stack_edits("local", i)) for i, (l_op, _) in ops.items() if l_op == "edit"},
        remote_edits={i: draw(stack_edits("remote", i)) for i, (_, r_op) in ops.items() if r_op == "edit"},
        local_deletes={i for i, (l_op, _) in ops.items() if l_op == "delete"},
        remote_deletes={i for i, (_, r_op) in ops.items() if r_op == "delete"},
        new_local=new_local,
        new_remote=new_remote,
        allow_deletes=draw(st.booleans()),
    )


@pytest.fixture(params=["builtin", "mapped"])
def stack_harness(request):
    """The built-in table, or a product's own table in its own database (examples/acme_fleet)."""
    return request.getfixturevalue("make_harness" if request.param == "builtin" else "make_acme_harness")


def _prepare(make_harness, case: StackCase, policy: str):
    """A fresh project, linked by a first sync, then edited on both sides as the case says."""
    h = make_harness(devices=STACK_DEVICES, seed=11, conflict_policy=policy, allow_deletes=case.allow_deletes)
    assert h.sync().status == "success"
    links = h.links().sort_values("golioth_device_id").reset_index(drop=True)
    pairs = [(links.loc[i, "device_id"], links.loc[i, "golioth_device_id"]) for i in range(STACK_DEVICES)]
    # Give every device a distinct base name so that name edits never collide across devices.
    for i, (d, _g) in enumerate(pairs):
        h.edit_local(d, name=f"dev{i}")
    assert h.sync().status == "success"
    before_local, before_remote = _local_views(h), _remote_views(h)
    for i, edit in case.local_edits.items():
        _edit_local(h, pairs[i][0], edit)
    for i, edit in case.remote_edits.items():
        _edit_remote(h, pairs[i][1], edit)
    for i in case.local_deletes:
        h.delete_local(pairs[i][0])
    for i in case.remote_deletes:
        h.delete_remote(pairs[i][1])
    new_local_ids = [h.create_local(**d) for d in case.new_local]
    new_remote_ids = [h.create_remote(**d)["id"] for d in case.new_remote]
    return h, pairs, before_local, before_remote, new_local_ids, new_remote_ids


def _assert_second_sync_quiet(h) -> None:
    second = h.sync()
    assert second.status == "success", second
    assert second.plan.empty, second.plan.to_string()


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["local_wins", "remote_wins"])
@REAL
@given(case=stack_cases())
@example(  # found by this test: a missing blueprint read as NaN made the create fail ("blueprint nan")
    case=StackCase(
        local_edits={3: {"name": "dev3-x"}},
        remote_edits={},
        local_deletes=set(),
        remote_deletes=set(),
        new_local=[{"name": "new-local-0", "hardware_ids": []}],
        new_remote=[],
        allow_deletes=False,
    )
)
def test_stack_one_sync_converges(stack_harness, policy, case):
    h, pairs, _, _, new_local_ids, new_remote_ids = _prepare(stack_harness, case, policy)
    result = h.sync()
    assert result.status == "success", result
    local, remote = _local_views(h), _remote_views(h)
    dvm = set(h.conflicts()["device_id"].astype(str)) if not h.conflicts().empty else set()
    assert h.conflicts().empty or set(h.conflicts()["conflict_type"]) == {"delete_vs_modify"}
    links = h.links()
    for d, g, status in links[["device_id", "golioth_device_id", "sync_status"]].itertuples(index=False):
        if status == "unlinked" or d in dvm:
            continue
        assert local[d] == remote[g], (d, g)
    # Creations on both sides reached the other side, with no duplicates in Golioth.
    linked = set(links["device_id"])
    assert set(new_local_ids) <= linked
    assert set(new_remote_ids) <= set(links["golioth_device_id"])
    names = [v["name"] for v in remote.values()]
    assert len(names) == len(set(names))
    _assert_second_sync_quiet(h)


@pytest.mark.slow
@REAL
@given(case=stack_cases())
def test_stack_manual_applies_or_records_every_edit(stack_harness, case):
    h, pairs, before_local, before_remote, new_local_ids, new_remote_ids = _prepare(stack_harness, case, "manual")
    assert h.sync().status == "success"
    local, remote = _local_views(h), _remote_views(h)
    pending = h.conflicts()
    conflicts = {(str(d), f) for d, f in zip(pending.get("device_id", []), pending.get("field", []))}
    for i, (d, g) in enumerate(pairs):
        l_edit = case.local_edits.get(i, {})
        r_edit = case.remote_edits.get(i, {})
        l_gone, r_gone = i in case.local_deletes, i in case.remote_deletes
        if l_gone or r_gone:
            if l_gone and r_gone:
                continue
            survivor_edited = (
                _expected(before_remote[g], r_edit) != before_remote[g]
                if l_gone
                else _expected(before_local[d], l_edit) != before_local[d]
            )
            if survivor_edited:
                assert (d, "*") in conflicts, f"device {i}: delete vs modify not recorded"
            continue
        l_want = _expected(before_local[d], l_edit)
        r_want = _expected(before_remote[g], r_edit)
        for f in ("name", "tags", "enabled", "cohort"):
            l_changed, r_changed = l_want[f] != before_local[d][f], r_want[f] != before_remote[g][f]
            if l_changed and r_changed and l_want[f] != r_want[f]:
                assert (d, f) in conflicts, f"device {i} field {f}: conflict not recorded"
                assert local[d][f] == l_want[f] and remote[g][f] == r_want[f], f"device {i} field {f}: overwritten"
            elif l_changed:
                assert local[d][f] == remote[g][f] == l_want[f], f"device {i} field {f}: local edit lost"
            elif r_changed:
                assert local[d][f] == remote[g][f] == r_want[f], f"device {i} field {f}: Golioth edit lost"
        keys = set(l_want["desired_state"]) | set(r_want["desired_state"]) | set(before_local[d]["desired_state"])
        for key in keys:
            f = f"desired_state.{key}"
            b = before_local[d]["desired_state"].get(key)
            lv, rv = l_want["desired_state"].get(key), r_want["desired_state"].get(key)
            if lv != b and rv != b and lv != rv:
                assert (d, f) in conflicts, f"device {i} {f}: conflict not recorded"
                assert local[d]["desired_state"].get(key) == lv and remote[g]["desired_state"].get(key) == rv
            elif lv != b:
                assert local[d]["desired_state"].get(key) == remote[g]["desired_state"].get(key) == lv, f
            elif rv != b:
                assert local[d]["desired_state"].get(key) == remote[g]["desired_state"].get(key) == rv, f
    linked = set(h.links()["device_id"])
    assert set(new_local_ids) <= linked
    assert set(new_remote_ids) <= set(h.links()["golioth_device_id"])
    # Nothing more to do until an operator settles the conflicts.
    again = h.sync()
    assert again.plan.empty or set(again.plan["action"]) <= {"agree"}, again.plan.to_string()
    assert len(h.conflicts()) == len(pending)
