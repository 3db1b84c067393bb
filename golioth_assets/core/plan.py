"""The three-way diff: given local devices, Golioth devices and the last state both agreed on (the
base), decide device by device and field by field what to change where.

Per field, with base B, local L and remote R (canonical strings, see normalize.py):
- L = R: in sync; if they differ from B, record the new base ("agree").
- L ≠ B and R = B: push L to Golioth.
- R ≠ B and L = B: pull R into the local table.
- L ≠ B, R ≠ B, L ≠ R: a conflict, settled by the policy (or stored for an operator).

Everything is vectorized over devices: one pass of array comparisons per field. The output is a
plan table (one row per device, field and action) that the engine applies and a dry run prints.

`plan_sync` runs named phases, each a function from explicit inputs to a small result:
index the sides → pair devices → the present pairs' values → field diff (scalar cells, desired-state
cells, operator resolutions, policy) → observed changes → deletions → new links, creates and
identity conflicts → assemble the Plan. Each row carries a `kind` (a `Reason`, what code decides on)
and the `reason` text shown to operators, made from the kind.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from golioth_assets.core.fields import (
    DESIRED_PREFIX,
    OBSERVED_FIELDS,
    SCALAR_FIELDS,
    group_of,
)
from golioth_assets.core.match import Matching, match_devices
from golioth_assets.core.normalize import (
    NO_BASE,
    base_values,
    canonical_base_values,
    canonical_values,
    canonicalize,
    decode,
    dump_json,
    json_value_one,
    snapshot_dicts,
)
from golioth_assets.core.observed import TIMESTAMPS, VALUES, observed_changes, utc_naive
from golioth_assets.core.policy import SyncSettings, conflict_winner
from golioth_assets.core.vocabulary import (
    BOOKKEEPING_ACTIONS,
    WRITE_ACTIONS,
    Action,
    ConflictType,
    FieldGroup,
    Policy,
    Reason,
    Side,
)

Bools = npt.NDArray[np.bool_]
Objects = npt.NDArray[np.object_]
Positions = npt.NDArray[np.intp]

CHANGE_COLUMNS = [
    "device_id",
    "golioth_device_id",
    "field",
    "action",  # an Action
    "side",  # a Side
    "old_value",
    "new_value",
    "kind",  # why the row exists, a Reason: what code decides on
    "reason",  # the same for operators: made from the kind (plus who resolved, which policy settled)
    "blocked",  # the direction forbids this write: it stays pending, visible in the plan
    "conflict_id",  # set when an operator's resolution caused this change
    "changed_by",
]
ID_COLUMNS = ("device_id", "golioth_device_id")
CONFLICT_COLUMNS = [
    "device_id",
    "golioth_device_id",
    "field",
    "conflict_type",  # a ConflictType
    "base_value",
    "local_value",
    "remote_value",
]
__all__ = ["CHANGE_COLUMNS", "CONFLICT_COLUMNS", "WRITE_ACTIONS", "Plan", "plan_sync", "reason_text"]

# The operator-facing text of each kind; "{}" takes the detail (who resolved, which policy settled,
# which side deleted).
REASON_TEXT: dict[Reason, str] = {
    Reason.agreed: "both sides agree",
    Reason.changed_locally: "changed locally",
    Reason.changed_in_golioth: "changed in Golioth",
    Reason.settled_by_policy: "conflict settled by {}",
    Reason.resolved_by_operator: "resolved by {}",
    Reason.gone_on_both_sides: "gone on both sides",
    Reason.deleted_locally: "deleted locally",
    Reason.deleted_in_golioth: "deleted in Golioth",
    Reason.deletes_off: "{}; deletes are off",
    Reason.observed_in_golioth: "observed in Golioth",
    Reason.matched_by_hardware_id: "matched by hardware id",
    Reason.matched_unfinished_create: "matched by hardware id: created by an unfinished run",
    Reason.new_in_golioth: "new in Golioth",
    Reason.new_locally: "new locally",
    Reason.no_hardware_ids: "new locally; not created in Golioth: the local table maps no hardware_ids column",
}
assert set(REASON_TEXT) == set(Reason), "every kind has its text"

# What a create leaves in Golioth that the create itself cannot set: the base a device we created
# (but never recorded) starts from when it is matched again.
CREATED_BASE: dict[str, Any] = {"enabled": True, "desired_state": {}}


def reason_text(kind: Reason, detail: str | None = None) -> str:
    """The text shown to operators for a plan row of this kind."""
    template = REASON_TEXT[kind]
    return template.format(detail) if "{}" in template else template


def _reasons(kind: Reason | Objects, detail: str | Objects | None) -> str | Objects:
    """reason_text over rows: one string when kind and detail are the same for every row."""
    if isinstance(kind, np.ndarray):
        kinds = kind
    elif isinstance(detail, np.ndarray):
        kinds = np.full(len(detail), kind, dtype=object)
    else:
        return reason_text(kind, detail)
    details = detail if isinstance(detail, np.ndarray) else np.full(len(kinds), detail, dtype=object)
    return np.array([reason_text(k, d) for k, d in zip(kinds, details)], dtype=object)


@dataclass
class Plan:
    changes: pd.DataFrame
    conflicts: pd.DataFrame
    superseded: list[int] = field(default_factory=list)
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)

    def writes(self, side: Side | None = None) -> pd.DataFrame:
        """Changes that will actually be written (not blocked by the direction)."""
        rows = self.changes[self.changes["action"].isin(WRITE_ACTIONS) & ~self.changes["blocked"]]
        return rows if side is None else rows[rows["side"] == side]

    @property
    def is_noop(self) -> bool:
        """True when applying this plan would write nothing to either side."""
        return bool(
            self.writes().empty
            and self.conflicts.empty
            and not self.superseded
            and not (self.changes["action"].isin(BOOKKEEPING_ACTIONS).any())
        )

    def counts(self) -> dict[str, int]:
        """Rows per side and action; an update counts its devices (a row per field): one pass in
        Python over the few written rows, not a frame filter per count."""
        writes = self.writes()
        rows: Counter[tuple[str, str]] = Counter()
        updated: dict[str, set[str]] = {Side.local: set(), Side.remote: set()}
        for side, action, device_id, golioth_device_id in zip(
            writes["side"], writes["action"], writes["device_id"], writes["golioth_device_id"]
        ):
            rows[side, action] += 1
            if action == Action.update:
                updated[side].add(golioth_device_id if side == Side.remote else device_id)
        actions = Counter(self.changes["action"].tolist())
        return {
            "created_local": rows[Side.local, Action.create],
            "updated_local": len(updated[Side.local]),
            "deleted_local": rows[Side.local, Action.delete],
            "observed_local": rows[Side.local, Action.observe],
            "created_remote": rows[Side.remote, Action.create],
            "updated_remote": len(updated[Side.remote]),
            "deleted_remote": rows[Side.remote, Action.delete],
            "conflicts": len(self.conflicts),
            "blocked": int(self.changes["blocked"].sum()),
            "linked": actions[Action.link],
            "unlinked": actions[Action.unlink],
            "superseded": len(self.superseded),
        }


def _empty_changes() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in CHANGE_COLUMNS})
    frame["blocked"] = frame["blocked"].astype(bool)
    return frame


# Built once, copied per plan: a plan with nothing to do costs mostly such fixed pandas steps.
_NO_CHANGES = _empty_changes()
_NO_CONFLICTS = pd.DataFrame(columns=CONFLICT_COLUMNS)


def empty_changes() -> pd.DataFrame:
    return _NO_CHANGES.copy()


def _change_table(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The phases' non-empty change frames as one, in CHANGE_COLUMNS, every column object (blocked
    is set after): what concatenating them under empty_changes() gives, without building and
    concatenating an empty frame on every plan (most plans have few rows; pandas' fixed costs rule)."""
    if not frames:
        return empty_changes()
    changes = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    return pd.DataFrame(
        {
            c: changes[c].to_numpy(dtype=object) if c in changes else np.full(len(changes), np.nan, dtype=object)
            for c in CHANGE_COLUMNS
        },
        dtype=object,  # else pandas infers its str dtype for text columns
    )


def _rows(
    pairs: pd.DataFrame,
    mask: Bools,
    *,
    field: str | pd.Series,
    action: Action,
    side: Side,
    kind: Reason | Objects,
    old: Any = None,
    new: Any = None,
    detail: str | Objects | None = None,
    operator: tuple[Objects, Objects] | None = None,
) -> pd.DataFrame:
    """Plan rows for the pairs selected by `mask`. Array arguments are aligned with `pairs`;
    `operator`: the conflict_id and changed_by columns of rows that carry out a resolution.
    No rows: an empty frame without columns (assemble drops it), not a costly empty frame of them."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return pd.DataFrame()

    def pick(value: Any) -> Any:
        return value[mask] if isinstance(value, np.ndarray) else value

    picked_kind, picked_detail = pick(kind), pick(detail)
    return pd.DataFrame(
        {
            "device_id": pairs["device_id"].to_numpy(dtype=object)[mask],
            "golioth_device_id": pairs["golioth_device_id"].to_numpy(dtype=object)[mask],
            "field": pick(field.to_numpy() if isinstance(field, pd.Series) else field),
            "action": action,
            "side": side,
            "old_value": pick(old),
            "new_value": pick(new),
            "kind": picked_kind,
            "reason": _reasons(picked_kind, picked_detail),
            **({"conflict_id": operator[0][mask], "changed_by": operator[1][mask]} if operator else {}),
        }
    )


def _conflict_frame(
    keys: pd.DataFrame, *, field: str | Objects, conflict_type: ConflictType, base: Any, local: Any, remote: Any
) -> pd.DataFrame:
    """Conflict rows (CONFLICT_COLUMNS) for the device pairs in `keys` (device_id, golioth_device_id)."""
    return pd.DataFrame(
        {
            "device_id": keys["device_id"].to_numpy(),
            "golioth_device_id": keys["golioth_device_id"].to_numpy(),
            "field": field,
            "conflict_type": conflict_type,
            "base_value": base,
            "local_value": local,
            "remote_value": remote,
        }
    )


@dataclass(frozen=True)
class PhaseRows:
    """What a phase adds to the plan: its change rows and its conflicts (frames, in plan order)."""

    changes: list[pd.DataFrame] = field(default_factory=list)
    conflicts: list[pd.DataFrame] = field(default_factory=list)


# -- the phases, in the order plan_sync runs them ------------------------------------------------------


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
    sides = index_sides(local, remote, links)
    pairing = pair_devices(sides, links, unconfirmed_creates)
    present = present_pairs(sides, pairing, fields)
    phases = [
        field_diff(present, fields, settings, resolutions),
        observed_rows(sides, present, settings),
        deletions(sides, pairing, fields, settings, resolutions),
        links_and_creates(sides, pairing, settings),
    ]
    return assemble(phases, sides, pairing.pairs, settings, open_conflicts)


@dataclass(frozen=True)
class Sides:
    """Both sides indexed by id, and where each stored link's devices are (-1: not in this run)."""

    local: pd.DataFrame  # indexed by device_id
    remote: pd.DataFrame  # indexed by golioth_device_id
    local_live: Bools  # not soft-deleted; aligned with local
    link_lpos: Positions  # aligned with links
    link_rpos: Positions


def index_sides(local: pd.DataFrame, remote: pd.DataFrame, links: pd.DataFrame) -> Sides:
    # Each side is indexed by id once (object dtype: the fastest hash table). Everything after that
    # is positional, so a plan hashes each side's ids about once, whatever the number of devices.
    local = local.set_axis(_id_index(local["device_id"]))
    remote = remote.set_axis(_id_index(remote["golioth_device_id"]))
    return Sides(
        local=local,
        remote=remote,
        local_live=local["deleted_at"].isna().to_numpy(dtype=bool),
        link_lpos=_locate(local.index, _objects(links["device_id"])),
        link_rpos=_locate(remote.index, _objects(links["golioth_device_id"])),
    )


@dataclass(frozen=True)
class Pairing:
    """Every device pair the plan looks at: the live links, then the new matches by hardware id."""

    matching: Matching
    pairs: pd.DataFrame  # device_id, golioth_device_id, new_link, l_present, r_present
    lpos: Positions  # each pair's row in Sides.local (-1: not in this run)
    rpos: Positions  # each pair's row in Sides.remote (-1: gone from Golioth)
    snapshots: Objects  # each pair's base snapshot (None: the sides never agreed on anything)
    created: frozenset[str]  # local ids of unconfirmed creates (see plan_sync)


def pair_devices(sides: Sides, links: pd.DataFrame, unconfirmed_creates: pd.Series | None) -> Pairing:
    matching = match_devices(
        sides.local["hardware_ids"],
        sides.local_live,
        sides.remote["hardware_ids"],
        links,
        local_linked=_marked(sides.link_lpos, len(sides.local)),
        remote_linked=_marked(sides.link_rpos, len(sides.remote)),
    )
    live_link = (links["link_status"] != "unlinked").to_numpy(dtype=bool)
    new = matching.new_links
    new_local, new_remote = _objects(new["device_id"]), _objects(new["golioth_device_id"])
    lpos = np.concatenate([sides.link_lpos[live_link], _locate(sides.local.index, new_local)])
    rpos = np.concatenate([sides.link_rpos[live_link], _locate(sides.remote.index, new_remote)])
    # A new link has no base yet: the sides never agreed on anything (unless we created it).
    created = frozenset(unconfirmed_creates) if unconfirmed_creates is not None else frozenset()
    new_bases = [dict(CREATED_BASE) if d in created else None for d in new_local]
    snapshots = np.concatenate([_objects(links["base_snapshot"])[live_link], np.array(new_bases, dtype=object)])
    l_present = np.zeros(len(lpos), dtype=bool)
    l_present[lpos >= 0] = sides.local_live[lpos[lpos >= 0]]  # a soft-deleted local device is not present
    pairs = pd.DataFrame(
        {
            # Object Series: a frame built from object arrays would infer pandas' str dtype.
            "device_id": pd.Series(np.concatenate([_objects(links["device_id"])[live_link], new_local]), dtype=object),
            "golioth_device_id": pd.Series(
                np.concatenate([_objects(links["golioth_device_id"])[live_link], new_remote]), dtype=object
            ),
            "new_link": np.concatenate([np.zeros(int(live_link.sum()), dtype=bool), np.ones(len(new), dtype=bool)]),
            "l_present": l_present,
            "r_present": rpos >= 0,
        }
    )
    return Pairing(matching, pairs, lpos, rpos, snapshots, created)


@dataclass(frozen=True)
class PresentPairs:
    """The pairs whose devices exist on both sides, with each field's raw values aligned by position."""

    pairs: pd.DataFrame  # Pairing.pairs' columns + local_updated_at, remote_updated_at
    lpos: Positions
    rpos: Positions
    local: dict[str, Objects]  # field → local raw values
    remote: dict[str, Objects]  # field → Golioth raw values
    base: dict[str, Objects]  # field → base raw values (ABSENT where the sides never agreed)


def present_pairs(sides: Sides, pairing: Pairing, fields: tuple[str, ...]) -> PresentPairs:
    source = pairing.pairs
    both = source["l_present"].to_numpy() & source["r_present"].to_numpy()
    lp, rp = pairing.lpos[both], pairing.rpos[both]
    # One frame built from arrays (object Series for the ids, not to be inferred as str): filtering,
    # re-indexing and adding columns to a copy of Pairing.pairs cost several times more.
    pairs = pd.DataFrame(
        {
            **{c: pd.Series(source[c].to_numpy(dtype=object)[both], dtype=object) for c in ID_COLUMNS},
            **{c: source[c].to_numpy()[both] for c in ("new_link", "l_present", "r_present")},
            "local_updated_at": utc_naive(sides.local["updated_at"])[lp],
            "remote_updated_at": utc_naive(sides.remote["updated_at"])[rp],
        }
    )
    base_dicts = snapshot_dicts(pairing.snapshots[both])
    return PresentPairs(
        pairs=pairs,
        lpos=lp,
        rpos=rp,
        local={f: _objects(sides.local[f])[lp] for f in fields},
        remote={f: _objects(sides.remote[f])[rp] for f in fields},
        base={f: base_values(base_dicts, f) for f in fields},
    )


def field_diff(
    present: PresentPairs, fields: tuple[str, ...], settings: SyncSettings, resolutions: pd.DataFrame | None
) -> PhaseRows:
    """The three-way diff of the present pairs, field by field (desired state key by key)."""
    cells = [_scalar_cells(present, tuple(f for f in fields if f in SCALAR_FIELDS))]
    agreed_objects: list[pd.DataFrame] = []
    if FieldGroup.desired_state in fields:
        desired = desired_state_diff(present)
        agreed_objects.append(desired.agreed)
        cells.append(desired.cells)
    settled = settle_cells([c for c in cells if not c.empty], settings, resolutions)
    return PhaseRows([*agreed_objects, *settled.changes], settled.conflicts)


@dataclass(frozen=True)
class DesiredStateDiff:
    agreed: pd.DataFrame  # plan rows: whole objects equal on both sides but not the base, one per device
    cells: pd.DataFrame  # cells (see _diff_cells), one per key, of the devices whose objects differ


def desired_state_diff(present: PresentPairs) -> DesiredStateDiff:
    name = FieldGroup.desired_state.value
    L_raw, R_raw, B_raw = present.local[name], present.remote[name], present.base[name]
    maybe = _maybe_differs(L_raw, R_raw, B_raw)
    if not len(maybe):  # the usual case: every device's objects identical on all three
        return DesiredStateDiff(pd.DataFrame(), pd.DataFrame())
    L = canonical_values(name, L_raw[maybe])
    R = canonical_values(name, R_raw[maybe])
    B = canonical_base_values(name, B_raw[maybe])
    # Whole objects equal but not the base: record the base for the object in one row.
    agree = (L == R) & (L != B)
    rows = pd.DataFrame()
    if agree.any():
        agreed = present.pairs.iloc[maybe[agree]]
        ones = np.ones(len(agreed), dtype=bool)
        rows = _rows(
            agreed,
            ones,
            field=name,
            action=Action.agree,
            side=Side.none,
            kind=Reason.agreed,
            old=B[agree],
            new=L[agree],
        )
    differs = L != R
    if not differs.any():
        return DesiredStateDiff(rows, pd.DataFrame())
    at = maybe[differs]
    cells = _desired_cells(present.pairs, at, L_raw[at], R_raw[at], B_raw[at], B[differs] != NO_BASE)
    return DesiredStateDiff(rows, cells)


def settle_cells(cells: Sequence[pd.DataFrame], settings: SyncSettings, resolutions: pd.DataFrame | None) -> PhaseRows:
    """Cells that differ → operator resolutions first, then the three-way rules and the policy;
    what neither settles becomes a field conflict."""
    if not cells:
        return PhaseRows()
    resolved = apply_resolutions(pd.concat(cells, ignore_index=True), resolutions)
    diff = diff_cells(resolved.remaining, settings)
    agreed = _hold_unsettled_desired_keys(diff.agreed, diff.unwritten)
    manual = diff.manual
    conflicts = []
    if not manual.empty:
        conflicts.append(
            _conflict_frame(
                manual,
                field=manual["field"].to_numpy(),
                conflict_type=ConflictType.field,
                base=manual["B"].to_numpy(),
                local=manual["L"].to_numpy(),
                remote=manual["R"].to_numpy(),
            )
        )
    return PhaseRows([*resolved.changes, agreed, *diff.writes], conflicts)


@dataclass(frozen=True)
class Resolved:
    changes: list[pd.DataFrame]  # plan rows that carry out operators' resolutions
    remaining: pd.DataFrame  # the cells no resolution covers


def apply_resolutions(cells: pd.DataFrame, resolutions: pd.DataFrame | None) -> Resolved:
    """Cells an operator resolved become writes to whichever side differs from the chosen value."""
    if resolutions is None or resolutions.empty or cells.empty:
        return Resolved([], cells)
    res = resolutions[resolutions["conflict_type"] == ConflictType.field]
    keyed = cells.merge(
        res[["device_id", "golioth_device_id", "field", "conflict_id", "chosen", "resolved_by"]],
        on=["device_id", "golioth_device_id", "field"],
        how="left",
    )
    resolved = keyed["conflict_id"].notna().to_numpy()
    if not resolved.any():
        return Resolved([], cells)
    hit = keyed[resolved]
    chosen = hit["chosen"].to_numpy(dtype=object)
    L, R = hit["L"].to_numpy(dtype=object), hit["R"].to_numpy(dtype=object)
    by = hit["resolved_by"].fillna("operator").astype(str).to_numpy(dtype=object)
    conflict_ids = hit["conflict_id"].to_numpy()
    frames = []
    for side, current in ((Side.local, L), (Side.remote, R)):
        mask = current != chosen
        rows = _rows(
            hit,
            mask,
            field=hit["field"],
            action=Action.update,
            side=side,
            kind=Reason.resolved_by_operator,
            old=current,
            new=chosen,
            detail=by,
            operator=(conflict_ids, hit["resolved_by"].to_numpy()),
        )
        frames.append(rows)
    # Both sides already hold the chosen value: record it as the new base and close the conflict.
    same = (chosen == L) & (chosen == R)
    rows = _rows(
        hit,
        same,
        field=hit["field"],
        action=Action.agree,
        side=Side.none,
        kind=Reason.resolved_by_operator,
        old=L,
        new=chosen,
        detail=by,
    )
    if len(rows):
        rows["conflict_id"] = conflict_ids[same]  # and no changed_by: nobody writes
    frames.append(rows)
    return Resolved(frames, cells[~resolved])


@dataclass(frozen=True)
class CellDiff:
    agreed: pd.DataFrame  # plan rows: both sides hold the same new value, recorded as the base
    writes: list[pd.DataFrame]  # plan rows: pushes, pulls, and conflicts the policy settled
    manual: pd.DataFrame  # conflicting cells left to an operator
    unwritten: pd.DataFrame  # conflicting cells this run leaves as they are (manual, or a forbidden write)


def diff_cells(cells: pd.DataFrame, settings: SyncSettings) -> CellDiff:
    """Three-way diff over long-format cells: device_id, golioth_device_id, field, L, R, B,
    local_updated_at, remote_updated_at."""
    L, R, B = (cells[c].to_numpy(dtype=object) for c in ("L", "R", "B"))
    lr, lb, rb = L == R, L == B, R == B
    agree = lr & ~lb
    push = ~lb & rb & ~lr
    pull = lb & ~rb & ~lr
    conflict = ~lr & ~lb & ~rb
    cell_field = cells["field"]
    agreed = _rows(
        cells, agree, field=cell_field, action=Action.agree, side=Side.none, kind=Reason.agreed, old=B, new=L
    )
    writes = [
        _rows(
            cells,
            push,
            field=cell_field,
            action=Action.update,
            side=Side.remote,
            kind=Reason.changed_locally,
            old=R,
            new=L,
        ),
        _rows(
            cells,
            pull,
            field=cell_field,
            action=Action.update,
            side=Side.local,
            kind=Reason.changed_in_golioth,
            old=L,
            new=R,
        ),
    ]
    conflicting = cells[conflict]
    if conflicting.empty:
        return CellDiff(agreed, writes, conflicting, conflicting)
    by_policy = settle_by_policy(conflicting, settings)
    return CellDiff(agreed, [*writes, *by_policy.writes], by_policy.manual, by_policy.unwritten)


def settle_by_policy(conflicting: pd.DataFrame, settings: SyncSettings) -> CellDiff:
    """Cells edited on both sides: writes for the policy's winner; the rest stay (see CellDiff)."""
    policies = conflicting["field"].map(group_of).map(settings.policy_for)
    winner = conflict_winner(policies, conflicting["local_updated_at"], conflicting["remote_updated_at"])
    cl, cr = conflicting["L"].to_numpy(dtype=object), conflicting["R"].to_numpy(dtype=object)
    policy = policies.to_numpy(dtype=object)
    writes = [
        _rows(
            conflicting,
            (winner == winning).to_numpy(),
            field=conflicting["field"],
            action=Action.update,
            side=side,
            kind=Reason.settled_by_policy,
            old=old,
            new=new,
            detail=policy,
        )
        for winning, side, old, new in ((Side.local, Side.remote, cr, cl), (Side.remote, Side.local, cl, cr))
    ]
    # Conflicts that stay as they are this run: left to an operator, or settled by the policy
    # with a write that the direction forbids.
    manual = (winner == Policy.manual).to_numpy()
    unwritten = (
        manual
        | ((winner == Side.local) & (not settings.writes(Side.remote))).to_numpy()
        | ((winner == Side.remote) & (not settings.writes(Side.local))).to_numpy()
    )
    return CellDiff(conflicting.iloc[:0], writes, conflicting[manual], conflicting[unwritten])


def _same(a: Objects, b: Objects) -> Bools:
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


def _maybe_differs(L: Objects, R: Objects, B: Objects) -> Positions:
    """Positions where L, R and B are not all identical as raw values (usually few)."""
    return np.flatnonzero(~(_same(L, R) & _same(L, B)))


def _scalar_cells(present: PresentPairs, fields: tuple[str, ...]) -> pd.DataFrame:
    """Long-format cells for the scalar fields where L, R and B are not all equal (canonically).
    Collected as arrays and framed once: a frame per field costs more than the diff itself."""
    at, names, Ls, Rs, Bs = [], [], [], [], []
    for f in fields:
        L_raw, R_raw, B_raw = present.local[f], present.remote[f], present.base[f]
        maybe = _maybe_differs(L_raw, R_raw, B_raw)
        if not len(maybe):
            continue
        L = canonical_values(f, L_raw[maybe])
        R = canonical_values(f, R_raw[maybe])
        B = canonical_base_values(f, B_raw[maybe])
        differs = (L != R) | (L != B)
        if differs.any():
            at.append(maybe[differs])
            names.append(np.full(int(differs.sum()), f, dtype=object))
            Ls.append(L[differs])
            Rs.append(R[differs])
            Bs.append(B[differs])
    if not at:
        return pd.DataFrame()
    return _cells(present.pairs, np.concatenate(at), np.concatenate(names), *map(np.concatenate, (Ls, Rs, Bs)))


def _cells(pairs: pd.DataFrame, at: Positions, names: Objects, L: Objects, R: Objects, B: Objects) -> pd.DataFrame:
    """Cells (see diff_cells) of the present pairs at positions `at`, one per field name."""
    return pd.DataFrame(
        {
            "device_id": pairs["device_id"].to_numpy(dtype=object)[at],
            "golioth_device_id": pairs["golioth_device_id"].to_numpy(dtype=object)[at],
            "local_updated_at": pairs["local_updated_at"].to_numpy()[at],
            "remote_updated_at": pairs["remote_updated_at"].to_numpy()[at],
            "field": names,
            "L": L,
            "R": R,
            "B": B,
        }
    )


def _desired_cells(
    pairs: pd.DataFrame, at: Positions, L_raw: Objects, R_raw: Objects, B_raw: Objects, B_known: Bools
) -> pd.DataFrame:
    """Desired state merges key by key: one cell per top-level key of any side, by pair then key.
    Plain Python: only the devices whose objects differ get here (few), and each has few keys."""
    cell_at, names, L, R, B = [], [], [], [], []
    for p, l_obj, r_obj, b_obj, known in zip(at, L_raw, R_raw, B_raw, B_known):
        ld, rd, bd = (v if isinstance(v, dict) else {} for v in (l_obj, r_obj, b_obj))
        for key in sorted({*ld, *rd, *bd}, key=str):
            cell_at.append(p)
            names.append(DESIRED_PREFIX + str(key))
            L.append(_json_cell(ld, key))
            R.append(_json_cell(rd, key))
            B.append(_json_cell(bd, key) if known else NO_BASE)
    if not cell_at:
        return pd.DataFrame()
    objects = (np.array(v, dtype=object) for v in (names, L, R, B))
    return _cells(pairs, np.array(cell_at, dtype=np.intp), *objects)


def _json_cell(obj: dict[str, Any], key: str) -> str:
    """One desired-state key's canonical JSON; a key the object lacks: NULL."""
    return json_value_one(obj.get(key))


def _hold_unsettled_desired_keys(agree: pd.DataFrame, unwritten: pd.DataFrame) -> pd.DataFrame:
    """Drop desired-state key agreements of devices whose desired state was never agreed on and
    still has a key in conflict that this run leaves as it is (for an operator, or blocked by the
    direction). The base stores the desired state as one object, so recording one agreed key would
    make the base "known" and the conflicting key, absent from it, would then look unchanged on the
    side that lacks it: the next run would settle the conflict by guessing.
    """
    if unwritten.empty or agree.empty:
        return agree
    unsettled = unwritten[
        (unwritten["B"] == NO_BASE).to_numpy() & unwritten["field"].str.startswith(DESIRED_PREFIX).to_numpy()
    ]
    if unsettled.empty:
        return agree
    pairs = pd.MultiIndex.from_frame(unsettled[["device_id", "golioth_device_id"]])
    held = agree["field"].str.startswith(DESIRED_PREFIX).to_numpy() & pd.MultiIndex.from_frame(
        agree[["device_id", "golioth_device_id"]]
    ).isin(pairs)
    return agree[~held]


def observed_rows(sides: Sides, present: PresentPairs, settings: SyncSettings) -> PhaseRows:
    """Observed fields Golioth knows newer or different values of: one row per device."""
    if FieldGroup.observed not in settings.field_groups or present.pairs.empty:
        return PhaseRows()
    obs = observed_changes(
        _observed_values(sides.local, present.lpos),
        _observed_values(sides.remote, present.rpos),
        len(present.lpos),
    )
    if not obs.any():
        return PhaseRows()
    new = np.full(len(obs), None, dtype=object)
    new[obs] = _observed_json(sides.remote, present.rpos[obs])
    rows = _rows(
        present.pairs,
        obs,
        field="observed",
        action=Action.observe,
        side=Side.local,
        kind=Reason.observed_in_golioth,
        new=new,
    )
    return PhaseRows([rows])


def _observed_values(frame: pd.DataFrame, positions: Positions) -> dict[str, Any]:
    """The observed columns a side has, at the given rows, as arrays (timestamps as naive UTC):
    one array per column instead of a sub-frame, whose construction costs more than the compare."""
    return {
        c: utc_naive(frame[c])[positions] if c in TIMESTAMPS else _objects(frame[c])[positions]
        for c in (*TIMESTAMPS, *VALUES)  # what observed_changes compares (status follows last_seen)
        if c in frame
    }


def deletions(
    sides: Sides,
    pairing: Pairing,
    fields: tuple[str, ...],
    settings: SyncSettings,
    resolutions: pd.DataFrame | None,
) -> PhaseRows:
    """Pairs with a side gone: unlink (gone on both, or deletes off), propagate the delete, or a
    delete-vs-modify conflict when the survivor changed since the base (or as an operator chose)."""
    gone_both = ~pairing.pairs["l_present"].to_numpy() & ~pairing.pairs["r_present"].to_numpy()
    changes = []
    if gone_both.any():
        changes.append(
            _rows(
                pairing.pairs,
                gone_both,
                field="*",
                action=Action.unlink,
                side=Side.none,
                kind=Reason.gone_on_both_sides,
            )
        )
    choices = _delete_choices(resolutions)
    local_gone = _one_side_deleted(Side.local, sides, pairing, fields, settings, choices)
    remote_gone = _one_side_deleted(Side.remote, sides, pairing, fields, settings, choices)
    return PhaseRows(
        [*changes, *local_gone.changes, *remote_gone.changes], [*local_gone.conflicts, *remote_gone.conflicts]
    )


# (device_id, golioth_device_id) → (the side an operator chose, conflict_id, resolved_by)
DeleteChoices = dict[tuple[Any, Any], tuple[str, Any, Any]]


def _delete_choices(resolutions: pd.DataFrame | None) -> DeleteChoices:
    if resolutions is None or resolutions.empty:
        return {}
    dvm = resolutions[resolutions["conflict_type"] == ConflictType.delete_vs_modify]
    return {
        (d, g): (r, cid, by)
        for d, g, r, cid, by in zip(
            dvm["device_id"], dvm["golioth_device_id"], dvm["resolution"], dvm["conflict_id"], dvm["resolved_by"]
        )
    }


def _one_side_deleted(
    deleted_side: Side,
    sides: Sides,
    pairing: Pairing,
    fields: tuple[str, ...],
    settings: SyncSettings,
    choices: DeleteChoices,
) -> PhaseRows:
    l_present, r_present = pairing.pairs["l_present"].to_numpy(), pairing.pairs["r_present"].to_numpy()
    survivor = Side.remote if deleted_side == Side.local else Side.local
    mask = (~l_present & r_present) if deleted_side == Side.local else (l_present & ~r_present)
    if not mask.any():
        return PhaseRows()
    sub = pairing.pairs[mask].reset_index(drop=True)
    survivor_rows = (
        sides.remote.iloc[pairing.rpos[mask]] if survivor == Side.remote else sides.local.iloc[pairing.lpos[mask]]
    )
    modified = _device_changed(survivor_rows, snapshot_dicts(pairing.snapshots[mask]), fields)
    choice = [choices.get((d, g)) for d, g in zip(sub["device_id"], sub["golioth_device_id"])]
    chosen = np.array([c is not None for c in choice], dtype=bool)
    chose_deleted = np.array([c is not None and c[0] == deleted_side for c in choice], dtype=bool)
    conflict_ids = np.array([c[1] if c else None for c in choice], dtype=object)
    changed_by = np.array([c[2] if c else None for c in choice], dtype=object)
    # An operator chose: the deleted side's choice deletes the survivor; the survivor's recreates it.
    delete = np.where(chosen, chose_deleted, ~modified & settings.allow_deletes)
    recreate = chosen & ~chose_deleted
    unlink = ~chosen & ~modified & (not settings.allow_deletes)
    conflict = ~chosen & modified
    deleted_kind = Reason.deleted_locally if deleted_side == Side.local else Reason.deleted_in_golioth
    kind = np.array([Reason.resolved_by_operator if c else deleted_kind for c in choice], dtype=object)
    detail = np.array([(c[2] or "operator") if c else None for c in choice], dtype=object)
    by = (conflict_ids, changed_by)
    delete_rows = _rows(
        sub, delete, field="*", action=Action.delete, side=survivor, kind=kind, detail=detail, operator=by
    )
    recreate_rows = _rows(
        sub, recreate, field="*", action=Action.create, side=deleted_side, kind=kind, detail=detail, operator=by
    )
    unlink_rows = _rows(
        sub,
        unlink,
        field="*",
        action=Action.unlink,
        side=Side.none,
        kind=Reason.deletes_off,
        detail=reason_text(deleted_kind),
    )
    conflicts = [_delete_vs_modify(sub[conflict], survivor_rows[conflict], survivor, fields)] if conflict.any() else []
    return PhaseRows([delete_rows, recreate_rows, unlink_rows], conflicts)


def _delete_vs_modify(
    keys: pd.DataFrame, survivor_rows: pd.DataFrame, survivor: Side, fields: tuple[str, ...]
) -> pd.DataFrame:
    """Conflicts of devices deleted on one side and changed on the other: the survivor's state as
    JSON text (not canonical strings), {"deleted": true} for the side that deleted."""
    state = canonicalize(survivor_rows, fields)
    survivor_json = [dump_json({f: decode(f, v) for f, v in zip(fields, row)}) for row in state.itertuples(index=False)]
    deleted = dump_json({"deleted": True})
    return _conflict_frame(
        keys,
        field="*",
        conflict_type=ConflictType.delete_vs_modify,
        base=None,
        local=survivor_json if survivor == Side.local else deleted,
        remote=survivor_json if survivor == Side.remote else deleted,
    )


def _device_changed(survivor: pd.DataFrame, base: list[dict[str, Any]], fields: tuple[str, ...]) -> Bools:
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


def links_and_creates(sides: Sides, pairing: Pairing, settings: SyncSettings) -> PhaseRows:
    """New links by hardware id, creates on the side a device is missing from, identity conflicts.
    A local table that maps no hardware ids holds its new devices back from Golioth: a create that
    died before its link was recorded could never be found again, and the next run would create a
    duplicate (Reason.no_hardware_ids, blocked by `assemble`)."""
    new_locally = Reason.no_hardware_ids if "hardware_ids" in settings.unsynced_fields else Reason.new_locally
    matching = pairing.matching
    changes = []
    if not matching.new_links.empty:
        # A link to a device we created carries the base it starts from (stored with the link).
        ours = matching.new_links["device_id"].isin(list(pairing.created)).to_numpy()
        link_kind = np.array(
            [Reason.matched_unfinished_create if o else Reason.matched_by_hardware_id for o in ours], dtype=object
        )
        created_base = dump_json(CREATED_BASE)
        changes.append(
            matching.new_links.assign(
                field="*",
                action=Action.link,
                side=Side.none,
                new_value=np.array([created_base if o else None for o in ours], dtype=object),
                kind=link_kind,
                reason=_reasons(link_kind, None),
            )
        )
    for ids, side, kind in (
        (matching.remote_only, Side.local, Reason.new_in_golioth),
        (matching.local_only, Side.remote, new_locally),
    ):
        missing = ids.to_numpy()
        if not len(missing):
            continue
        changes.append(
            pd.DataFrame(
                {
                    "device_id": missing if side == Side.remote else None,
                    "golioth_device_id": missing if side == Side.local else None,
                    "field": "*",
                    "action": Action.create,
                    "side": side,
                    "kind": kind,
                    "reason": reason_text(kind),
                }
            )
        )
    ic = matching.identity_conflicts
    if ic.empty:
        return PhaseRows(changes)
    conflict = _conflict_frame(
        ic,
        field="identity",
        conflict_type=ConflictType.identity,
        base=None,
        local=_identity_values(sides.local, ic["device_id"], ic["candidates"]),
        remote=_identity_values(sides.remote, ic["golioth_device_id"], ic["candidates"]),
    )
    return PhaseRows(changes, [conflict])


def _identity_values(frame: pd.DataFrame, ids: pd.Series, candidates: pd.Series) -> list[str]:
    """JSON text (not canonical strings): which devices share hardware ids. A device of this side
    shows its hardware ids; where the conflict is the other side's device, its candidates here."""
    return [
        dump_json({"hardware_ids": decode("hardware_ids", _canonical_hw(frame, d))})
        if isinstance(d, str)
        else dump_json({"candidates": list(c)})
        for d, c in zip(ids, candidates)
    ]


def assemble(
    phases: Sequence[PhaseRows],
    sides: Sides,
    pairs: pd.DataFrame,
    settings: SyncSettings,
    open_conflicts: pd.DataFrame | None,
) -> Plan:
    """The phases' rows as one plan: writes the direction forbids are blocked, and pending conflicts
    this run no longer finds are superseded."""
    changes = _change_table([f for phase in phases for f in phase.changes if not f.empty])
    side, kind = changes["side"].to_numpy(dtype=object), changes["kind"].to_numpy(dtype=object)
    blocked = (side == Side.local) & (not settings.writes(Side.local))
    blocked |= (side == Side.remote) & (not settings.writes(Side.remote))
    changes["blocked"] = blocked | (kind == Reason.no_hardware_ids)
    conflict_frames = [c for phase in phases for c in phase.conflicts]
    conflicts = (
        pd.concat(conflict_frames, ignore_index=True)[CONFLICT_COLUMNS] if conflict_frames else _NO_CONFLICTS.copy()
    )
    return Plan(
        changes=changes,
        conflicts=conflicts,
        superseded=_superseded(open_conflicts, conflicts, sides.local.index, sides.remote.index),
        pairs=pairs,
    )


# -- helpers -------------------------------------------------------------------------------------------


def _objects(values: Any) -> Objects:
    """A column as an object array (ids, lists, dicts, text): no copy when it already is one."""
    return values.to_numpy(dtype=object) if hasattr(values, "to_numpy") else np.asarray(values, dtype=object)


# Up to this many ids, a dict finds positions faster than pandas builds its hash table for a new
# index (a fixed ~0.1 ms, most of a small organization's lookup); above it pandas is faster.
_DICT_LOOKUP = 2_000


def _locate(index: pd.Index, ids: Objects) -> Positions:
    """index.get_indexer(ids): each id's position in the index, -1 where absent. An index with
    duplicate or non-text ids goes to pandas, which refuses duplicates as it always did."""
    keys = index.to_numpy(dtype=object)
    if len(keys) <= _DICT_LOOKUP and all(type(k) is str for k in keys) and all(type(i) is str for i in ids):
        at = dict(zip(keys, range(len(keys))))
        if len(at) == len(keys):
            return np.fromiter(map(at.get, ids, repeat(-1)), dtype=np.intp, count=len(ids))
    positions: Positions = index.get_indexer(ids)
    return positions


def _id_index(ids: pd.Series) -> pd.Index:
    return pd.Index(_objects(ids), dtype=object)


def _marked(positions: Positions, size: int) -> Bools:
    """Bool array of `size` with True at the given positions (-1, "not found", is ignored)."""
    marked = np.zeros(size, dtype=bool)
    marked[positions[positions >= 0]] = True
    return marked


def _canonical_hw(frame: pd.DataFrame, device_id: str) -> str:
    return str(canonical_values("hardware_ids", _objects(frame.loc[[device_id], "hardware_ids"]))[0])


def _observed_json(remote: pd.DataFrame, positions: Positions) -> Objects:
    """The observed fields of Golioth's rows at `positions`, as JSON text (one object per row)."""
    present = [f for f in OBSERVED_FIELDS if f in remote]
    columns = [[_jsonable(v) for v in remote[f].iloc[positions].to_numpy(dtype=object)] for f in present]
    return np.array([dump_json(dict(zip(present, values))) for values in zip(*columns)], dtype=object)


def _jsonable(value: Any) -> Any:
    if value is None or value is pd.NaT or (isinstance(value, float) and value != value):
        return None  # missing (None, NaT, NaN)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _superseded(
    open_conflicts: pd.DataFrame | None, conflicts: pd.DataFrame, local_ids: pd.Index, remote_ids: pd.Index
) -> list[int]:
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
