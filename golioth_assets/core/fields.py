"""Which fields sync, grouped the way a service switches them on and off."""

from __future__ import annotations

from typing import Literal

from golioth_assets.core.vocabulary import FieldGroup

FieldKind = Literal["text", "list", "bool", "json"]

# Group → the local fields it covers. The Golioth side of each field is mapped in engine/remote_frame.py.
GROUP_FIELDS: dict[str, tuple[str, ...]] = {
    FieldGroup.identity: ("name", "hardware_ids"),
    FieldGroup.tags: ("tags",),
    FieldGroup.blueprint: ("blueprint",),
    FieldGroup.cohort: ("cohort",),
    FieldGroup.enabled: ("enabled",),
    # Merged key by key at the top level: each key is its own field, `desired_state.<key>`.
    FieldGroup.desired_state: ("desired_state",),
}
FIELD_GROUP: dict[str, str] = {f: g for g, fields in GROUP_FIELDS.items() for f in fields}
SYNCED_FIELDS: tuple[str, ...] = tuple(FIELD_GROUP)
SCALAR_FIELDS: tuple[str, ...] = tuple(f for f in SYNCED_FIELDS if f != "desired_state")

FIELD_KIND: dict[str, FieldKind] = {
    "name": "text",
    "hardware_ids": "list",
    "tags": "list",
    "blueprint": "text",
    "cohort": "text",
    "enabled": "bool",
    "desired_state": "json",
}

# Golioth owns these; they flow remote → local only and never conflict.
OBSERVED_FIELDS: tuple[str, ...] = (
    "status",
    "last_seen_online",
    "last_seen_offline",
    "last_report",
    "firmware_versions",
    "settings_status",
)

ALL_GROUPS: tuple[str, ...] = tuple(g.value for g in FieldGroup)
assert set(ALL_GROUPS) == {*GROUP_FIELDS, FieldGroup.observed}, "every synced group lists its fields"
DESIRED_PREFIX = "desired_state."


def group_of(field: str) -> str:
    """The group of a plan field; `desired_state.<key>` belongs to desired_state."""
    if field.startswith(DESIRED_PREFIX):
        return FieldGroup.desired_state
    return FIELD_GROUP.get(field, FieldGroup.observed if field == "observed" else "device")


def enabled_fields(groups: frozenset[str] | set[str] | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f for f in SYNCED_FIELDS if FIELD_GROUP[f] in groups)
