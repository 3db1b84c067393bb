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
    SCALAR_FIELDS,
    SYNCED_FIELDS,
    enabled_fields,
)
from golioth_assets.core.match import Matching, match_devices
from golioth_assets.core.normalize import (
    NO_BASE,
    NULL,
    canonical_json_value,
    canonicalize,
    canonicalize_base,
    decode,
    dump_json,
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
        return self.writes().empty and self.conflicts.empty and not self.superseded and not (
            self.changes["action"].isin(["agree", "link", "unlink"]).any()
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
    selected = pairs[mask]

    def pick(value):
        return value[mask] if isinstance(value, np.ndarray) else value

    return pd.DataFrame(
        {
            "device_id": selected["device_id"].to_numpy(),
            "golioth_device_id": selected["golioth_device_id"].to_numpy(),
            "field": pick(field_name.to_numpy() if isinstance(field_name, pd.Series) else field_name),
            "action": action,
            "side": side,
            "old_value": pick(old),
            "new_value": pick(new),
            "reason": pick(reason),
        }
    )


def _diff_cells(cells: pd.DataFrame, settings: SyncSettings) -> tuple[list[pd.DataFrame], pd.DataFrame]:
    """Three-way diff over long-format cells: device_id, golioth_device_id, field, L, R, B,
    local_updated_at, remote_updated_at. Returns (plan row frames, conflict cells)."""
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
    else:
        manual = conflicting
    return frames, manual


def _scalar_cells(pairs: pd.DataFrame, Lc, Rc, Bc, fields: tuple[str, ...]) -> pd.DataFrame:
    """Long-format cells for the scalar fields where L, R and B are not all equal."""
    frames = []
    for f in fields:
        L, R, B = Lc[f].to_numpy(dtype=object), Rc[f].to_numpy(dtype=object), Bc[f].to_numpy(dtype=object)
        differs = (L != R) | (L != B)
        if differs.any():
            sub = pairs.loc[differs, ["device_id", "golioth_device_id", "local_updated_at", "remote_updated_at"]]
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
    same = (L == chosen) & (R == chosen)
    rows = _rows(hit, same, hit["field"], "agree", "none", L, chosen, reason)
    rows["conflict_id"] = hit["conflict_id"].to_numpy()[same]
    frames.append(rows)
    return frames, cells[~resolved]


def _device_changed(Xc: pd.DataFrame, Bc: pd.DataFrame, fields: tuple[str, ...]) -> np.ndarray:
    """Whether a side changed any synced field since the base (a field never agreed on doesn't count)."""
    changed = np.zeros(len(Xc), dtype=bool)
    for f in fields:
        B = Bc[f].to_numpy(dtype=object)
        changed |= (Xc[f].to_numpy(dtype=object) != B) & (B != NO_BASE)
    return changed


def plan_sync(
    local: pd.DataFrame,
    remote: pd.DataFrame,
    links: pd.DataFrame,
    settings: SyncSettings,
    *,
    resolutions: pd.DataFrame | None = None,
    open_conflicts: pd.DataFrame | None = None,
) -> Plan:
    """Plan one sync.

    local:  device_id, the synced fields, updated_at, deleted_at (+ observed fields, optional)
    remote: golioth_device_id, the synced fields, updated_at (+ observed fields, optional)
    links:  device_id, golioth_device_id, base_snapshot (dict), link_status ("linked"/"unlinked")
    resolutions: conflict_id, device_id, golioth_device_id, field, conflict_type, chosen (canonical),
                 resolution ("local"/"remote"/"value"), resolved_by
    open_conflicts: conflict_id, device_id, golioth_device_id, field (pending ones, for superseding)
    """
    fields = enabled_fields(settings.field_groups)
    scalar = tuple(f for f in fields if f in SCALAR_FIELDS)

    local = local.set_index("device_id", drop=False)
    remote = remote.set_index("golioth_device_id", drop=False)
    Lc_all = canonicalize(local, SYNCED_FIELDS)
    Rc_all = canonicalize(remote, SYNCED_FIELDS)
    local_live = local["deleted_at"].isna()

    matching = match_devices(Lc_all["hardware_ids"], local_live, Rc_all["hardware_ids"], links)

    pairs = pd.concat(
        [
            matching.links[["device_id", "golioth_device_id"]].assign(new_link=False),
            matching.new_links[["device_id", "golioth_device_id"]].assign(new_link=True),
        ],
        ignore_index=True,
    )
    pairs["l_present"] = pairs["device_id"].map(local_live).fillna(False).astype(bool).to_numpy()
    pairs["r_present"] = pairs["golioth_device_id"].isin(remote.index).to_numpy()
    snapshots = pairs.merge(
        links[["device_id", "golioth_device_id", "base_snapshot"]], on=["device_id", "golioth_device_id"], how="left"
    )["base_snapshot"]
    snapshots = snapshots.where(~pairs["new_link"].to_numpy(), None)
    snapshots = snapshots.map(lambda b: b if isinstance(b, dict) else {})
    Bc_all = canonicalize_base(snapshots, SYNCED_FIELDS)

    frames: list[pd.DataFrame] = []
    conflicts: list[pd.DataFrame] = []

    # --- Both sides present: field-level diff -------------------------------------------------
    both = (pairs["l_present"] & pairs["r_present"]).to_numpy()
    P = pairs[both].reset_index(drop=True)
    P["local_updated_at"] = local["updated_at"].reindex(P["device_id"]).to_numpy()
    P["remote_updated_at"] = remote["updated_at"].reindex(P["golioth_device_id"]).to_numpy()
    Lc = Lc_all.reindex(P["device_id"]).reset_index(drop=True)
    Rc = Rc_all.reindex(P["golioth_device_id"]).reset_index(drop=True)
    Bc = Bc_all[both].reset_index(drop=True)

    cells = [_scalar_cells(P, Lc, Rc, Bc, scalar)]
    if "desired_state" in fields:
        L, R, B = Lc["desired_state"].to_numpy(), Rc["desired_state"].to_numpy(), Bc["desired_state"].to_numpy()
        # Whole objects equal but not the base: record the base for the object in one row.
        frames.append(_rows(P, (L == R) & (L != B), "desired_state", "agree", "none", B, L, "both sides agree"))
        differs = L != R
        if differs.any():
            sub = P[differs].reset_index(drop=True)
            base_raw = snapshots[both].reset_index(drop=True)[differs].map(lambda b: b.get("desired_state"))
            cells.append(
                _desired_cells(
                    sub,
                    local["desired_state"].reindex(sub["device_id"]),
                    remote["desired_state"].reindex(sub["golioth_device_id"]),
                    base_raw,
                    B[differs] != NO_BASE,
                )
            )
    cells = [c for c in cells if not c.empty]
    if cells:
        all_cells = pd.concat(cells, ignore_index=True)
        resolved_frames, all_cells = _apply_resolutions(all_cells, resolutions, settings)
        frames += resolved_frames
        diff_frames, manual = _diff_cells(all_cells, settings)
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
        obs = observed_changes(local.reindex(P["device_id"]), remote.reindex(P["golioth_device_id"]))
        if obs.any():
            observed_values = remote.reindex(P["golioth_device_id"][obs])
            rows = _rows(P, obs, "observed", "observe", "local", None, None, "observed in Golioth")
            rows["new_value"] = _observed_json(observed_values)
            frames.append(rows)

    # --- One side gone: propagate the delete, unlink, or conflict ------------------------------
    frames += _deletions(pairs, both, Lc_all, Rc_all, Bc_all, fields, settings, conflicts, resolutions)

    # --- New links, creations, identity conflicts ---------------------------------------------
    if not matching.new_links.empty:
        frames.append(
            matching.new_links.assign(field="*", action="link", side="none", reason="matched by hardware id")
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
                        dump_json({"hardware_ids": decode("hardware_ids", Lc_all["hardware_ids"].get(d))})
                        if isinstance(d, str)
                        else dump_json({"candidates": list(c)})
                        for d, c in zip(ic["device_id"], ic["candidates"])
                    ],
                    "remote_value": [
                        dump_json({"hardware_ids": decode("hardware_ids", Rc_all["hardware_ids"].get(g))})
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
    conflict_frame = (
        pd.concat(conflicts, ignore_index=True) if conflicts else pd.DataFrame(columns=CONFLICT_COLUMNS)
    )[CONFLICT_COLUMNS]

    return Plan(
        changes=changes[CHANGE_COLUMNS],
        conflicts=conflict_frame,
        superseded=_superseded(open_conflicts, conflict_frame, local.index, remote.index),
        pairs=pairs,
    )


def _observed_json(remote_rows: pd.DataFrame) -> np.ndarray:
    from golioth_assets.core.fields import OBSERVED_FIELDS

    present = [f for f in OBSERVED_FIELDS if f in remote_rows]
    records = remote_rows[present].astype(object).where(remote_rows[present].notna(), None)
    return np.array([dump_json({k: _jsonable(v) for k, v in r.items()}) for r in records.to_dict("records")], dtype=object)


def _jsonable(value):
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _deletions(pairs, both, Lc_all, Rc_all, Bc_all, fields, settings, conflicts, resolutions) -> list[pd.DataFrame]:
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

    for deleted_side, survivor, survivor_frame in (("local", "remote", Rc_all), ("remote", "local", Lc_all)):
        mask = (~l_present & r_present) if deleted_side == "local" else (l_present & ~r_present)
        if not mask.any():
            continue
        sub = pairs[mask].reset_index(drop=True)
        key = "golioth_device_id" if survivor == "remote" else "device_id"
        Xc = survivor_frame.reindex(sub[key]).reset_index(drop=True)
        Bc = Bc_all[mask].reset_index(drop=True)
        modified = _device_changed(Xc, Bc, fields)
        outcome = np.where(modified, "conflict", np.where(settings.allow_deletes, "delete", "unlink")).astype(object)
        choice = [resolved.get((d, g)) for d, g in zip(sub["device_id"], sub["golioth_device_id"])]
        reason = np.array([f"deleted {'locally' if deleted_side == 'local' else 'in Golioth'}"] * len(sub), dtype=object)
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
            state = survivor_frame.reindex(in_conflict[key])[list(fields)]
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
    in_scope = open_conflicts["device_id"].isin(local_ids) | open_conflicts["golioth_device_id"].isin(remote_ids)
    candidates = open_conflicts[in_scope]
    still = conflicts[["device_id", "golioth_device_id", "field"]].astype(object).fillna("")
    keys = set(map(tuple, still.to_numpy()))
    mine = candidates[["device_id", "golioth_device_id", "field"]].astype(object).fillna("")
    gone = [tuple(k) not in keys for k in mine.to_numpy()]
    return [int(i) for i in candidates["conflict_id"][gone]]
