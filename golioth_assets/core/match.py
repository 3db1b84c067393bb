"""Pair local devices with Golioth devices.

First by the stored link (assignment), else by a shared hardware id. A match that is ambiguous (one
device shares hardware ids with two on the other side, or with one that is already linked elsewhere)
is never guessed: it becomes an `identity` conflict and neither device is created or linked.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from golioth_assets.core.normalize import LIST_SEP


@dataclass(frozen=True)
class Matching:
    links: pd.DataFrame
    """Stored links that sync: device_id, golioth_device_id, link_status."""
    new_links: pd.DataFrame
    """Unambiguous new matches by hardware id: device_id, golioth_device_id."""
    identity_conflicts: pd.DataFrame
    """device_id or golioth_device_id (the other NaN), candidates (list of ids on the other side)."""
    local_only: pd.Index
    """Live local devices with no link and no match: candidates for creation in Golioth."""
    remote_only: pd.Index
    """Golioth devices with no link and no match: candidates for creation locally."""


def _explode_ids(canonical_hw: pd.Series, id_name: str) -> pd.DataFrame:
    """(id, hardware_id) rows from canonical hardware-id lists."""
    split = canonical_hw[canonical_hw != ""].str.split(LIST_SEP).explode()
    return pd.DataFrame({id_name: split.index.to_numpy(), "hw": split.to_numpy()})


def match_devices(local_hw: pd.Series, local_live: pd.Series, remote_hw: pd.Series, links: pd.DataFrame) -> Matching:
    """
    local_hw / remote_hw: canonical hardware ids, indexed by device_id / golioth_device_id.
    local_live: bool by device_id (False for soft-deleted devices).
    links: device_id, golioth_device_id, link_status ("linked" or "unlinked").
    """
    all_linked_local = pd.Index(links["device_id"])
    all_linked_remote = pd.Index(links["golioth_device_id"])
    # Unlinked tombstones still "know" their devices, so those are never re-created or re-matched.
    live_links = links[links["link_status"] != "unlinked"]

    unlinked_local = local_hw.index[local_live.reindex(local_hw.index, fill_value=False).to_numpy()]
    unlinked_local = unlinked_local.difference(all_linked_local)
    unlinked_remote = remote_hw.index.difference(all_linked_remote)

    # Candidates: an unlinked device on one side sharing a hardware id with any live device on the other.
    live_local_hw = local_hw[local_live.reindex(local_hw.index, fill_value=False).to_numpy()]
    local_pairs = _explode_ids(live_local_hw, "device_id")
    remote_pairs = _explode_ids(remote_hw, "golioth_device_id")
    candidates = local_pairs.merge(remote_pairs, on="hw")[["device_id", "golioth_device_id"]].drop_duplicates()
    involves_unlinked = candidates["device_id"].isin(unlinked_local) | candidates["golioth_device_id"].isin(
        unlinked_remote
    )
    candidates = candidates[involves_unlinked]

    # A candidate pair is clean when both devices are unlinked and each has exactly one candidate.
    per_local = candidates.groupby("device_id")["golioth_device_id"].transform("nunique")
    per_remote = candidates.groupby("golioth_device_id")["device_id"].transform("nunique")
    both_unlinked = candidates["device_id"].isin(unlinked_local) & candidates["golioth_device_id"].isin(
        unlinked_remote
    )
    clean = both_unlinked & (per_local == 1) & (per_remote == 1)
    new_links = candidates[clean].reset_index(drop=True)
    ambiguous = candidates[~clean]

    # One conflict per device that is itself ambiguous (several candidates, or a candidate that is
    # linked elsewhere); a device with one unlinked candidate is covered by that candidate's conflict.
    local_is_ambiguous = (per_local[~clean] > 1) | ~ambiguous["golioth_device_id"].isin(unlinked_remote)
    remote_is_ambiguous = (per_remote[~clean] > 1) | ~ambiguous["device_id"].isin(unlinked_local)
    local_keys = ambiguous.loc[local_is_ambiguous & ambiguous["device_id"].isin(unlinked_local), "device_id"]
    remote_keys = ambiguous.loc[
        remote_is_ambiguous & ambiguous["golioth_device_id"].isin(unlinked_remote), "golioth_device_id"
    ]
    local_side = (
        ambiguous[ambiguous["device_id"].isin(local_keys)]
        .groupby("device_id")["golioth_device_id"]
        .agg(lambda ids: sorted(ids))
        .rename("candidates")
        .reset_index()
    )
    remote_side = (
        ambiguous[ambiguous["golioth_device_id"].isin(remote_keys)]
        .groupby("golioth_device_id")["device_id"]
        .agg(lambda ids: sorted(ids))
        .rename("candidates")
        .reset_index()
    )
    identity_conflicts = pd.concat([local_side, remote_side], ignore_index=True)
    for column in ("device_id", "golioth_device_id"):
        if column not in identity_conflicts:
            identity_conflicts[column] = pd.Series(dtype=object)
    identity_conflicts = identity_conflicts[["device_id", "golioth_device_id", "candidates"]]

    involved_local = pd.Index(candidates["device_id"].unique())
    involved_remote = pd.Index(candidates["golioth_device_id"].unique())
    return Matching(
        links=live_links[["device_id", "golioth_device_id", "link_status"]].reset_index(drop=True),
        new_links=new_links,
        identity_conflicts=identity_conflicts,
        local_only=unlinked_local.difference(involved_local),
        remote_only=unlinked_remote.difference(involved_remote),
    )
