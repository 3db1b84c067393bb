"""Pair local devices with Golioth devices.

First by the stored link (assignment), else by a shared hardware id. A match that is ambiguous (one
device shares hardware ids with two on the other side, or with one that is already linked elsewhere)
is never guessed: it becomes an `identity` conflict and neither device is created or linked.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd


@dataclass(frozen=True)
class Matching:
    stored_links: pd.DataFrame
    """Every stored link, as given (`links` filters them when asked: the planner never does)."""
    new_links: pd.DataFrame
    """Unambiguous new matches by hardware id: device_id, golioth_device_id."""
    identity_conflicts: pd.DataFrame
    """device_id or golioth_device_id (the other NaN), candidates (list of ids on the other side)."""
    local_only: pd.Index
    """Live local devices with no link and no match: candidates for creation in Golioth."""
    remote_only: pd.Index
    """Golioth devices with no link and no match: candidates for creation locally."""

    @cached_property
    def links(self) -> pd.DataFrame:
        """Stored links that sync: device_id, golioth_device_id, link_status."""
        links = self.stored_links
        live = links[links["link_status"] != "unlinked"]
        return live[["device_id", "golioth_device_id", "link_status"]].reset_index(drop=True)


def _trimmed(value: Any) -> str:
    if type(value) is str:
        return value.strip()
    return "" if value is None or value != value else str(value).strip()  # None, NaN: no id


def _hardware_pairs(hardware_ids: pd.Series, id_name: str, wanted: set[str] | None = None) -> pd.DataFrame:
    """(id, hardware_id) rows from hardware-id lists, trimmed and non-empty (as canonical_list
    normalizes them); only ids in `wanted` when given: the other side's full list is searched for
    a few ids only. One pass over the exploded items, in C where pandas has it (explode)."""
    items = hardware_ids.explode()
    trimmed = np.array(
        [v.strip() if type(v) is str else _trimmed(v) for v in items.to_numpy(dtype=object)], dtype=object
    )
    if wanted is None:
        keep = trimmed != ""
    else:
        keep = np.fromiter(map(wanted.__contains__, trimmed), dtype=bool, count=len(trimmed))
    return pd.DataFrame(
        {
            id_name: pd.Series(items.index.to_numpy(dtype=object)[keep], dtype=object),
            "hw": pd.Series(trimmed[keep], dtype=object),
        }
    ).drop_duplicates()


def match_devices(
    local_hw: pd.Series,
    local_live: pd.Series | npt.NDArray[np.bool_],
    remote_hw: pd.Series,
    links: pd.DataFrame,
    *,
    local_linked: npt.NDArray[np.bool_] | None = None,
    remote_linked: npt.NDArray[np.bool_] | None = None,
) -> Matching:
    """
    local_hw / remote_hw: hardware-id lists (trimmed here), indexed by device_id / golioth_device_id.
    local_live: bool, aligned with local_hw (False for soft-deleted devices).
    links: device_id, golioth_device_id, link_status ("linked" or "unlinked").
    local_linked / remote_linked: optional bool arrays aligned with local_hw / remote_hw: whether a
        link (of any status) names the device. The planner passes them, having located every link.
    """
    # Unlinked tombstones still "know" their devices, so those are never re-created or re-matched.
    unlinked = _unlinked(local_hw, local_live, remote_hw, links, local_linked, remote_linked)
    if not (unlinked.local_mask.any() or unlinked.remote_mask.any()):
        # Every device has a link (a steady round): nothing to match, so skip the empty merges.
        new_links, identity_conflicts = _no_candidates()
        return Matching(links, new_links, identity_conflicts, unlinked.local, unlinked.remote)
    candidates = _candidates(local_hw, remote_hw, unlinked)
    new_links, identity_conflicts = _classify(candidates, unlinked)
    return Matching(
        stored_links=links,
        new_links=new_links,
        identity_conflicts=identity_conflicts,
        local_only=_without(unlinked.local, candidates["device_id"]),
        remote_only=_without(unlinked.remote, candidates["golioth_device_id"]),
    )


def _without(ids: pd.Index, involved: pd.Series) -> pd.Index:
    """ids less the involved ones (sorted then, as Index.difference leaves them; as they are if none)."""
    return ids.difference(pd.Index(involved.unique())) if len(involved) else ids


@dataclass(frozen=True)
class Unlinked:
    """The devices no link names (live ones only, on the local side): the ones matching may pair."""

    live: npt.NDArray[np.bool_]  # local devices not soft-deleted, aligned with local_hw
    local_mask: npt.NDArray[np.bool_]  # aligned with local_hw
    remote_mask: npt.NDArray[np.bool_]  # aligned with remote_hw
    local: pd.Index  # their device ids
    remote: pd.Index  # their golioth device ids


def _unlinked(
    local_hw: pd.Series,
    local_live: pd.Series | npt.NDArray[np.bool_],
    remote_hw: pd.Series,
    links: pd.DataFrame,
    local_linked: npt.NDArray[np.bool_] | None,
    remote_linked: npt.NDArray[np.bool_] | None,
) -> Unlinked:
    if local_linked is None:
        local_linked = local_hw.index.isin(links["device_id"])
    if remote_linked is None:
        remote_linked = remote_hw.index.isin(links["golioth_device_id"])
    if isinstance(local_live, pd.Series) and not local_live.index.equals(local_hw.index):
        local_live = local_live.reindex(local_hw.index, fill_value=False)
    live = np.asarray(local_live, dtype=bool)
    local_mask = live & ~np.asarray(local_linked, dtype=bool)
    remote_mask = ~np.asarray(remote_linked, dtype=bool)
    return Unlinked(live, local_mask, remote_mask, local_hw.index[local_mask], remote_hw.index[remote_mask])


def _candidates(local_hw: pd.Series, remote_hw: pd.Series, unlinked: Unlinked) -> pd.DataFrame:
    """device_id, golioth_device_id: an unlinked device on one side sharing a hardware id with any
    live device on the other. Only the unlinked devices' ids (few) are looked for in the other
    side's full lists."""
    local_unlinked_pairs = _hardware_pairs(local_hw[unlinked.local_mask], "device_id")
    remote_unlinked_pairs = _hardware_pairs(remote_hw[unlinked.remote_mask], "golioth_device_id")
    wanted = set(local_unlinked_pairs["hw"]) | set(remote_unlinked_pairs["hw"])
    if wanted:
        local_pairs = _hardware_pairs(local_hw[unlinked.live], "device_id", wanted)
        remote_pairs = _hardware_pairs(remote_hw, "golioth_device_id", wanted)
    else:
        local_pairs, remote_pairs = local_unlinked_pairs, remote_unlinked_pairs
    candidates = local_pairs.merge(remote_pairs, on="hw")[["device_id", "golioth_device_id"]].drop_duplicates()
    involves_unlinked = candidates["device_id"].isin(unlinked.local) | candidates["golioth_device_id"].isin(
        unlinked.remote
    )
    return candidates[involves_unlinked]


def _classify(candidates: pd.DataFrame, unlinked: Unlinked) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Candidate pairs → (new links, identity conflicts). A pair is clean when both devices are
    unlinked and each has exactly one candidate; every other candidate is ambiguous."""
    if candidates.empty:
        return _no_candidates()
    per_local = candidates.groupby("device_id")["golioth_device_id"].transform("nunique")
    per_remote = candidates.groupby("golioth_device_id")["device_id"].transform("nunique")
    local_unlinked = candidates["device_id"].isin(unlinked.local)
    remote_unlinked = candidates["golioth_device_id"].isin(unlinked.remote)
    clean = local_unlinked & remote_unlinked & (per_local == 1) & (per_remote == 1)
    ambiguous = ~clean
    # One conflict per device that is itself ambiguous (several candidates, or a candidate that is
    # linked elsewhere); a device with one unlinked candidate is covered by that candidate's conflict.
    local_keys = candidates.loc[ambiguous & ((per_local > 1) | ~remote_unlinked) & local_unlinked, "device_id"]
    remote_keys = candidates.loc[
        ambiguous & ((per_remote > 1) | ~local_unlinked) & remote_unlinked, "golioth_device_id"
    ]
    conflicts = pd.concat(
        [
            _candidate_lists(candidates[ambiguous], "device_id", "golioth_device_id", local_keys),
            _candidate_lists(candidates[ambiguous], "golioth_device_id", "device_id", remote_keys),
        ],
        ignore_index=True,
    )
    for column in ("device_id", "golioth_device_id"):
        if column not in conflicts:
            conflicts[column] = pd.Series(dtype=object)
    return candidates[clean].reset_index(drop=True), conflicts[IDENTITY_CONFLICT_COLUMNS]


IDENTITY_CONFLICT_COLUMNS = ["device_id", "golioth_device_id", "candidates"]


_NO_NEW_LINKS = pd.DataFrame(columns=["device_id", "golioth_device_id"], dtype=object)
_NO_IDENTITY_CONFLICTS = pd.DataFrame(columns=IDENTITY_CONFLICT_COLUMNS, dtype=object)


def _no_candidates() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(new links, identity conflicts) when no device pairs by hardware id: both empty (copies of
    frames built once: building even an empty frame costs a planner more than copying one)."""
    return _NO_NEW_LINKS.copy(), _NO_IDENTITY_CONFLICTS.copy()


def _candidate_lists(ambiguous: pd.DataFrame, key: str, other: str, keys: pd.Series) -> pd.DataFrame:
    """key, candidates: for each device in `keys`, the sorted ids of its candidates on the other side."""
    return (
        ambiguous[ambiguous[key].isin(keys)]
        .groupby(key)[other]
        .agg(lambda ids: sorted(ids))
        .rename("candidates")
        .reset_index()
    )
