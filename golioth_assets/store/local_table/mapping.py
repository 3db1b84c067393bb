"""A mapping: how one organization's devices sit in a product's own PostgreSQL table.

Written once by the product team as YAML (docs/local-tables.md is the reference), validated here,
stored with the service (`device_services.local_table`). The built-in `devices` table is one more
mapping (`builtin_mapping`), so every read and write of the local side goes through one path.

A mapping only *names* things: columns, a JSON path, constants, value maps. Types, constraints and
keys are read from the live table (`introspect.py`) and checked against the mapping by
`golioth-sync local check`. Nothing here touches a database.

    connection_env: ACME_DATABASE_URL        # the *name* of a variable holding a PostgreSQL URL
    table: app.devices                       # schema.table (schema defaults to public)
    key: id                                  # its primary key: uuid, bigint, text, …
    tenant: {column: organization_id, lookup: {table: app.organizations, key: id, where: {slug: acme}}}
    link: golioth_id                         # optional: a column holding the Golioth device id
    fields:
      name: display_name
      hardware_ids: serial_number            # text → a one-element list; text[] or jsonb → the list
      tags: metadata -> 'tags'               # a path inside a jsonb column
      enabled: {column: lifecycle, values: {true: active, false: [suspended, retired]}}
      desired_state: {column: config}
    observed:
      status: {column: connectivity, values: {online: ONLINE, offline: OFFLINE}}
      last_seen_online: last_seen_at
      firmware_version: {column: firmware, package: main}
    insert_defaults: {device_type: sensor}   # NOT NULL columns Golioth has no counterpart for
    soft_delete: deleted_at                  # optional; without it no deletes either way
    updated_at: updated_at                   # optional; their own change time (newest_wins)
    observed_at: observed_at                 # optional; stamped now() whenever observed fields are written
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Golioth-side names a mapping may map. Synced fields are core/fields.py's; observed ones are what
# Golioth reports (firmware_version is one package's version as text, firmware_versions the map).
SYNCED = ("name", "hardware_ids", "tags", "blueprint", "cohort", "enabled", "desired_state")
OBSERVED = (
    "status",
    "last_seen_online",
    "last_seen_offline",
    "last_report",
    "firmware_versions",
    "firmware_version",
    "settings_status",
    "reported_state",
)

_IDENT = r"[A-Za-z_][A-Za-z0-9_$]*"
_IDENTIFIER = re.compile(rf"^{_IDENT}$")
_QUALIFIED = re.compile(rf"^(?:({_IDENT})\.)?({_IDENT})$")
_ARROW_PATH = re.compile(rf"^\s*({_IDENT})\s*((?:->>?\s*'?[^'\-]+'?\s*)+)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _identifier(value: str, what: str) -> str:
    if not _IDENTIFIER.match(value):
        raise ValueError(f"{what} must be a plain column name (letters, digits, _), got {value!r}")
    return value


class TableName(BaseModel):
    """`schema.table`, or `table` in `public`."""

    model_config = ConfigDict(frozen=True)

    schema_name: str = "public"
    name: str

    @classmethod
    def parse(cls, text: str) -> TableName:
        match = _QUALIFIED.match(text.strip())
        if not match:
            raise ValueError(f"a table is `schema.table` or `table` (plain identifiers), got {text!r}")
        return cls(schema_name=match.group(1) or "public", name=match.group(2))

    def __str__(self) -> str:
        return f"{self.schema_name}.{self.name}"


class ValueMap(BaseModel):
    """Golioth value → the column's value(s). The first listed is written; every one listed is read
    back as that Golioth value. A column value that no entry lists reads as missing (NULL)."""

    model_config = ConfigDict(frozen=True)

    entries: dict[str, tuple[str, ...]]

    @classmethod
    def parse(cls, raw: dict[Any, Any]) -> ValueMap:
        entries: dict[str, tuple[str, ...]] = {}
        for golioth, local in raw.items():
            key = _golioth_key(golioth)
            values = tuple(str(v) for v in (local if isinstance(local, list) else [local]))
            if not values:
                raise ValueError(f"value map: {key!r} maps to no value")
            entries[key] = values
        seen: dict[str, str] = {}
        for key, values in entries.items():
            for v in values:
                if v in seen:
                    raise ValueError(f"value map: {v!r} is listed for both {seen[v]!r} and {key!r}")
                seen[v] = key
        return cls(entries=entries)

    def written(self, golioth_value: str) -> str | None:
        values = self.entries.get(golioth_value)
        return values[0] if values else None

    def read_back(self) -> dict[str, str]:
        """Column value → Golioth value, for every listed column value."""
        return {v: g for g, values in self.entries.items() for v in values}


def _golioth_key(value: Any) -> str:
    """YAML reads `true:` as a bool key; Golioth values in a map are compared as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class FieldMapping(BaseModel):
    """Where one Golioth field lives: a column, or a path inside a jsonb column; optionally with a
    value map (for text or enum columns) or, for firmware_version, the firmware package."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    column: str
    path: tuple[str, ...] = ()
    values: ValueMap | None = None
    package: str | None = None

    @field_validator("column")
    @classmethod
    def _column(cls, value: str) -> str:
        return _identifier(value, "column")

    @field_validator("values", mode="before")
    @classmethod
    def _values(cls, value: Any) -> Any:
        return ValueMap.parse(value) if isinstance(value, dict) and "entries" not in value else value

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @classmethod
    def parse(cls, raw: Any) -> FieldMapping:
        """`column`, `column -> 'key' -> 'key'`, or `{column, path, values, package}`."""
        if isinstance(raw, FieldMapping):
            return raw
        if isinstance(raw, str):
            arrow = _ARROW_PATH.match(raw)
            if arrow:
                keys = [k.strip().strip("'") for k in re.split(r"->>?", arrow.group(2)) if k.strip()]
                return cls(column=arrow.group(1), path=tuple(keys))
            return cls(column=raw.strip())
        if isinstance(raw, dict):
            return cls.model_validate(raw)
        raise ValueError(f"a field maps to a column name or {{column: …}}, got {raw!r}")

    def describe(self) -> str:
        """How operators see it in messages: their column, and the path inside it."""
        return self.column + "".join(f" -> '{k}'" for k in self.path)


class TenantLookup(BaseModel):
    """The tenant value is the `key` of the one row of `table` whose columns equal `where`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    table: TableName
    key: str = "id"
    where: dict[str, str | int | bool]

    @field_validator("table", mode="before")
    @classmethod
    def _table(cls, value: Any) -> Any:
        return TableName.parse(value) if isinstance(value, str) else value

    @field_validator("where")
    @classmethod
    def _where(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("tenant lookup: `where` names at least one column")
        for column in value:
            _identifier(column, "tenant lookup column")
        return value


class Tenant(BaseModel):
    """Which rows are this organization's: `column` equals a constant, or a looked-up key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    column: str
    equals: str | int | bool | None = None
    lookup: TenantLookup | None = None

    @field_validator("column")
    @classmethod
    def _column(cls, value: str) -> str:
        return _identifier(value, "tenant column")

    @model_validator(mode="after")
    def _one_source(self) -> Tenant:
        if (self.equals is None) == (self.lookup is None):
            raise ValueError("tenant: give exactly one of `equals` (a constant) or `lookup`")
        return self


class TableMapping(BaseModel):
    """One organization's devices in a product's own table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    connection_env: str | None = Field(
        default=None, description="Name of the variable holding the table's PostgreSQL URL; unset = our own database."
    )
    table: TableName
    key: str
    tenant: Tenant | None = None
    link: str | None = Field(default=None, description="A column holding the Golioth device id.")
    fields: dict[str, FieldMapping]
    observed: dict[str, FieldMapping] = Field(default_factory=dict)
    insert_defaults: dict[str, str | int | float | bool] = Field(default_factory=dict)
    soft_delete: str | None = None
    updated_at: str | None = None
    observed_at: str | None = Field(default=None, description="A timestamp column set to now() on observed writes.")
    kind: Literal["builtin", "mapped"] = "mapped"

    @field_validator("table", mode="before")
    @classmethod
    def _table(cls, value: Any) -> Any:
        return TableName.parse(value) if isinstance(value, str) else value

    @field_validator("connection_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(f"connection_env takes the NAME of an environment variable, got {value!r}")
        return value

    @field_validator("key", "link", "soft_delete", "updated_at", "observed_at")
    @classmethod
    def _columns(cls, value: str | None) -> str | None:
        return None if value is None else _identifier(value, "column")

    @field_validator("fields", "observed", mode="before")
    @classmethod
    def _field_mappings(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("fields and observed map Golioth names to columns")
        return {name: FieldMapping.parse(raw) for name, raw in value.items() if raw is not None}

    @field_validator("fields")
    @classmethod
    def _synced_names(cls, value: dict[str, FieldMapping]) -> dict[str, FieldMapping]:
        unknown = sorted(set(value) - set(SYNCED))
        if unknown:
            raise ValueError(f"fields: unknown Golioth field(s) {', '.join(unknown)} (one of {', '.join(SYNCED)})")
        if "name" not in value:
            raise ValueError("fields: `name` must be mapped (Golioth requires a device name)")
        return value

    @field_validator("observed")
    @classmethod
    def _observed_names(cls, value: dict[str, FieldMapping]) -> dict[str, FieldMapping]:
        unknown = sorted(set(value) - set(OBSERVED))
        if unknown:
            raise ValueError(f"observed: unknown field(s) {', '.join(unknown)} (one of {', '.join(OBSERVED)})")
        return value

    @field_validator("insert_defaults")
    @classmethod
    def _defaults(cls, value: dict[str, Any]) -> dict[str, Any]:
        for column in value:
            _identifier(column, "insert_defaults column")
        return value

    @model_validator(mode="after")
    def _no_column_twice(self) -> TableMapping:
        """A column is written by one thing only (distinct JSON paths inside one column may share it)."""
        owners: dict[str, list[str]] = {}
        for name, m in {**self.fields, **self.observed}.items():
            owners.setdefault(m.column if not m.path else f"{m.column}{m.path}", []).append(name)
        for column, extra in (
            (self.key, "key"),
            (self.link, "link"),
            (self.soft_delete, "soft_delete"),
            (self.observed_at, "observed_at"),
            (self.tenant.column if self.tenant else None, "tenant"),
            *((c, "insert_defaults") for c in self.insert_defaults),
        ):
            if column is not None:
                owners.setdefault(column, []).append(extra)
        clashes = {c: names for c, names in owners.items() if len(names) > 1}
        if clashes:
            text = "; ".join(f"{c} is used by {', '.join(n)}" for c, n in sorted(clashes.items()))
            raise ValueError(f"each column has one use: {text}")
        whole = {m.column for m in {**self.fields, **self.observed}.values() if not m.path}
        pathed = {m.column for m in {**self.fields, **self.observed}.values() if m.path}
        if whole & pathed:
            raise ValueError(f"column(s) {', '.join(sorted(whole & pathed))} mapped whole and by a JSON path")
        return self

    # -- what the engine asks ---------------------------------------------------------------------

    @property
    def synced_fields(self) -> tuple[str, ...]:
        """Golioth fields this table syncs, in core/fields.py order."""
        return tuple(f for f in SYNCED if f in self.fields)

    @property
    def deletes_possible(self) -> bool:
        """Without a soft-delete column nothing is ever deleted, on either side."""
        return self.soft_delete is not None

    def column_of(self, field: str) -> str:
        """Where a plan's or a conflict's field lives in this table, as operators know it: their
        column (and JSON path), e.g. `display_name` or `config -> 'interval'`. A field the table
        doesn't map, or a whole-device row (`*`, `identity`), keeps its Golioth name."""
        if self.kind == "builtin":
            return field  # golioth-sync's own table: its columns are named after the fields
        name, dot, key = field.partition(".")
        mapped = self.fields.get(name) or self.observed.get(name)
        if mapped is None:
            return field
        return mapped.describe() + (f" -> '{key}'" if dot else "")

    def columns_written(self) -> set[str]:
        """Every column a sync may write: the rest of the table is never touched."""
        columns = {m.column for m in {**self.fields, **self.observed}.values()}
        columns |= {c for c in (self.key, self.link, self.soft_delete, self.observed_at) if c}
        columns |= set(self.insert_defaults)
        if self.tenant:
            columns.add(self.tenant.column)
        return columns


def load_mapping(path: str | Path) -> TableMapping:
    """Read and validate a mapping file; errors name the file and the offending entry."""
    import yaml

    text = Path(path).read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a mapping file is a YAML object (table:, key:, fields:, …)")
    return TableMapping.model_validate(raw)


BUILTIN_TABLE = "public.devices"


def builtin_mapping(organization_id: str) -> TableMapping:
    """golioth-sync's own `devices` table, as a mapping: the zero-configuration default."""
    return TableMapping(
        kind="builtin",
        table=TableName.parse(BUILTIN_TABLE),
        key="id",
        tenant=Tenant(column="organization_id", equals=organization_id),
        fields={f: FieldMapping(column=f) for f in SYNCED},
        observed={
            f: FieldMapping(column=f)
            for f in (
                "status",
                "last_seen_online",
                "last_seen_offline",
                "last_report",
                "firmware_versions",
                "settings_status",
                "reported_state",
            )
        },
        soft_delete="deleted_at",
        updated_at="updated_at",
        observed_at="observed_at",
    )
