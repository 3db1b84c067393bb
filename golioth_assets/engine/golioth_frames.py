"""Golioth devices as a DataFrame in the local table's vocabulary: tags, blueprint and cohort by name,
observed fields pulled out of `metadata`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from golioth_assets.golioth import errors
from golioth_assets.golioth.client import GoliothClient
from golioth_assets.golioth.models import Device, DeviceRecord, device_record
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


# What each device row holds straight from the API, in REMOTE_COLUMNS order; tags, blueprint and
# cohort names are mapped from the ids afterwards, and timestamps and status are whole columns.
_PARSED_COLUMNS = [c for c in REMOTE_COLUMNS if c not in ("tags", "blueprint", "cohort", "status", *TIMESTAMP_COLUMNS)]


def devices_to_frame(devices: list[Device], refs: References) -> pd.DataFrame:
    """Parsed devices (single GETs, write answers) as rows: the listing's path, one code for both."""
    return records_to_frame([device_record(d) for d in devices], refs)


def records_to_frame(records: list[DeviceRecord], refs: References, *, consume: bool = False) -> pd.DataFrame:
    """One row per device of a listing. Per device only the fields are picked out; timestamps,
    status and the id → name mappings are computed per column. `consume`: empty `records` on the
    way, so that each record is freed once its row is built (at 100k devices the records would
    otherwise all stay alive beside the rows and the frame, at the fetch's memory peak)."""
    rows, stamps = [], []
    for r in _drained(records) if consume else records:
        meta = r.get("metadata") or {}
        update = meta.get("update")
        update = update if isinstance(update, dict) else {}
        settings = meta.get("lastSettingsStatus")
        data = r.get("data")
        rows.append(
            (
                r["id"],
                r.get("name") or "",
                list(r.get("hardwareIds") or ()),
                list(r.get("tagIds") or ()),
                r.get("blueprintId") or None,  # "" is "not assigned" (proto3 has no null string)
                r.get("cohortId") or None,
                bool(r.get("enabled", False)),  # left out when false
                data if isinstance(data, dict) else {},
                {pkg: info.get("version") for pkg, info in update.items() if isinstance(info, dict)},
                settings.get("status") if isinstance(settings, dict) else None,
                # The firmware part of `metadata` only: the rest changes on every report.
                {"update": update} if update else {},
            )
        )
        stamps.append(
            (
                meta.get("lastSeenOnline"),
                meta.get("lastSeenOffline"),
                meta.get("lastReport"),
                r.get("createdAt"),
                r.get("updatedAt"),
            )
        )
    frame = pd.DataFrame(rows, columns=_PARSED_COLUMNS)
    frame["tags"] = _names(frame["tag_ids"], refs.tags)
    frame["blueprint"] = frame["blueprint_id"].map(lambda i: refs.blueprints.get(i, i) if i else None)
    frame["cohort"] = frame["cohort_id"].map(lambda i: refs.cohorts.get(i, i) if i else None)
    columns = zip(*stamps) if stamps else [()] * len(TIMESTAMP_COLUMNS)
    for column, texts in zip(TIMESTAMP_COLUMNS, columns):
        frame[column] = _timestamps(column, texts)
    frame["status"] = _status(frame["last_seen_online"], frame["last_seen_offline"])
    return frame[REMOTE_COLUMNS]


def _drained(items: list[DeviceRecord]) -> Iterator[DeviceRecord]:
    """The items in order, each taken out of the list as it is handed over."""
    items.reverse()
    while items:
        yield items.pop()


# Golioth's timestamps are RFC 3339 (`2025-01-01T00:00:00.123Z`). pandas' ISO 8601 parser would
# also take words such as "now", so a column's texts are checked first: joined, by one regular
# expression (one C call, where a check per value costs more than the parse).
_RFC3339 = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})"
_ONE = re.compile(_RFC3339, re.IGNORECASE)
_ALL = re.compile(rf"{_RFC3339}(?:\n{_RFC3339})*", re.IGNORECASE)
_EARLIEST, _LATEST = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")


def _timestamps(column: str, texts: tuple) -> pd.Series:
    """RFC 3339 texts → UTC timestamps in nanoseconds, truncated to the microsecond: the type and
    precision golioth_inventory reads back as (PostgreSQL keeps microseconds). A time nanoseconds
    cannot hold (Go's zero time, year 1, stands for "never") reads as missing."""
    given = [t for t in texts if t is not None]
    joined = "\n".join(given)
    if given and not _ALL.fullmatch(joined):
        bad = next(t for t in given if not _ONE.fullmatch(t))
        raise errors.InvalidResponseError(f"unreadable {column} timestamp in Golioth's device list: {bad!r}")
    values = pd.Series(texts, dtype=object)
    if re.search("[tz]", joined):  # RFC 3339 allows a lower-case t and z; pandas does not
        values = values.str.upper()
    if re.search(r"\.\d{7}", joined):  # beyond microseconds: cut as text, so that year 1 to 9999 parse
        values = values.str.replace(r"(\.\d{6})\d+", r"\1", regex=True)
    try:
        stamps = pd.to_datetime(values, format="ISO8601", utc=True).astype("datetime64[us, UTC]")
    except (ValueError, OverflowError) as exc:  # a date that does not exist (2025-02-30)
        reason = str(exc).splitlines()[0].split(". You might")[0]  # without pandas' advice
        raise errors.InvalidResponseError(f"unreadable {column} timestamp in Golioth's device list: {reason}") from None
    return stamps.where((stamps >= _EARLIEST) & (stamps <= _LATEST)).astype("datetime64[ns, UTC]")


def _status(online: pd.Series, offline: pd.Series) -> pd.Series:
    """online when last seen online after last seen offline (or never offline); None if neither."""
    status = np.where(offline.isna() | (online > offline), "online", "offline").astype(object)
    status[(online.isna() & offline.isna()).to_numpy()] = None
    return pd.Series(status.tolist(), index=online.index)  # the text type pandas infers on reading back


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
