"""Golioth devices as a DataFrame in the local table's vocabulary: tags, blueprint and cohort by name,
observed fields pulled out of `metadata`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from golioth_assets.golioth.client import GoliothClient
from golioth_assets.golioth.models import Device
from golioth_assets.store.inventory import REMOTE_COLUMNS, TIMESTAMP_COLUMNS
from golioth_assets.store.services import Service


@dataclass
class References:
    """Golioth's tags, blueprints and cohorts: id → name."""

    tags: dict[str, str] = field(default_factory=dict)
    blueprints: dict[str, str] = field(default_factory=dict)
    cohorts: dict[str, str] = field(default_factory=dict)

    def ids_by_name(self, kind: str) -> dict[str, str]:
        return {name: id_ for id_, name in getattr(self, kind).items()}

    def to_frame(self) -> pd.DataFrame:
        rows = [
            (kind.rstrip("s"), id_, name)
            for kind in ("tags", "blueprints", "cohorts")
            for id_, name in getattr(self, kind).items()
        ]
        return pd.DataFrame(rows, columns=["kind", "golioth_id", "name"])

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> References:
        refs = cls()
        for kind, golioth_id, name in frame[["kind", "golioth_id", "name"]].itertuples(index=False):
            getattr(refs, f"{kind}s")[golioth_id] = name
        return refs


def fetch_references(client: GoliothClient, service: Service) -> References:
    groups = set(service.field_groups)
    refs = References()
    if "tags" in groups:
        refs.tags = client.tag_maps().by_id
    if "blueprint" in groups:
        refs.blueprints = client.blueprint_maps().by_id
    # Cohorts are listed under the Golioth organization; without its id the cohort stays an id.
    if "cohort" in groups and service.golioth_organization_id:
        refs.cohorts = client.cohort_maps().by_id
    return refs


def _status(online, offline) -> str | None:
    if online is None and offline is None:
        return None
    if offline is None or (online is not None and online > offline):
        return "online"
    return "offline"


# What each device row holds straight from the API, in REMOTE_COLUMNS order; tags, blueprint and
# cohort names are mapped from the ids afterwards, and timestamps go into columns of their own.
_PARSED_COLUMNS = [c for c in REMOTE_COLUMNS if c not in ("tags", "blueprint", "cohort", *TIMESTAMP_COLUMNS)]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_NAT = np.iinfo(np.int64).min  # NaT, as datetime64 reads it


def _micros(value: datetime | None) -> int:
    """A timestamp as integer microseconds since 1970 (a naive one taken as UTC), exactly: pandas
    then converts a whole column at once, where datetime objects are converted one by one."""
    if value is None:
        return _NAT
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICROSECOND


def _timestamps(micros: list[int]) -> pd.Series:
    """µs since 1970 → timestamps in UTC, in nanoseconds: the type golioth_inventory reads back as."""
    values = np.asarray(micros, dtype="int64").view("datetime64[us]").astype("datetime64[ns]")
    return pd.Series(values).dt.tz_localize("UTC")


def devices_to_frame(devices: list[Device], refs: References) -> pd.DataFrame:
    """One row per device (parsing is per device anyway); id → name mapping is vectorized."""
    rows, stamps = [], []
    for d in devices:
        meta = d.metadata
        rows.append(
            (
                d.id,
                d.name,
                list(d.hardware_ids),
                list(d.tag_ids),
                d.blueprint_id,
                d.cohort_id,
                d.enabled,
                d.data if isinstance(d.data, dict) else {},
                _status(meta.last_seen_online, meta.last_seen_offline),
                {pkg: info.get("version") for pkg, info in meta.update.items() if isinstance(info, dict)},
                meta.last_settings_status.status if meta.last_settings_status else None,
                # The firmware part of `metadata` only: dumping the whole model per device is slow.
                {"update": meta.update} if meta.update else {},
            )
        )
        times = (meta.last_seen_online, meta.last_seen_offline, meta.last_report, d.created_at, d.updated_at)
        stamps.append([_micros(t) for t in times])
    frame = pd.DataFrame(rows, columns=_PARSED_COLUMNS)
    frame["tags"] = _names(frame["tag_ids"], refs.tags)
    frame["blueprint"] = frame["blueprint_id"].map(lambda i: refs.blueprints.get(i, i) if i else None)
    frame["cohort"] = frame["cohort_id"].map(lambda i: refs.cohorts.get(i, i) if i else None)
    for column, micros in zip(TIMESTAMP_COLUMNS, zip(*stamps) if stamps else [[]] * len(TIMESTAMP_COLUMNS)):
        frame[column] = _timestamps(list(micros))
    return frame[REMOTE_COLUMNS]


def _names(id_lists: pd.Series, names: dict[str, str]) -> pd.Series:
    """Lists of tag ids → lists of tag names (an unknown id stands for itself)."""

    # A comprehension: explode + groupby took a second at 100k devices, for lists of 0-3 ids.
    def name_of(tag_id: str) -> str:
        name = names.get(tag_id)
        return tag_id if name is None or name != name else name  # NaN too

    return pd.Series(
        [[name_of(i) for i in ids if i is not None and i == i] if isinstance(ids, list) else [] for ids in id_lists],
        index=id_lists.index,
        dtype=object,
    )
