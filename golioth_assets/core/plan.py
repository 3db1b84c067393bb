"""The three-way diff: given local devices, Golioth devices and the last state both agreed on (the
base), decide device by device and field by field what to change where.

Per field, with base B, local L and remote R (canonical strings, see normalize.py):
- L = R: in sync; if they differ from B, record the new base ("agree").
- L ≠ B and R = B: push L to Golioth.
- R ≠ B and L = B: pull R into the local table.
- L ≠ B, R ≠ B, L ≠ R: a conflict, settled by the policy (or stored for an operator).

Everything is vectorized over devices: one pass of array comparisons per field. The output is a
plan table (one row per device, field and action) that the engine applies and a dry run prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from golioth_assets.core.fields import (
    DESIRED_PREFIX,
    FIELD_GROUP,
    OBSERVED_FIELDS,
    SCALAR_FIELDS,
)
from golioth_assets.core.match import match_devices
from golioth_assets.core.normalize import (
    NO_BASE,
    NULL,
    base_values,
    canonical_base_values,
    canonical_json_value,
    canonical_values,
    canonicalize,
    decode,
    dump_json,
    snapshot_dicts,
)
from golioth_assets.core.observed import observed_changes
from golioth_assets.core.policy import SyncSettings, conflict_winner

CHANGE_COLUMNS = [
    "device_id",
    "golioth_device_id",
    "field",
    "action",  # create / update / delete / unlink / link / agree / observe
    "side",  # local / remote / none
    "old_value",
    "new_value",
    "reason",
    "blocked",  # the direction forbids this write: it stays pending, visible in the plan
    "conflict_id",  # set when an operator's resolution caused this change
    "changed_by",
]
CONFLICT_COLUMNS = [
    "device_id",
    "golioth_device_id",
    "field",
    "conflict_type",  # field / delete_vs_modify / identity
    "base_value",
    "local_value",
    "remote_value",
]
WRITE_ACTIONS = ("create", "update", "delete", "observe")


@dataclass
class Plan:
    changes: pd.DataFrame
    conflicts: pd.DataFrame
    superseded: list[int] = field(default_factory=list)
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)

    def writes(self, side: str | None = None) -> pd.DataFrame:
        """Changes that will actually be written (not blocked by the direction)."""
        rows = self.changes[self.changes["action"].isin(WRITE_ACTIONS) & ~self.changes["blocked"]]
        return rows if side is None else rows[rows["side"] == side]

    @property
    def is_noop(self) -> bool:
        """True when applying this plan would write nothing to either side."""
        return (
            self.writes().empty
            and self.conflicts.empty
            and not self.superseded
            and not (self.changes["action"].isin(["agree", "link", "unlink"]).any())
        )

    def counts(self) -> dict[str, int]:
        writes = self.writes()

        def count(side: str, action: str) -> int:
            rows = writes[(writes["side"] == side) & (writes["action"] == action)]
            key = "golioth_device_id" if side == "remote" and action == "update" else "device_id"
            return int(rows[key].nunique()) if action == "update" else len(rows)

        return {
            "created_local": count("local", "create"),
            "updated_local": count("local", "update"),
            "deleted_local": count("local", "delete"),
            "observed_local": count("local", "observe"),
            "created_remote": count("remote", "create"),
            "updated_remote": count("remote", "update"),
            "deleted_remote": count("remote", "delete"),
            "conflicts": len(self.conflicts),
            "blocked": int(self.changes["blocked"].sum()),
            "linked": int((self.changes["action"] == "link").sum()),
            "unlinked": int((self.changes["action"] == "unlink").sum()),
            "superseded": len(self.superseded),
        }


def empty_changes() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in CHANGE_COLUMNS})
    frame["blocked"] = frame["blocked"].astype(bool)
    return frame


def _rows(
    pairs: pd.DataFrame, mask: np.ndarray, field_name: str | pd.Series, action: str, side: str, old, new, reason
) -> pd.DataFrame:
    """Plan rows for the pairs selected by `mask`."""
    mask = np.asarray(mask, dtype=bool)

    def pick(value):
        return value[mask] if isinstance(value, np.ndarray) else value

    return pd.DataFrame(
        {
            "device_id": pairs["device_id"].to_numpy(dtype=object)[mask],
            "golioth_device_id": pairs["golioth_device_id"].to_numpy(dtype=object)[mask],
            "field": pick(field_name.to_numpy() if isinstance(field_name, pd.Series) else field_name),
            "action": action,
            "side": side,
            "old_value": pick(old),
            "new_value": pick(new),
            "reason": pick(reason),
        }
    )


def _diff_cells(cells: pd.DataFrame, settings: SyncSettings) -> tuple[list[pd.DataFrame], pd.DataFrame, pd.DataFrame]:
    """Three-way diff over long-format cells: device_id, golioth_device_id, field, L, R, B,
    local_updated_at, remote_updated_at. Returns (plan row frames, conflict cells for an operator,
    conflict cells this run leaves as they are)."""
    L, R, B = (cells[c].to_numpy(dtype=object) for c in ("L", "R", "B"))
    lr, lb, rb = L == R, L == B, R == B
    agree = lr & ~lb
    push = ~lb & rb & ~lr
    pull = lb & ~rb & ~lr
    conflict = ~lr & ~lb & ~rb

    frames = [
        _rows(cells, agree, cells["field"], "agree", "none", B, L, "both sides agree"),
        _rows(cells, push, cells["field"], "update", "remote", R, L, "changed locally"),
        _rows(cells, pull, cells["field"], "update", "local", L, R, "changed in Golioth"),
    ]

    conflicting = cells[conflict]
    if not conflicting.empty:
        groups = conflicting["field"].map(lambda f: "desired_state" if f.startswith(DESIRED_PREFIX) else FIELD_GROUP[f])
        policies = groups.map(settings.policy_for)
        winner = conflict_winner(policies, conflicting["local_updated_at"], conflicting["remote_updated_at"])
        cl, cr = conflicting["L"].to_numpy(dtype=object), conflicting["R"].to_numpy(dtype=object)
        reasons = ("conflict settled by " + policies).to_numpy(dtype=object)
        local_wins = (winner == "local").to_numpy()
        remote_wins = (winner == "remote").to_numpy()
        frames.append(_rows(conflicting, local_wins, conflicting["field"], "update", "remote", cr, cl, reasons))
        frames.append(_rows(conflicting, remote_wins, conflicting["field"], "update", "local", cl, cr, reasons))
        manual = conflicting[(winner == "manual").to_numpy()]
        # Conflicts that stay as they are this run: left to an operator, or settled by the policy
        # with a write that the direction forbids.
        unwritten = conflicting[
            (
                (winner == "manual")
                | ((winner == "local") & (not settings.writes("remote")))
                | ((winner == "remote") & (not settings.writes("local")))
            ).to_numpy()
        ]
    else:
        manual = unwritten = conflicting
    return frames, manual, unwritten


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise a == b on raw values. Identical raw values are equal after normalization too,
    so only the other rows need normalizing; a value that doesn't compare plainly counts as different
    (its canonical form then decides)."""
    try:
        same = a == b
    except (TypeError, ValueError):
        return np.zeros(len(a), dtype=bool)
    if not (isinstance(same, np.ndarray) and same.dtype == bool):
        return np.zeros(len(a), dtype=bool)
    # Missing on both sides (None, NaN) is the same too: NaN == NaN is False.
    other = np.flatnonzero(~same)
    if len(other):
        same[other] = pd.isna(a[other]) & pd.isna(b[other])
    return same


def _maybe_differs(L: np.ndarray, R: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Positions where L, R and B are not all identical as raw values (usually few)."""
    return np.flatnonzero(~(_same(L, R) & _same(L, B)))


def _scalar_cells(pairs: pd.DataFrame, L_raw: dict, R_raw: dict, B_raw: dict, fields: tuple[str, ...]) -> pd.DataFrame:
    """Long-format cells for the scalar fields where L, R and B are not all equal (canonically).

    L_raw / R_raw / B_raw: field → raw values (object arrays aligned with `pairs`; B may hold ABSENT)."""
    frames = []
    for f in fields:
        maybe = _maybe_differs(L_raw[f], R_raw[f], B_raw[f])
        if not len(maybe):
            continue
        L = canonical_values(f, L_raw[f][maybe])
        R = canonical_values(f, R_raw[f][maybe])
        B = canonical_base_values(f, B_raw[f][maybe])
        differs = (L != R) | (L != B)
        if differs.any():
            sub = pairs.iloc[maybe[differs]][
                ["device_id", "golioth_device_id", "local_updated_at", "remote_updated_at"]
            ]
            frames.append(sub.assign(field=f, L=L[differs], R=R[differs], B=B[differs]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _desired_cells(pairs: pd.DataFrame, L_raw: pd.Series, R_raw: pd.Series, B_raw: pd.Series, B_known) -> pd.DataFrame:
    """Desired state merges key by key: one cell per top-level key of any side."""

    def long(raw: pd.Series, column: str) -> pd.DataFrame:
        items = raw.map(lambda d: list(d.items()) if isinstance(d, dict) else []).explode().dropna()
        if items.empty:
            return pd.DataFrame({"pair": pd.Series(dtype=int), "key": pd.Series(dtype=object), column: []})
        keys = items.map(lambda kv: kv[0])
        values = canonical_json_value(items.map(lambda kv: kv[1]))
        return pd.DataFrame({"pair": items.index.to_numpy(), "key": keys.to_numpy(), column: values.to_numpy()})

    positions = pd.RangeIndex(len(pairs))
    merged = long(pd.Series(L_raw.to_numpy(), index=positions), "L").merge(
        long(pd.Series(R_raw.to_numpy(), index=positions), "R"), on=["pair", "key"], how="outer"
    )
    merged = merged.merge(long(pd.Series(B_raw.to_numpy(), index=positions), "B"), on=["pair", "key"], how="outer")
    if merged.empty:
        return pd.DataFrame()
    merged = merged.astype({"L": object, "R": object, "B": object})
    merged[["L", "R"]] = merged[["L", "R"]].fillna(NULL)
    base_known = np.asarray(B_known)[merged["pair"].to_numpy()]
    merged["B"] = np.where(base_known, merged["B"].fillna(NULL), NO_BASE)
    info = pairs.iloc[merged["pair"].to_numpy()]
    return pd.DataFrame(
        {
            "device_id": info["device_id"].to_numpy(),
            "golioth_device_id": info["golioth_device_id"].to_numpy(),
            "local_updated_at": info["local_updated_at"].to_numpy(),
            "remote_updated_at": info["remote_updated_at"].to_numpy(),
            "field": (DESIRED_PREFIX + merged["key"].astype(str)).to_numpy(),
            "L": merged["L"].to_numpy(dtype=object),
            "R": merged["R"].to_numpy(dtype=object),
            "B": merged["B"].to_numpy(dtype=object),
        }
    )


def _apply_resolutions(cells: pd.DataFrame, resolutions: pd.DataFrame, settings: SyncSettings):
    """Cells an operator resolved become writes to whichever side differs from the chosen value."""
    if resolutions is None or resolutions.empty or cells.empty:
        return [], cells
    res = resolutions[resolutions["conflict_type"] == "field"]
    keyed = cells.merge(
        res[["device_id", "golioth_device_id", "field", "conflict_id", "chosen", "resolved_by"]],
        on=["device_id", "golioth_device_id", "field"],
        how="left",
    )
    resolved = keyed["conflict_id"].notna().to_numpy()
    if not resolved.any():
        return [], cells
    hit = keyed[resolved]
    chosen = hit["chosen"].to_numpy(dtype=object)
    L, R = hit["L"].to_numpy(dtype=object), hit["R"].to_numpy(dtype=object)
    reason = ("resolved by " + hit["resolved_by"].fillna("operator").astype(str)).to_numpy(dtype=object)
    frames = []
    for side, current in (("local", L), ("remote", R)):
        mask = current != chosen
        rows = _rows(hit, mask, hit["field"], "update", side, current, chosen, reason)
        rows["conflict_id"] = hit["conflict_id"].to_numpy()[mask]
        rows["changed_by"] = hit["resolved_by"].to_numpy()[mask]
        frames.append(rows)
    # Both sides already hold the chosen value: record it as the new base and close the conflict.
    same = (chosen == L) & (chosen == R)
    rows = _rows(hit, same, hit["field"], "agree", "none", L, chosen, reason)
    rows["conflict_id"] = hit["conflict_id"].to_numpy()[same]
    frames.append(rows)
    return frames, cells[~resolved]


def _hold_unsettled_desired_keys(agree: pd.DataFrame, unwritten: pd.DataFrame) -> pd.DataFrame:
    """Drop desired-state key agreements of devices whose desired state was never agreed on and
    still has a key in conflict that this run leaves as it is (for an operator, or blocked by the
    direction). The base stores the desired state as one object, so recording one agreed key would
    make the base "known" and the conflicting key, absent from it, would then look unchanged on the
    side that lacks it: the next run would settle the conflict by guessing.
    """
    unsettled = unwritten[
        (unwritten["B"] == NO_BASE).to_numpy() & unwritten["field"].str.startswith(DESIRED_PREFIX).to_numpy()
    ]
    if unsettled.empty or agree.empty:
        return agree
    pairs = pd.MultiIndex.from_frame(unsettled[["device_id", "golioth_device_id"]])
    held = agree["field"].str.startswith(DESIRED_PREFIX).to_numpy() & pd.MultiIndex.from_frame(
        agree[["device_id", "golioth_device_id"]]
    ).isin(pairs)
    return agree[~held]


def _device_changed(survivor: pd.DataFrame, base: list[dict], fields: tuple[str, ...]) -> np.ndarray:
    """Whether a side changed any synced field since the base (a field never agreed on doesn't count).
    survivor: that side's raw rows; base: their base snapshots (dicts), aligned by position."""
    changed = np.zeros(len(survivor), dtype=bool)
    for f in fields:
        X, B = _objects(survivor[f]), base_values(base, f)
        maybe = np.flatnonzero(~_same(X, B))
        if len(maybe):
            Bc = canonical_base_values(f, B[maybe])
            changed[maybe] |= (canonical_values(f, X[maybe]) != Bc) & (Bc != NO_BASE)
    return changed


def plan_sync(
    local: pd.DataFrame,
    remote: pd.DataFrame,
    links: pd.DataFrame,
    settings: SyncSettings,
    *,
    resolutions: pd.DataFrame | None = None,
    open_conflicts: pd.DataFrame | None = None,
    unconfirmed_creates: pd.Series | None = None,
) -> Plan:
    """Plan one sync.

    local:  device_id, the synced fields, updated_at, deleted_at (+ observed fields, optional)
    remote: golioth_device_id, the synced fields, updated_at (+ observed fields, optional)
    links:  device_id, golioth_device_id, base_snapshot (dict), link_status ("linked"/"unlinked")
    resolutions: conflict_id, device_id, golioth_device_id, field, conflict_type, chosen (canonical),
                 resolution ("local"/"remote"/"value"), resolved_by
    open_conflicts: conflict_id, device_id, golioth_device_id, field (pending ones, for superseding)
    unconfirmed_creates: local device ids whose Golioth create may have happened unrecorded (a run
        died, or a create's follow-up write failed). Matched again by hardware id, such a device's
        new link starts from the base a create leaves in Golioth: enabled, no desired state (the
        two things the create itself cannot set). Its follow-ups then finish; no false conflict.
    """
    fields = settings.fields
    scalar = tuple(f for f in fields if f in SCALAR_FIELDS)

    # Each side is indexed by id once (object dtype: the fastest hash table). Everything after that
    # is positional, so a plan hashes each side's ids about once, whatever the number of devices.
    local = local.set_axis(_id_index(local["device_id"]))
    remote = remote.set_axis(_id_index(remote["golioth_device_id"]))
    local_live = local["deleted_at"].isna().to_numpy(dtype=bool)
    link_lpos = local.index.get_indexer(_objects(links["device_id"]))
    link_rpos = remote.index.get_indexer(_objects(links["golioth_device_id"]))

    matching = match_devices(
        local["hardware_ids"],
        local_live,
        remote["hardware_ids"],
        links,
        local_linked=_marked(link_lpos, len(local)),
        remote_linked=_marked(link_rpos, len(remote)),
    )

    live_link = (links["link_status"] != "unlinked").to_numpy(dtype=bool)
    new = matching.new_links
    pairs = pd.DataFrame(
        {
            "device_id": np.concatenate([_objects(links["device_id"])[live_link], _objects(new["device_id"])]),
            "golioth_device_id": np.concatenate(
                [_objects(links["golioth_device_id"])[live_link], _objects(new["golioth_device_id"])]
            ),
            "new_link": np.concatenate([np.zeros(int(live_link.sum()), dtype=bool), np.ones(len(new), dtype=bool)]),
        }
    ).astype({"device_id": object, "golioth_device_id": object})
    lpos = np.concatenate([link_lpos[live_link], local.index.get_indexer(_objects(new["device_id"]))])
    rpos = np.concatenate([link_rpos[live_link], remote.index.get_indexer(_objects(new["golioth_device_id"]))])
    # A new link has no base yet: the sides never agreed on anything (unless we created it).
    created = set(unconfirmed_creates) if unconfirmed_creates is not None else set()
    new_bases = [{"enabled": True, "desired_state": {}} if d in created else None for d in new["device_id"]]
    snapshots = np.concatenate([_objects(links["base_snapshot"])[live_link], np.array(new_bases, dtype=object)])
    l_present = np.zeros(len(pairs), dtype=bool)
    l_present[lpos >= 0] = local_live[lpos[lpos >= 0]]  # a soft-deleted local device is not present
    pairs["l_present"] = l_present
    pairs["r_present"] = rpos >= 0

    frames: list[pd.DataFrame] = []
    conflicts: list[pd.DataFrame] = []

    # --- Both sides present: field-level diff -------------------------------------------------
    both = (pairs["l_present"] & pairs["r_present"]).to_numpy()
    lp, rp = lpos[both], rpos[both]
    P = pairs[both].reset_index(drop=True)
    P["local_updated_at"] = _utc(local["updated_at"])[lp]
    P["remote_updated_at"] = _utc(remote["updated_at"])[rp]
    L_raw = {f: _objects(local[f])[lp] for f in fields}
    R_raw = {f: _objects(remote[f])[rp] for f in fields}
    base_dicts = snapshot_dicts(snapshots[both])
    B_raw = {f: base_values(base_dicts, f) for f in fields}

    cells = [_scalar_cells(P, L_raw, R_raw, B_raw, scalar)]
    if "desired_state" in fields:
        maybe = _maybe_differs(L_raw["desired_state"], R_raw["desired_state"], B_raw["desired_state"])
        L = canonical_values("desired_state", L_raw["desired_state"][maybe])
        R = canonical_values("desired_state", R_raw["desired_state"][maybe])
        B = canonical_base_values("desired_state", B_raw["desired_state"][maybe])
        # Whole objects equal but not the base: record the base for the object in one row.
        agree = (L == R) & (L != B)
        agreed = P.iloc[maybe[agree]]
        frames.append(
            _rows(
                agreed,
                np.ones(len(agreed), dtype=bool),
                "desired_state",
                "agree",
                "none",
                B[agree],
                L[agree],
                "both sides agree",
            )
        )
        differs = L != R
        if differs.any():
            rows = maybe[differs]
            cells.append(
                _desired_cells(
                    P.iloc[rows].reset_index(drop=True),
                    pd.Series(L_raw["desired_state"][rows], dtype=object),
                    pd.Series(R_raw["desired_state"][rows], dtype=object),
                    pd.Series(B_raw["desired_state"][rows], dtype=object),
                    B[differs] != NO_BASE,
                )
            )
    cells = [c for c in cells if not c.empty]
    if cells:
        all_cells = pd.concat(cells, ignore_index=True)
        resolved_frames, all_cells = _apply_resolutions(all_cells, resolutions, settings)
        frames += resolved_frames
        diff_frames, manual, unwritten = _diff_cells(all_cells, settings)
        diff_frames[0] = _hold_unsettled_desired_keys(diff_frames[0], unwritten)
        frames += diff_frames
        if not manual.empty:
            conflicts.append(
                pd.DataFrame(
                    {
                        "device_id": manual["device_id"].to_numpy(),
                        "golioth_device_id": manual["golioth_device_id"].to_numpy(),
                        "field": manual["field"].to_numpy(),
                        "conflict_type": "field",
                        "base_value": manual["B"].to_numpy(),
                        "local_value": manual["L"].to_numpy(),
                        "remote_value": manual["R"].to_numpy(),
                    }
                )
            )

    if "observed" in settings.field_groups and not P.empty:
        obs = observed_changes(_columns(local, OBSERVED_FIELDS, lp), _columns(remote, OBSERVED_FIELDS, rp))
        if obs.any():
            rows = _rows(P, obs, "observed", "observe", "local", None, None, "observed in Golioth")
            rows["new_value"] = _observed_json(_columns(remote, OBSERVED_FIELDS, rp[obs]))
            frames.append(rows)

    # --- One side gone: propagate the delete, unlink, or conflict ------------------------------
    frames += _deletions(pairs, local, remote, lpos, rpos, snapshots, fields, settings, conflicts, resolutions)

    # --- New links, creations, identity conflicts ---------------------------------------------
    if not matching.new_links.empty:
        # A link to a device we created carries the base it starts from (stored with the link).
        ours = matching.new_links["device_id"].isin(created).to_numpy()
        frames.append(
            matching.new_links.assign(
                field="*",
                action="link",
                side="none",
                new_value=np.where(ours, dump_json({"enabled": True, "desired_state": {}}), None),
                reason=np.where(ours, "matched by hardware id: created by an unfinished run", "matched by hardware id"),
            )
        )
    frames.append(
        pd.DataFrame(
            {
                "device_id": None,
                "golioth_device_id": matching.remote_only.to_numpy(),
                "field": "*",
                "action": "create",
                "side": "local",
                "reason": "new in Golioth",
            }
        )
    )
    frames.append(
        pd.DataFrame(
            {
                "device_id": matching.local_only.to_numpy(),
                "golioth_device_id": None,
                "field": "*",
                "action": "create",
                "side": "remote",
                "reason": "new locally",
            }
        )
    )
    if not matching.identity_conflicts.empty:
        ic = matching.identity_conflicts
        conflicts.append(
            pd.DataFrame(
                {
                    "device_id": ic["device_id"].to_numpy(),
                    "golioth_device_id": ic["golioth_device_id"].to_numpy(),
                    "field": "identity",
                    "conflict_type": "identity",
                    "base_value": None,
                    # JSON text (not canonical strings): which devices share hardware ids.
                    "local_value": [
                        dump_json({"hardware_ids": decode("hardware_ids", _canonical_hw(local, d))})
                        if isinstance(d, str)
                        else dump_json({"candidates": list(c)})
                        for d, c in zip(ic["device_id"], ic["candidates"])
                    ],
                    "remote_value": [
                        dump_json({"hardware_ids": decode("hardware_ids", _canonical_hw(remote, g))})
                        if isinstance(g, str)
                        else dump_json({"candidates": list(c)})
                        for g, c in zip(ic["golioth_device_id"], ic["candidates"])
                    ],
                }
            )
        )

    changes = pd.concat([empty_changes(), *[f for f in frames if not f.empty]], ignore_index=True)
    changes["blocked"] = ~changes["side"].map(settings.writes).astype(bool)
    changes.loc[changes["side"] == "none", "blocked"] = False
    conflict_frame = (pd.concat(conflicts, ignore_index=True) if conflicts else pd.DataFrame(columns=CONFLICT_COLUMNS))[
        CONFLICT_COLUMNS
    ]

    return Plan(
        changes=changes[CHANGE_COLUMNS],
        conflicts=conflict_frame,
        superseded=_superseded(open_conflicts, conflict_frame, local.index, remote.index),
        pairs=pairs,
    )


def _objects(values) -> np.ndarray:
    """A column as an object array (ids, lists, dicts, text): no copy when it already is one."""
    return values.to_numpy(dtype=object) if hasattr(values, "to_numpy") else np.asarray(values, dtype=object)


def _utc(values: pd.Series) -> np.ndarray:
    """Timestamps as UTC datetime64 (to_numpy() on a tz-aware column builds a Timestamp per row)."""
    return pd.to_datetime(values, utc=True, errors="coerce").dt.tz_convert(None).to_numpy()


def _id_index(ids: pd.Series) -> pd.Index:
    return pd.Index(_objects(ids), dtype=object)


def _marked(positions: np.ndarray, size: int) -> np.ndarray:
    """Bool array of `size` with True at the given positions (-1, "not found", is ignored)."""
    marked = np.zeros(size, dtype=bool)
    marked[positions[positions >= 0]] = True
    return marked


def _columns(frame: pd.DataFrame, columns, positions: np.ndarray) -> pd.DataFrame:
    """Some columns of some rows, by position (the ones the frame has)."""
    return frame[[c for c in columns if c in frame]].iloc[positions].reset_index(drop=True)


def _canonical_hw(frame: pd.DataFrame, device_id: str) -> str:
    return canonical_values("hardware_ids", _objects(frame.loc[[device_id], "hardware_ids"]))[0]


def _observed_json(remote_rows: pd.DataFrame) -> np.ndarray:
    present = [f for f in OBSERVED_FIELDS if f in remote_rows]
    columns = [[_jsonable(v) for v in remote_rows[f].to_numpy(dtype=object)] for f in present]
    return np.array([dump_json(dict(zip(present, values))) for values in zip(*columns)], dtype=object)


def _jsonable(value):
    if value is None or value is pd.NaT or (isinstance(value, float) and value != value):
        return None  # missing (None, NaT, NaN)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _deletions(
    pairs, local, remote, lpos, rpos, snapshots, fields, settings, conflicts, resolutions
) -> list[pd.DataFrame]:
    frames = []
    l_present = pairs["l_present"].to_numpy()
    r_present = pairs["r_present"].to_numpy()
    resolved = {}
    if resolutions is not None and not resolutions.empty:
        dvm = resolutions[resolutions["conflict_type"] == "delete_vs_modify"]
        resolved = {
            (d, g): (r, cid, by)
            for d, g, r, cid, by in zip(
                dvm["device_id"], dvm["golioth_device_id"], dvm["resolution"], dvm["conflict_id"], dvm["resolved_by"]
            )
        }

    gone_both = ~l_present & ~r_present
    if gone_both.any():
        frames.append(_rows(pairs, gone_both, "*", "unlink", "none", None, None, "gone on both sides"))

    for deleted_side, survivor in (("local", "remote"), ("remote", "local")):
        mask = (~l_present & r_present) if deleted_side == "local" else (l_present & ~r_present)
        if not mask.any():
            continue
        sub = pairs[mask].reset_index(drop=True)
        survivor_rows = remote.iloc[rpos[mask]] if survivor == "remote" else local.iloc[lpos[mask]]
        modified = _device_changed(survivor_rows, snapshot_dicts(snapshots[mask]), fields)
        outcome = np.where(modified, "conflict", np.where(settings.allow_deletes, "delete", "unlink")).astype(object)
        choice = [resolved.get((d, g)) for d, g in zip(sub["device_id"], sub["golioth_device_id"])]
        reason = np.array(
            [f"deleted {'locally' if deleted_side == 'local' else 'in Golioth'}"] * len(sub), dtype=object
        )
        conflict_ids = np.array([c[1] if c else None for c in choice], dtype=object)
        changed_by = np.array([c[2] if c else None for c in choice], dtype=object)
        for i, c in enumerate(choice):
            if c is None:
                continue
            # An operator chose: the deleted side's choice deletes the survivor; the survivor's recreates it.
            outcome[i] = "delete" if c[0] == deleted_side else "recreate"
            reason[i] = f"resolved by {c[2] or 'operator'}"
        delete_rows = _rows(sub, outcome == "delete", "*", "delete", survivor, None, None, reason)
        recreate = _rows(sub, outcome == "recreate", "*", "create", deleted_side, None, None, reason)
        for rows, m in ((delete_rows, outcome == "delete"), (recreate, outcome == "recreate")):
            rows["conflict_id"] = conflict_ids[m]
            rows["changed_by"] = changed_by[m]
        frames += [
            delete_rows,
            recreate,
            _rows(sub, outcome == "unlink", "*", "unlink", "none", None, None, reason + "; deletes are off"),
        ]
        in_conflict = sub[outcome == "conflict"]
        if not in_conflict.empty:
            state = canonicalize(survivor_rows[outcome == "conflict"], fields)
            survivor_json = [
                dump_json({f: decode(f, v) for f, v in zip(fields, row)}) for row in state.itertuples(index=False)
            ]
            conflicts.append(
                pd.DataFrame(
                    {
                        "device_id": in_conflict["device_id"].to_numpy(),
                        "golioth_device_id": in_conflict["golioth_device_id"].to_numpy(),
                        "field": "*",
                        "conflict_type": "delete_vs_modify",
                        "base_value": None,
                        "local_value": survivor_json if survivor == "local" else dump_json({"deleted": True}),
                        "remote_value": survivor_json if survivor == "remote" else dump_json({"deleted": True}),
                    }
                )
            )
    return frames


def _superseded(open_conflicts, conflicts: pd.DataFrame, local_ids: pd.Index, remote_ids: pd.Index) -> list[int]:
    """Pending conflicts, within this run's devices, that this run no longer finds."""
    if open_conflicts is None or open_conflicts.empty:
        return []
    in_scope = (local_ids.get_indexer(_objects(open_conflicts["device_id"])) >= 0) | (
        remote_ids.get_indexer(_objects(open_conflicts["golioth_device_id"])) >= 0
    )
    candidates = open_conflicts[in_scope]
    still = conflicts[["device_id", "golioth_device_id", "field"]].astype(object).fillna("")
    keys = set(map(tuple, still.to_numpy()))
    mine = candidates[["device_id", "golioth_device_id", "field"]].astype(object).fillna("")
    gone = [tuple(k) not in keys for k in mine.to_numpy()]
    return [int(i) for i in candidates["conflict_id"][gone]]
