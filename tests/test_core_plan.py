"""Fast unit tests of the pure planning code (golioth_assets/core): no database, no HTTP.

Each test builds tiny local / remote / links frames, plans with `plan_sync` and checks the plan rows
and conflicts that the issue's "Semantics" section calls for.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from golioth_assets.core import normalize
from golioth_assets.core.fields import ALL_GROUPS, group_of
from golioth_assets.core.match import match_devices
from golioth_assets.core.normalize import LIST_SEP, NO_BASE, NULL, canonicalize_base, decode, encode
from golioth_assets.core.plan import Plan, plan_sync, reason_text
from golioth_assets.core.policy import SyncSettings, conflict_winner
from golioth_assets.core.tables import changes_table, conflicts_table
from golioth_assets.core.vocabulary import Reason

T0 = pd.Timestamp("2024-01-01T00:00:00Z")
BASE: dict[str, Any] = {
    "name": "dev-1",
    "hardware_ids": ["hw-1"],
    "tags": ["a", "b"],
    "blueprint": "bp-1",
    "cohort": "c-1",
    "enabled": True,
    "desired_state": {"led": "on", "interval": 60},
}
OBSERVED = {
    "status": "online",
    "last_seen_online": pd.Timestamp("2024-01-01T10:00:00Z"),
    "last_seen_offline": pd.NaT,
    "last_report": pd.Timestamp("2024-01-01T10:00:00Z"),
    "firmware_versions": {"main": "1.0.0"},
    "settings_status": None,
}


# -- builders ------------------------------------------------------------------------------------


def local_row(device_id: str = "L1", *, deleted: bool = False, updated: pd.Timestamp = T0, **values: Any) -> dict:
    return {
        "device_id": device_id,
        **BASE,
        **OBSERVED,
        "updated_at": updated,
        "deleted_at": T0 if deleted else pd.NaT,
        **values,
    }


def remote_row(golioth_device_id: str = "G1", *, updated: pd.Timestamp = T0, **values: Any) -> dict:
    return {"golioth_device_id": golioth_device_id, **BASE, **OBSERVED, "updated_at": updated, **values}


def link(
    device_id: str = "L1", golioth_device_id: str = "G1", base: dict | None = None, status: str = "linked"
) -> dict:
    return {
        "device_id": device_id,
        "golioth_device_id": golioth_device_id,
        "base_snapshot": dict(BASE) if base is None else base,
        "link_status": status,
    }


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns)
    for column in ("updated_at", "deleted_at", "last_seen_online", "last_seen_offline", "last_report"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


LOCAL_COLUMNS = list(local_row())
REMOTE_COLUMNS = list(remote_row())
LINK_COLUMNS = list(link())


def plan(
    local: list[dict],
    remote: list[dict],
    links: list[dict],
    resolutions: pd.DataFrame | None = None,
    open_conflicts: pd.DataFrame | None = None,
    **settings: Any,
) -> Plan:
    return plan_sync(
        _frame(local, LOCAL_COLUMNS),
        _frame(remote, REMOTE_COLUMNS),
        _frame(links, LINK_COLUMNS),
        SyncSettings(**settings),
        resolutions=resolutions,
        open_conflicts=open_conflicts,
    )


def one_pair(local: dict | None = None, remote: dict | None = None, base: dict | None = None, **settings: Any) -> Plan:
    """A linked device L1 ↔ G1 with base BASE (or `base`), each side edited as given."""
    return plan([local_row(**(local or {}))], [remote_row(**(remote or {}))], [link(base=base)], **settings)


def rows(p: Plan, **match: Any) -> pd.DataFrame:
    """Decoded plan rows (changes_table) matching column=value filters."""
    table = changes_table(p)
    for column, value in match.items():
        table = table[table[column] == value]
    return table.reset_index(drop=True)


def writes(p: Plan) -> list[tuple[str, str, str]]:
    w = p.writes()
    return sorted(zip(w["action"], w["side"], w["field"]))


# -- normalize --------------------------------------------------------------------------------------


@pytest.fixture(params=["small", "vectorized"])
def both_paths(request, monkeypatch):
    """Run a normalization test through the per-row path and the vectorized path."""
    if request.param == "vectorized":
        monkeypatch.setattr(normalize, "_SMALL", -1)
    return request.param


def test_canonical_text_trims_and_missing_is_null(both_paths):
    values = pd.Series([" a ", "b", "", "   ", None, np.nan, 5], dtype=object)
    assert normalize.canonical_text(values).tolist() == ["a", "b", NULL, NULL, NULL, NULL, NULL]


def test_canonical_list_sorts_dedupes_and_trims(both_paths):
    values = pd.Series([["b", " a", "a ", ""], None, [], np.nan, ("z", "y"), [None, " "]], dtype=object)
    assert normalize.canonical_list(values).tolist() == [f"a{LIST_SEP}b", "", "", "", f"y{LIST_SEP}z", ""]


def test_canonical_bool_and_json(both_paths):
    values = pd.Series([True, False, None, np.nan, np.True_, 0], dtype=object)
    assert normalize.canonical_bool(values).tolist() == ["true", "false", NULL, NULL, "true", "false"]
    objects = pd.Series([{"b": 1, "a": [1, 2]}, {"a": [1, 2], "b": 1}, {"a": None}, None, "not a dict"], dtype=object)
    out = normalize.canonical_json_object(objects).tolist()
    assert out[0] == out[1] == '{"a":[1,2],"b":1}'  # key order does not matter
    assert out[2] == out[3] == out[4] == "{}"  # a None-valued key is no key


def test_sentinels_never_collide_with_values():
    # A name that *looks* like a sentinel is trimmed, so it can't be mistaken for one.
    assert normalize.canonical_text(pd.Series([" null", " no-base"], dtype=object)).tolist() == ["null", "no-base"]
    assert NULL != NO_BASE


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "x"),
        ("hardware_ids", ["a", "b"]),
        ("tags", []),
        ("blueprint", None),
        ("enabled", False),
        ("desired_state", {"k": [1, {"n": None}]}),
        ("desired_state.k", 0),
        ("desired_state.k", {"nested": True}),
    ],
)
def test_encode_decode_round_trip(field, value):
    assert decode(field, encode(field, value)) == value
    assert type(decode(field, encode(field, value))) is type(value)


def test_canonicalize_base_marks_never_agreed_fields():
    snapshots = pd.Series([{"name": " x ", "tags": ["b", "a"]}, None], dtype=object)
    base = canonicalize_base(snapshots, ("name", "tags", "enabled"))
    assert base.iloc[0].tolist() == ["x", f"a{LIST_SEP}b", NO_BASE]
    assert base.iloc[1].tolist() == [NO_BASE, NO_BASE, NO_BASE]


def test_group_of_fields():
    assert group_of("desired_state.led") == "desired_state"
    assert group_of("hardware_ids") == "identity"
    assert group_of("observed") == "observed"


# -- matching ---------------------------------------------------------------------------------------


def _match(local_hw: dict, remote_hw: dict, links: list[dict] | None = None, deleted: tuple = ()):
    local = pd.Series(local_hw, dtype=object)
    live = pd.Series([d not in deleted for d in local_hw], index=local.index)
    link_frame = pd.DataFrame(links or [], columns=["device_id", "golioth_device_id", "link_status"])
    return match_devices(local, live, pd.Series(remote_hw, dtype=object), link_frame)


def test_match_prefers_the_stored_link_over_hardware_ids():
    m = _match(
        {"L1": ["x"]},
        {"G1": ["y"], "G2": ["x"]},
        [{"device_id": "L1", "golioth_device_id": "G1", "link_status": "linked"}],
    )
    assert m.links[["device_id", "golioth_device_id"]].values.tolist() == [["L1", "G1"]]
    # G2 shares L1's hardware id, but L1 is linked elsewhere: ambiguous, never guessed.
    assert m.new_links.empty
    assert m.identity_conflicts["golioth_device_id"].tolist() == ["G2"]
    assert list(m.remote_only) == []


def test_match_by_shared_hardware_id_after_trimming():
    m = _match({"L1": [" hw-9", "other"], "L2": ["solo"]}, {"G1": ["hw-9 "], "G2": ["g2"]})
    assert m.new_links[["device_id", "golioth_device_id"]].values.tolist() == [["L1", "G1"]]
    assert list(m.local_only) == ["L2"] and list(m.remote_only) == ["G2"]
    assert m.identity_conflicts.empty


def test_one_local_sharing_ids_with_two_remotes_is_an_identity_conflict():
    m = _match({"L1": ["a", "b"]}, {"G1": ["a"], "G2": ["b"]})
    assert m.new_links.empty
    conflict = m.identity_conflicts
    assert conflict["device_id"].tolist() == ["L1"] and conflict["candidates"].tolist() == [["G1", "G2"]]
    # Nobody is created on either side while the identity is unclear.
    assert list(m.local_only) == [] and list(m.remote_only) == []


def test_one_remote_sharing_ids_with_two_locals_is_an_identity_conflict():
    m = _match({"L1": ["a"], "L2": ["a", "c"]}, {"G1": ["a"]})
    assert m.new_links.empty
    assert m.identity_conflicts["golioth_device_id"].tolist() == ["G1"]
    assert m.identity_conflicts["candidates"].tolist() == [["L1", "L2"]]
    assert list(m.local_only) == [] and list(m.remote_only) == []


def test_unlinked_tombstones_and_soft_deleted_devices_are_never_rematched():
    m = _match(
        {"L1": ["a"], "L2": ["b"]},
        {"G1": ["a"], "G2": ["b"]},
        [{"device_id": "L1", "golioth_device_id": "G9", "link_status": "unlinked"}],
        deleted=("L2",),
    )
    # L1 is a tombstone; its hardware id still points at G1, which is ambiguous, not a new match.
    assert m.new_links.empty and m.links.empty
    assert "L1" not in list(m.local_only) and "L2" not in list(m.local_only)
    # G2 shares an id only with a soft-deleted device: it is simply new in Golioth.
    assert "G2" in list(m.remote_only)


def test_plan_identity_conflict_carries_both_devices_hardware_ids():
    p = plan(
        [local_row("L1", hardware_ids=["a", "b"], name="twin")],
        [remote_row("G1", hardware_ids=["a"], name="g1"), remote_row("G2", hardware_ids=["b"], name="g2")],
        [],
    )
    assert p.conflicts["conflict_type"].tolist() == ["identity"]
    table = conflicts_table(p)
    assert table.loc[0, "local_value"] == {"hardware_ids": ["a", "b"]}
    assert table.loc[0, "remote_value"] == {"candidates": ["G1", "G2"]}
    assert writes(p) == []  # nothing created, nothing linked


# -- per-field rules --------------------------------------------------------------------------------

FIELD_VALUES = [
    ("name", "renamed"),
    ("hardware_ids", ["hw-1", "hw-2"]),
    ("tags", ["c"]),
    ("blueprint", None),
    ("cohort", "c-2"),
    ("enabled", False),
]


def test_in_sync_device_plans_nothing():
    p = one_pair()
    assert p.changes.empty and p.conflicts.empty and p.is_noop


def test_values_equal_after_normalization_are_in_sync():
    p = one_pair(
        local={"name": "  dev-1 ", "tags": ["b", "a", "a"], "desired_state": {"interval": 60, "led": "on", "x": None}},
        remote={"hardware_ids": [" hw-1"]},
    )
    assert p.changes.empty and p.is_noop


@pytest.mark.parametrize(("field", "value"), FIELD_VALUES)
def test_both_sides_made_the_same_change_records_the_new_base(field, value):
    p = one_pair(local={field: value}, remote={field: value})
    agree = rows(p, action="agree")
    assert agree["field"].tolist() == [field] and agree.loc[0, "new_value"] == value
    assert p.writes().empty and not p.is_noop  # the base moves, nothing is written to either side


@pytest.mark.parametrize(("field", "value"), FIELD_VALUES)
def test_local_change_is_pushed(field, value):
    p = one_pair(local={field: value})
    push = rows(p, action="update")
    assert push[["field", "side"]].values.tolist() == [[field, "remote"]]
    assert push.loc[0, "old_value"] == BASE[field] and push.loc[0, "new_value"] == value
    assert push.loc[0, "reason"] == "changed locally"


@pytest.mark.parametrize(("field", "value"), FIELD_VALUES)
def test_remote_change_is_pulled(field, value):
    p = one_pair(remote={field: value})
    pull = rows(p, action="update")
    assert pull[["field", "side"]].values.tolist() == [[field, "local"]]
    assert pull.loc[0, "old_value"] == BASE[field] and pull.loc[0, "new_value"] == value


@pytest.mark.parametrize(("field", "value"), FIELD_VALUES)
def test_both_changed_differently_is_a_conflict_left_alone(field, value):
    other = {
        "name": "other",
        "hardware_ids": ["hw-3"],
        "tags": [],
        "blueprint": "bp-2",
        "cohort": None,
        "enabled": None,
    }
    p = one_pair(local={field: value, "desired_state": {"led": "off", "interval": 60}}, remote={field: other[field]})
    conflict = conflicts_table(p)
    assert conflict[["field", "conflict_type"]].values.tolist() == [[field, "field"]]
    assert conflict.loc[0, "base_value"] == BASE[field]
    assert conflict.loc[0, "local_value"] == value
    assert conflict.loc[0, "remote_value"] == decode(field, encode(field, other[field]))
    # That field is left alone on both sides, while everything else syncs.
    assert writes(p) == [("update", "remote", "desired_state.led")]


def test_field_never_agreed_on_with_different_values_is_a_conflict():
    base = {k: v for k, v in BASE.items() if k != "cohort"}
    p = one_pair(local={"cohort": "c-x"}, remote={"cohort": "c-y"}, base=base)
    assert p.conflicts["field"].tolist() == ["cohort"]
    assert p.conflicts.loc[0, "base_value"] == NO_BASE
    same = one_pair(base=base)
    assert rows(same, action="agree")["field"].tolist() == ["cohort"]  # equal: recorded as the base


# -- policies ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "side", "winner"), [("local_wins", "remote", "L"), ("remote_wins", "local", "R")])
def test_policies_settle_conflicts(policy, side, winner):
    p = one_pair(local={"name": "L"}, remote={"name": "R"}, policy=policy)
    assert p.conflicts.empty
    update = rows(p, action="update")
    assert update[["field", "side", "new_value"]].values.tolist() == [["name", side, winner]]
    assert update.loc[0, "reason"] == f"conflict settled by {policy}"


@pytest.mark.parametrize(
    ("local_ts", "remote_ts", "side"),
    [
        ("2024-02-02T00:00:01Z", "2024-02-02T00:00:00Z", "remote"),  # local newer: push
        ("2024-02-02T00:00:00Z", "2024-02-02T00:00:01Z", "local"),  # remote newer: pull
        ("2024-02-02T00:00:00Z", "2024-02-02T00:00:00Z", "local"),  # tie: Golioth
        (None, "2024-02-02T00:00:00Z", "local"),  # unknown: Golioth
    ],
)
def test_newest_wins_compares_timestamps(local_ts, remote_ts, side):
    p = one_pair(
        local={"name": "L", "updated": pd.Timestamp(local_ts) if local_ts else pd.NaT},
        remote={"name": "R", "updated": pd.Timestamp(remote_ts)},
        policy="newest_wins",
    )
    assert p.conflicts.empty
    assert rows(p, action="update")[["side", "new_value"]].values.tolist() == [[side, "L" if side == "remote" else "R"]]


def test_conflict_winner_vectorized():
    policies = pd.Series(["manual", "local_wins", "remote_wins", "newest_wins", "newest_wins"])
    local = pd.Series([T0, T0, T0, T0 + pd.Timedelta(seconds=1), None])
    remote = pd.Series([T0, T0, T0, T0, T0])
    assert conflict_winner(policies, local, remote).tolist() == ["manual", "local", "remote", "local", "remote"]


def test_policy_override_per_field_group():
    p = one_pair(
        local={"name": "L", "tags": ["l"]},
        remote={"name": "R", "tags": ["r"]},
        policy="manual",
        policy_overrides={"tags": "local_wins"},
    )
    assert p.conflicts["field"].tolist() == ["name"]
    assert writes(p) == [("update", "remote", "tags")]


def test_settings_are_validated():
    with pytest.raises(ValueError, match="direction"):
        SyncSettings(direction="sideways")
    with pytest.raises(ValueError, match="policy"):
        SyncSettings(policy_overrides={"tags": "coin_flip"})
    with pytest.raises(ValueError, match="field groups"):
        SyncSettings(field_groups=frozenset({"identity", "colour"}))
    assert SyncSettings().policy == "manual" and not SyncSettings().allow_deletes


# -- directions ---------------------------------------------------------------------------------------


def test_import_blocks_golioth_writes_but_keeps_them_visible():
    p = plan(
        [local_row(name="pushed"), local_row("L2", hardware_ids=["new-local"], name="new")],
        [remote_row(cohort="c-9"), remote_row("G2", hardware_ids=["new-remote"], name="n2")],
        [link()],
        direction="import",
    )
    blocked = rows(p, status="blocked")
    assert sorted(zip(blocked["action"], blocked["field"])) == [("create", "*"), ("update", "name")]
    assert set(blocked["side"]) == {"remote"}
    assert writes(p) == [("create", "local", "*"), ("update", "local", "cohort")]
    assert p.counts()["blocked"] == 2


def test_export_blocks_local_writes_but_agreements_still_move_the_base():
    p = one_pair(local={"tags": ["x"]}, remote={"name": "from-golioth", "tags": ["x"]}, direction="export")
    assert rows(p, status="blocked")[["field", "side"]].values.tolist() == [["name", "local"]]
    assert rows(p, action="agree", status="planned")["field"].tolist() == ["tags"]
    assert p.writes().empty


# -- existence ---------------------------------------------------------------------------------------


def test_new_devices_are_created_on_the_other_side():
    p = plan(
        [local_row("L9", hardware_ids=["local-only"]), local_row("L8", hardware_ids=["gone"], deleted=True)],
        [remote_row("G9", hardware_ids=["remote-only"])],
        [],
    )
    assert writes(p) == [("create", "local", "*"), ("create", "remote", "*")]
    creates = rows(p, action="create")
    assert creates.loc[creates["side"] == "remote", "device_id"].tolist() == ["L9"]  # never the soft-deleted L8
    assert creates.loc[creates["side"] == "local", "golioth_device_id"].tolist() == ["G9"]
    assert p.counts()["created_local"] == p.counts()["created_remote"] == 1


def test_a_new_match_links_and_records_agreements():
    p = plan([local_row("L1", hardware_ids=["hw-1"])], [remote_row("G1", hardware_ids=["hw-1"])], [])
    assert rows(p, action="link")[["device_id", "golioth_device_id"]].values.tolist() == [["L1", "G1"]]
    agreed = set(rows(p, action="agree")["field"])
    assert agreed == {"name", "hardware_ids", "tags", "blueprint", "cohort", "enabled", "desired_state"}
    assert p.writes().empty and p.conflicts.empty


@pytest.mark.parametrize("allow_deletes", [False, True])
def test_remote_delete_of_an_unchanged_device(allow_deletes):
    p = plan([local_row()], [], [link()], allow_deletes=allow_deletes)
    if allow_deletes:
        assert writes(p) == [("delete", "local", "*")]
    else:
        unlink = rows(p, action="unlink")
        assert unlink["reason"].tolist() == ["deleted in Golioth; deletes are off"]
        assert p.writes().empty
    assert p.conflicts.empty


@pytest.mark.parametrize("allow_deletes", [False, True])
def test_local_soft_delete_of_an_unchanged_device(allow_deletes):
    p = plan([local_row(deleted=True)], [remote_row()], [link()], allow_deletes=allow_deletes)
    if allow_deletes:
        assert writes(p) == [("delete", "remote", "*")]
    else:
        assert rows(p, action="unlink")["reason"].tolist() == ["deleted locally; deletes are off"]
        assert p.writes().empty


def test_gone_on_both_sides_just_unlinks():
    p = plan([local_row(deleted=True)], [], [link()], allow_deletes=True)
    assert rows(p, action="unlink")["reason"].tolist() == ["gone on both sides"]
    assert p.writes().empty


@pytest.mark.parametrize("deleted_side", ["local", "remote"])
def test_delete_vs_modify_is_a_conflict_and_nothing_is_deleted(deleted_side):
    if deleted_side == "remote":
        p = plan([local_row(name="edited")], [], [link()], allow_deletes=True, policy="local_wins")
    else:
        p = plan(
            [local_row(deleted=True)], [remote_row(tags=["z"])], [link()], allow_deletes=True, policy="remote_wins"
        )
    assert p.conflicts["conflict_type"].tolist() == ["delete_vs_modify"]
    assert p.writes().empty
    table = conflicts_table(p)
    survivor = "local_value" if deleted_side == "remote" else "remote_value"
    deleted = "remote_value" if deleted_side == "remote" else "local_value"
    assert table.loc[0, deleted] == {"deleted": True}
    assert table.loc[0, survivor]["name" if deleted_side == "remote" else "tags"] == (
        "edited" if deleted_side == "remote" else ["z"]
    )


def test_a_field_never_agreed_on_does_not_count_as_a_modification():
    base = {k: v for k, v in BASE.items() if k != "cohort"}
    p = plan([local_row(cohort="something")], [], [link(base=base)], allow_deletes=True)
    assert p.conflicts.empty
    assert writes(p) == [("delete", "local", "*")]


def _resolution(
    conflict_type: str, resolution: str, field: str = "*", chosen: str | None = None, **ids
) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "conflict_id": 41,
                "device_id": ids.get("device_id", "L1"),
                "golioth_device_id": ids.get("golioth_device_id", "G1"),
                "field": field,
                "conflict_type": conflict_type,
                "chosen": chosen,
                "resolution": resolution,
                "resolved_by": "alice",
            }
        ]
    )


def test_delete_vs_modify_resolved_for_the_deleted_side_deletes_the_survivor():
    p = plan(
        [local_row(name="edited")],
        [],
        [link()],
        resolutions=_resolution("delete_vs_modify", "remote"),
        allow_deletes=True,
    )
    delete = rows(p, action="delete")
    assert delete[["side", "conflict_id", "changed_by"]].values.tolist() == [["local", 41, "alice"]]
    assert p.conflicts.empty


def test_delete_vs_modify_resolved_for_the_survivor_recreates_it():
    p = plan([local_row(name="edited")], [], [link()], resolutions=_resolution("delete_vs_modify", "local"))
    create = rows(p, action="create")
    assert create[["side", "device_id", "conflict_id"]].values.tolist() == [["remote", "L1", 41]]


# -- resolutions and superseded conflicts -----------------------------------------------------------


def test_a_resolved_field_conflict_is_written_where_it_differs():
    res = _resolution("field", "local", field="name", chosen=encode("name", "L"))
    p = one_pair(local={"name": "L"}, remote={"name": "R"}, resolutions=res)
    assert p.conflicts.empty
    update = rows(p, action="update")
    assert update[["side", "new_value", "conflict_id", "changed_by"]].values.tolist() == [["remote", "L", 41, "alice"]]
    assert update.loc[0, "reason"] == "resolved by alice"


def test_a_resolution_with_its_own_value_writes_both_sides():
    res = _resolution("field", "value", field="desired_state.led", chosen=encode("desired_state.led", "blink"))
    p = one_pair(
        local={"desired_state": {"led": "off", "interval": 60}},
        remote={"desired_state": {"led": "dim", "interval": 60}},
        resolutions=res,
    )
    assert sorted(rows(p, action="update")["side"]) == ["local", "remote"]
    assert set(rows(p, action="update")["new_value"]) == {"blink"}


def test_a_resolution_both_sides_already_hold_is_recorded_as_agreed():
    res = _resolution("field", "value", field="name", chosen=encode("name", "same"))
    p = one_pair(local={"name": "same"}, remote={"name": "same"}, resolutions=res)
    agree = rows(p, action="agree")
    assert agree[["field", "conflict_id"]].values.tolist() == [["name", 41]]
    assert p.writes().empty


def _open(*conflicts: tuple) -> pd.DataFrame:
    return pd.DataFrame(conflicts, columns=["conflict_id", "device_id", "golioth_device_id", "field"])


def test_pending_conflict_whose_sides_converged_is_superseded():
    still = one_pair(local={"name": "L"}, remote={"name": "R"}, open_conflicts=_open((7, "L1", "G1", "name")))
    assert still.superseded == []
    converged = one_pair(local={"name": "R"}, remote={"name": "R"}, open_conflicts=_open((7, "L1", "G1", "name")))
    assert converged.superseded == [7]
    # A conflict about devices outside this run (a targeted sync) is not touched.
    elsewhere = one_pair(open_conflicts=_open((8, "L5", "G5", "name")))
    assert elsewhere.superseded == []


def test_identity_conflict_is_superseded_once_the_ids_are_fixed():
    p = plan(
        [local_row("L1", hardware_ids=["a"])],
        [remote_row("G1", hardware_ids=["a"])],
        [],
        open_conflicts=_open((9, "L1", None, "identity")),
    )
    assert p.superseded == [9]
    assert rows(p, action="link")["device_id"].tolist() == ["L1"]


# -- desired state: merged key by key ----------------------------------------------------------------


def test_desired_state_merges_key_by_key():
    p = one_pair(
        local={"desired_state": {"led": "off", "interval": 60}},
        remote={"desired_state": {"led": "on", "interval": 30, "mode": "eco"}},
    )
    assert p.conflicts.empty
    assert sorted(zip(rows(p)["field"], rows(p)["side"], rows(p)["new_value"])) == [
        ("desired_state.interval", "local", 30),
        ("desired_state.led", "remote", "off"),
        ("desired_state.mode", "local", "eco"),
    ]


def test_desired_state_same_key_edited_both_sides_conflicts_for_that_key_only():
    p = one_pair(
        local={"desired_state": {"led": "off", "interval": 60, "a": 1}},
        remote={"desired_state": {"led": "blink", "interval": 60}},
    )
    assert p.conflicts["field"].tolist() == ["desired_state.led"]
    assert writes(p) == [("update", "remote", "desired_state.a")]


def test_desired_state_key_removed_locally_is_removed_in_golioth():
    p = one_pair(local={"desired_state": {"led": "on"}})
    update = rows(p, action="update")
    assert update[["field", "side"]].values.tolist() == [["desired_state.interval", "remote"]]
    assert update.loc[0, "old_value"] == 60 and update.loc[0, "new_value"] is None


def test_desired_state_values_keep_their_json_types():
    # Regression: decoding [0, None] through Series.map gave [0.0, NaN].
    p = one_pair(
        local={"desired_state": {"led": "on", "interval": 60, "zero": 0}}, remote={"desired_state": {"led": "on"}}
    )
    update = rows(p, action="update")
    assert sorted(zip(update["field"], update["side"])) == [
        ("desired_state.interval", "local"),
        ("desired_state.zero", "remote"),
    ]
    values = dict(zip(update["field"], update["new_value"]))
    assert values["desired_state.zero"] == 0 and type(values["desired_state.zero"]) is int
    assert values["desired_state.interval"] is None


def test_decoded_values_of_one_field_keep_their_types_across_devices():
    # Regression: one key set to 0 on one device and removed on another decoded as [0.0, NaN].
    p = plan(
        [
            local_row("L1", desired_state={"led": "on", "interval": 0}),
            local_row("L2", hardware_ids=["hw-2"], desired_state={"led": "on"}),
        ],
        [remote_row("G1"), remote_row("G2", hardware_ids=["hw-2"])],
        [link("L1", "G1"), link("L2", "G2", base={**BASE, "hardware_ids": ["hw-2"]})],
    )
    update = rows(p, action="update", field="desired_state.interval").set_index("device_id")
    assert update.loc["L1", "new_value"] == 0 and type(update.loc["L1", "new_value"]) is int
    assert update.loc["L2", "new_value"] is None


def test_desired_values_are_canonical_whatever_the_other_values_are():
    # Regression: the values of every key were canonicalized through one Series.map, which inferred
    # one dtype when all were numbers: 30 next to 1.5 read "30.0" (a float pushed), None next to a
    # number "NaN".
    numbers = {"interval": 60}
    base = {**BASE, "desired_state": numbers}
    p = plan(
        [
            local_row("L1", desired_state={"interval": 30, "ratio": 1.5}),
            local_row("L2", hardware_ids=["hw-2"], desired_state={"interval": None}),
        ],
        [remote_row("G1", desired_state=numbers), remote_row("G2", hardware_ids=["hw-2"], desired_state=numbers)],
        [link("L1", "G1", base=base), link("L2", "G2", base={**base, "hardware_ids": ["hw-2"]})],
    )
    update = rows(p, action="update", field="desired_state.interval").set_index("device_id")
    assert update.loc["L1", "new_value"] == 30 and type(update.loc["L1", "new_value"]) is int
    assert update.loc["L2", "new_value"] is None


def test_desired_state_whole_object_agreement_is_one_row():
    p = one_pair(local={"desired_state": {"x": 1}}, remote={"desired_state": {"x": 1}})
    assert rows(p, action="agree")[["field", "new_value"]].values.tolist() == [["desired_state", {"x": 1}]]


def test_desired_keys_of_a_new_link_wait_while_another_key_conflicts():
    # Never agreed on: recording only the agreed key would make the base "known", and the next run
    # would read the conflicting key (absent from the base) as unchanged on the side lacking it.
    p = plan(
        [local_row("L1", hardware_ids=["m"], desired_state={"same": 1, "only_local": 2})],
        [remote_row("G1", hardware_ids=["m"], desired_state={"same": 1})],
        [],
    )
    assert p.conflicts["field"].tolist() == ["desired_state.only_local"]
    assert not rows(p, action="agree")["field"].str.startswith("desired_state").any()
    settled = plan(
        [local_row("L1", hardware_ids=["m"], desired_state={"same": 1, "only_local": 2})],
        [remote_row("G1", hardware_ids=["m"], desired_state={"same": 1})],
        [],
        policy="local_wins",
    )
    assert "desired_state.same" in set(rows(settled, action="agree")["field"])
    # Settled by the policy, but with a write the direction forbids: unsettled too, so it waits.
    blocked = plan(
        [local_row("L1", hardware_ids=["m"], desired_state={"same": 1})],
        [remote_row("G1", hardware_ids=["m"], desired_state={"same": 1, "only_remote": 2})],
        [],
        policy="local_wins",
        direction="import",
    )
    assert rows(blocked, status="blocked")["field"].tolist() == ["desired_state.only_remote"]
    assert not rows(blocked, action="agree")["field"].str.startswith("desired_state").any()


# -- observed fields ----------------------------------------------------------------------------------


def test_newer_golioth_activity_is_observed_and_never_a_conflict():
    later = pd.Timestamp("2024-01-02T00:00:00Z")
    p = one_pair(remote={"last_seen_online": later, "firmware_versions": {"main": "2.0.0"}})
    observe = rows(p, action="observe")
    assert observe[["field", "side"]].values.tolist() == [["observed", "local"]]
    value = json.loads(p.changes.loc[p.changes["action"] == "observe", "new_value"].item())
    assert value["firmware_versions"] == {"main": "2.0.0"}
    assert pd.Timestamp(value["last_seen_online"]) == later
    assert p.conflicts.empty


def test_older_golioth_activity_never_moves_local_timestamps_back():
    earlier = pd.Timestamp("2023-12-31T00:00:00Z")
    p = one_pair(remote={"last_seen_online": earlier, "last_report": earlier})
    assert rows(p, action="observe").empty


def test_observed_group_off_plans_no_observed_rows():
    p = one_pair(
        remote={"last_seen_online": pd.Timestamp("2025-01-01T00:00:00Z")},
        field_groups=frozenset(g for g in ALL_GROUPS if g != "observed"),
    )
    assert p.changes.empty


# -- field groups -------------------------------------------------------------------------------------


def test_disabled_field_groups_are_ignored():
    groups = frozenset({"identity", "enabled"})
    p = one_pair(
        local={"tags": ["x"], "desired_state": {"y": 1}},
        remote={"blueprint": "other", "cohort": "c-9", "name": "renamed"},
        field_groups=groups,
    )
    assert writes(p) == [("update", "local", "name")]
    assert p.conflicts.empty


def test_identity_off_still_matches_by_hardware_id():
    p = plan(
        [local_row("L1", hardware_ids=["m"], name="a")],
        [remote_row("G1", hardware_ids=["m"], name="b")],
        [],
        field_groups=frozenset({"tags", "enabled"}),
    )
    assert rows(p, action="link")["golioth_device_id"].tolist() == ["G1"]
    assert p.conflicts.empty  # the differing name is not synced


# -- the plan table -----------------------------------------------------------------------------------


def test_counts_and_noop():
    p = plan(
        [local_row(name="pushed"), local_row("L2", hardware_ids=["l2"])],
        [remote_row(enabled=False), remote_row("G2", hardware_ids=["g2"]), remote_row("G3", hardware_ids=["g3"])],
        [link(), link("L3", "G3", base={**BASE, "hardware_ids": ["g3"]})],
    )
    counts = p.counts()
    assert counts["updated_remote"] == 1 and counts["updated_local"] == 1
    assert counts["created_local"] == 1 and counts["created_remote"] == 1
    assert counts["unlinked"] == 1 and counts["conflicts"] == 0  # L3 has no row at all; deletes are off
    assert not p.is_noop
    assert plan([], [], []).is_noop


def test_changes_table_columns_and_statuses():
    table = changes_table(one_pair(local={"name": "x"}, direction="import"))
    assert {
        "device_id",
        "golioth_device_id",
        "field",
        "action",
        "side",
        "old_value",
        "new_value",
        "kind",
        "reason",
        "status",
    } <= set(table.columns)
    assert table["status"].tolist() == ["blocked"]


def test_a_device_an_unfinished_run_created_finishes_its_create_instead_of_conflicting():
    # The create reached Golioth (name, hardware ids, tags), its follow-ups (disable, desired state)
    # did not, and no link was recorded. Matched again by hardware id:
    local = [local_row("L1", hardware_ids=["gs-1"], enabled=False, desired_state={"k": 1})]
    remote = [remote_row("G1", hardware_ids=["gs-1"], enabled=True, desired_state={})]
    ordinary = plan(local, remote, [])
    assert sorted(ordinary.conflicts["field"]) == ["desired_state.k", "enabled"]  # strangers: never guessed
    ours = plan_sync(
        _frame(local, LOCAL_COLUMNS),
        _frame(remote, REMOTE_COLUMNS),
        _frame([], LINK_COLUMNS),
        SyncSettings(),
        unconfirmed_creates=pd.Series(["L1"]),
    )
    assert ours.conflicts.empty
    assert writes(ours) == [("update", "remote", "desired_state.k"), ("update", "remote", "enabled")]
    link_row = rows(ours, action="link")
    assert link_row.loc[0, "new_value"] == {"enabled": True, "desired_state": {}}  # stored with the link


# -- kinds: why each row exists -----------------------------------------------------------------------

LATER = pd.Timestamp("2024-01-02T00:00:00Z")


def _unfinished_create() -> Plan:
    return plan_sync(
        _frame([local_row("L1")], LOCAL_COLUMNS),
        _frame([remote_row("G1")], REMOTE_COLUMNS),
        _frame([], LINK_COLUMNS),
        SyncSettings(),
        unconfirmed_creates=pd.Series(["L1"]),
    )


# Each scenario → the (action, side, kind) of every row it plans, and the reason text of that kind.
KIND_SCENARIOS = {
    Reason.agreed: (lambda: one_pair(local={"name": "x"}, remote={"name": "x"}), ("agree", "none"), "both sides agree"),
    Reason.changed_locally: (lambda: one_pair(local={"name": "x"}), ("update", "remote"), "changed locally"),
    Reason.changed_in_golioth: (lambda: one_pair(remote={"name": "x"}), ("update", "local"), "changed in Golioth"),
    Reason.settled_by_policy: (
        lambda: one_pair(local={"name": "L"}, remote={"name": "R"}, policy="newest_wins"),
        ("update", "local"),
        "conflict settled by newest_wins",
    ),
    Reason.resolved_by_operator: (
        lambda: one_pair(
            local={"name": "L"},
            remote={"name": "R"},
            resolutions=_resolution("field", "remote", field="name", chosen=encode("name", "R")).assign(
                resolved_by=None
            ),
        ),
        ("update", "local"),
        "resolved by operator",  # nobody named: "operator"
    ),
    Reason.gone_on_both_sides: (
        lambda: plan([local_row(deleted=True)], [], [link()]),
        ("unlink", "none"),
        "gone on both sides",
    ),
    Reason.deleted_locally: (
        lambda: plan([local_row(deleted=True)], [remote_row()], [link()], allow_deletes=True),
        ("delete", "remote"),
        "deleted locally",
    ),
    Reason.deleted_in_golioth: (
        lambda: plan([local_row()], [], [link()], allow_deletes=True),
        ("delete", "local"),
        "deleted in Golioth",
    ),
    Reason.deletes_off: (
        lambda: plan([local_row(deleted=True)], [remote_row()], [link()]),
        ("unlink", "none"),
        "deleted locally; deletes are off",
    ),
    Reason.observed_in_golioth: (
        lambda: one_pair(remote={"last_report": LATER}),
        ("observe", "local"),
        "observed in Golioth",
    ),
    Reason.matched_by_hardware_id: (
        lambda: plan([local_row("L1")], [remote_row("G1")], []),
        ("link", "none"),
        "matched by hardware id",
    ),
    Reason.matched_unfinished_create: (
        _unfinished_create,
        ("link", "none"),
        "matched by hardware id: created by an unfinished run",
    ),
    Reason.new_in_golioth: (lambda: plan([], [remote_row()], []), ("create", "local"), "new in Golioth"),
    Reason.new_locally: (lambda: plan([local_row()], [], []), ("create", "remote"), "new locally"),
    Reason.no_hardware_ids: (
        lambda: plan([local_row()], [], [], unsynced_fields=frozenset({"hardware_ids"})),
        ("create", "remote"),
        "new locally; not created in Golioth: the local table maps no hardware_ids column",
    ),
}


def test_every_kind_has_a_scenario():
    assert set(KIND_SCENARIOS) == set(Reason)


@pytest.mark.parametrize("kind", list(KIND_SCENARIOS))
def test_each_row_carries_its_kind_and_the_text_made_from_it(kind):
    make, (action, side), text = KIND_SCENARIOS[kind]
    table = changes_table(make())
    assert set(table["kind"]) <= set(Reason)
    mine = table[table["kind"] == kind]
    assert len(mine) >= 1
    assert set(zip(mine["action"], mine["side"])) == {(action, side)}
    assert set(mine["reason"]) == {text}


def test_reason_text_fills_in_who_or_which_policy():
    assert reason_text(Reason.resolved_by_operator, "alice") == "resolved by alice"
    assert reason_text(Reason.settled_by_policy, "local_wins") == "conflict settled by local_wins"
    assert reason_text(Reason.deletes_off, reason_text(Reason.deleted_in_golioth)) == (
        "deleted in Golioth; deletes are off"
    )


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
# What reaches each field from either side (the frames' values), missing values included.
_FIELD_VALUES = {
    "name": st.none() | st.text(max_size=6),
    "tags": st.none() | st.lists(st.none() | st.text(max_size=4), max_size=4),
    "enabled": st.none() | st.booleans(),
    "desired_state": st.none() | st.dictionaries(st.text(max_size=3), _JSON, max_size=3),
    "desired_state.k": _JSON,
}


@settings(max_examples=300, deadline=None)
@given(data=st.data(), field=st.sampled_from(sorted(_FIELD_VALUES)), vectorized=st.booleans())
def test_encode_of_one_value_equals_the_column_wise_rules(data, field, vectorized):
    """encode (one value, per device while writing) and the plan's column-wise canonical strings
    agree on any value, so a write's check never sees a change where the plan saw none."""
    values = data.draw(st.lists(_FIELD_VALUES[field], min_size=1, max_size=4))
    column = pd.Series(values, dtype=object)
    old = normalize._SMALL
    normalize._SMALL = -1 if vectorized else old  # the pandas path or the per-row one
    try:
        if field.startswith("desired_state."):
            expected = normalize.canonical_json_value(column).tolist()
        else:
            expected = normalize._BY_KIND[normalize.FIELD_KIND[field]](column).tolist()
    finally:
        normalize._SMALL = old
    assert [encode(field, v) for v in values] == expected
