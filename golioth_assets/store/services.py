"""Organizations and their Golioth connections (`device_services`).

`ServiceSettings` is the one validation path for a service's settings: the CLI, the web console
and the Dagster layer all go through it, so a bad setting gets the same clear error everywhere.
"""

from __future__ import annotations

import os
import re
from datetime import datetime

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from sqlalchemy.engine import Connection

from golioth_assets.core.vocabulary import Direction, FieldGroup, Policy
from golioth_assets.store.local_table.mapping import TableMapping
from golioth_assets.store.schema import device_services, organizations

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Golioth API keys are long random strings; an env var name is short and SHOUTY. A value that looks
# like a key is refused so nobody stores a key where its variable's name belongs.
_LOOKS_LIKE_KEY = re.compile(r"^[A-Za-z0-9]{24,}$")


class ServiceNotFound(LookupError):
    pass


class MissingSecret(RuntimeError):
    """The environment variable a service names is not set in this process."""


def _check_env_name(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if _LOOKS_LIKE_KEY.match(value) and not value.isupper():
        raise ValueError(f"{what} takes the NAME of an environment variable, not the secret itself")
    if not _ENV_NAME.match(value):
        raise ValueError(f"{what} must be an environment variable name like GOLIOTH_API_KEY, got {value!r}")
    return value


class ServiceSettings(BaseModel):
    """The settings of one Golioth connection, validated."""

    # Enum fields hold plain strings once validated: what SQL stores and operators read.
    model_config = ConfigDict(extra="forbid", use_enum_values=True, validate_default=True)

    organization_id: str
    name: str = Field(min_length=1)
    project_id: str = Field(min_length=1)
    base_url: str = "https://api.golioth.io"
    golioth_organization_id: str | None = None
    api_key_env: str = "GOLIOTH_API_KEY"
    sync_enabled: bool = True
    interval_seconds: int = Field(default=300, ge=60)
    direction: Direction = Direction["bidirectional"]
    conflict_policy: Policy = Policy.manual
    policy_overrides: dict[FieldGroup, Policy] = Field(default_factory=dict)
    field_groups: list[FieldGroup] = Field(default_factory=lambda: list(FieldGroup))
    allow_deletes: bool = False
    desired_state_path: str = Field(default="desired", pattern=r"^[A-Za-z0-9_\-/]+$")
    webhook_enabled: bool = False
    webhook_secret_env: str | None = None
    webhook_secret_header: str = "x-golioth-sync-secret"
    local_table: TableMapping | None = None
    """The product's own device table (None: golioth-sync's built-in `devices`)."""

    @field_validator("local_table")
    @classmethod
    def _builtin_is_none(cls, value: TableMapping | None) -> TableMapping | None:
        return None if value is not None and value.kind == "builtin" else value

    @field_validator("organization_id")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _SLUG.match(value):
            raise ValueError("organization must be a lowercase slug (a-z, 0-9, '-', '_'), at most 63 characters")
        return value

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _api_key_env(cls, value: str) -> str:
        return _check_env_name(value, "api_key_env")  # type: ignore[return-value]

    @field_validator("webhook_secret_env")
    @classmethod
    def _webhook_secret_env(cls, value: str | None) -> str | None:
        return _check_env_name(value, "webhook_secret_env")

    @field_validator("field_groups")
    @classmethod
    def _dedupe_groups(cls, value: list[str]) -> list[str]:
        return [g.value for g in FieldGroup if g in set(value)]

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> ServiceSettings:
        if self.webhook_enabled and not self.webhook_secret_env:
            raise ValueError("webhook_enabled needs webhook_secret_env (the variable holding the webhook secret)")
        return self


class Service(ServiceSettings):
    """A stored service: its settings plus identity and timestamps."""

    model_config = ConfigDict(extra="ignore")

    id: int
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def policy_for(self, group: str) -> str:
        return self.policy_overrides.get(group, self.conflict_policy)  # type: ignore[call-overload]

    def api_key(self) -> SecretStr:
        """Read the API key from the environment variable the service names."""
        value = os.environ.get(self.api_key_env)
        if not value:
            raise MissingSecret(
                f"service {self.id} ({self.organization_id}) reads its Golioth API key from "
                f"${self.api_key_env}, which is not set in this process"
            )
        return SecretStr(value)

    def webhook_secret(self) -> SecretStr | None:
        if not self.webhook_secret_env:
            return None
        value = os.environ.get(self.webhook_secret_env)
        return SecretStr(value) if value else None


def ensure_organization(conn: Connection, organization_id: str, name: str | None = None) -> None:
    if not _SLUG.match(organization_id):
        raise ValueError(f"organization must be a lowercase slug (a-z, 0-9, '-', '_'), got {organization_id!r}")
    stmt = sa.dialects.postgresql.insert(organizations).values(id=organization_id, name=name or organization_id)
    conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))


def create_service(conn: Connection, settings: ServiceSettings) -> Service:
    ensure_organization(conn, settings.organization_id)
    row = (
        conn.execute(device_services.insert().values(**settings.model_dump()).returning(*device_services.c))
        .mappings()
        .one()
    )
    return Service.model_validate(dict(row))


def upsert_service(conn: Connection, settings: ServiceSettings) -> Service:
    """Create the organization's service, or replace its settings (one service per organization)."""
    ensure_organization(conn, settings.organization_id)
    values = settings.model_dump()
    stmt = sa.dialects.postgresql.insert(device_services).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["organization_id"],
        set_={**{k: stmt.excluded[k] for k in values if k != "organization_id"}, "updated_at": sa.func.now()},
    )
    row = conn.execute(stmt.returning(*device_services.c)).mappings().one()
    return Service.model_validate(dict(row))


def update_service(conn: Connection, service_id: int, **changes: object) -> Service:
    """Change some settings; the merged result is validated as a whole before anything is written."""
    current = get_service(conn, service_id)
    merged = ServiceSettings.model_validate(
        {**current.model_dump(include=set(ServiceSettings.model_fields)), **changes}
    )
    row = (
        conn.execute(
            device_services.update()
            .where(device_services.c.id == service_id)
            .values(**merged.model_dump(), updated_at=sa.func.now())
            .returning(*device_services.c)
        )
        .mappings()
        .one()
    )
    return Service.model_validate(dict(row))


def get_service(conn: Connection, service_id: int) -> Service:
    row = conn.execute(sa.select(device_services).where(device_services.c.id == service_id)).mappings().first()
    if row is None:
        raise ServiceNotFound(f"no service with id {service_id}")
    return Service.model_validate(dict(row))


def service_for_org(conn: Connection, organization_id: str) -> Service:
    row = (
        conn.execute(sa.select(device_services).where(device_services.c.organization_id == organization_id))
        .mappings()
        .first()
    )
    if row is None:
        raise ServiceNotFound(f"organization {organization_id!r} has no Golioth service")
    return Service.model_validate(dict(row))


def list_services(conn: Connection, *, enabled_only: bool = False) -> list[Service]:
    query = sa.select(device_services).order_by(device_services.c.organization_id)
    if enabled_only:
        query = query.where(device_services.c.sync_enabled)
    return [Service.model_validate(dict(r)) for r in conn.execute(query).mappings()]


def delete_service(conn: Connection, service_id: int) -> None:
    result = conn.execute(device_services.delete().where(device_services.c.id == service_id))
    if result.rowcount == 0:
        raise ServiceNotFound(f"no service with id {service_id}")
