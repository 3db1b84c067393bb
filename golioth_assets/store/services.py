"""Organizations and their Golioth connections (`device_services`).

`ServiceSettings` is the one validation path for a service's settings: the CLI, the web console
and the Dagster layer all go through it, so a bad setting gets the same clear error everywhere.
The rules for secret names and base URLs are golioth_assets.credentials'; a stored `Service` is
read leniently (a row written under older rules still loads, so an operator can see and fix it),
and the same rules are applied again where its secrets are read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from sqlalchemy.engine import Connection

from golioth_assets import credentials
from golioth_assets.core.vocabulary import Direction, FieldGroup, Policy
from golioth_assets.store.local_table.mapping import TableMapping, builtin_mapping
from golioth_assets.store.schema import device_services, organizations

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Golioth API keys are long random strings; an env var name is short and SHOUTY. A value that looks
# like a key is refused so nobody stores a key where its variable's name belongs.
_LOOKS_LIKE_KEY = re.compile(r"^[A-Za-z0-9]{24,}$")
log = logging.getLogger(__name__)


class ServiceNotFound(LookupError):
    pass


class MissingSecret(RuntimeError):
    """A secret a service names is not set, not allowed, too weak, or may not go where it would be sent."""


@dataclass(frozen=True)
class RotatingSecret:
    """One webhook secret of a service: the current variable, and the previous one during a rotation."""

    label: str
    current: str
    previous: str
    until: str
    problem: Callable[[str], str | None]


PIPELINE_SECRET = RotatingSecret(
    "pipeline secret",
    "webhook_secret_env",
    "webhook_secret_previous_env",
    "webhook_secret_previous_until",
    credentials.pipeline_secret_problem,
)
SIGNING_KEY = RotatingSecret(
    "signing key",
    "webhook_signing_key_env",
    "webhook_signing_key_previous_env",
    "webhook_signing_key_previous_until",
    credentials.signing_key_problem,
)
ROTATING_SECRETS = (PIPELINE_SECRET, SIGNING_KEY)
SECRET_NAME_FIELDS = ("api_key_env", *(f for s in ROTATING_SECRETS for f in (s.current, s.previous)))


def _check_env_name(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if _LOOKS_LIKE_KEY.match(value) and not value.isupper():
        raise ValueError(f"{what} takes the NAME of an environment variable, not the secret itself")
    problem = credentials.name_problem(value)
    if problem:
        raise ValueError(f"{what} {problem}")
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
    """The static header secret of Golioth pipeline deliveries."""
    webhook_secret_header: str = "x-golioth-sync-secret"
    local_table: TableMapping | None = None
    """The product's own device table (None: golioth-sync's built-in `devices`)."""

    @field_validator("local_table")
    @classmethod
    def _builtin_is_none(cls, value: TableMapping | None) -> TableMapping | None:
        return None if value is not None and value.kind == "builtin" else value

    webhook_signing_key_env: str | None = None
    """The Standard Webhooks signing key (whsec_…) of signed device events: never the pipeline secret."""
    webhook_secret_previous_env: str | None = None
    webhook_secret_previous_until: datetime | None = None
    webhook_signing_key_previous_env: str | None = None
    webhook_signing_key_previous_until: datetime | None = None

    @field_validator("organization_id")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _SLUG.match(value):
            raise ValueError("organization must be a lowercase slug (a-z, 0-9, '-', '_'), at most 63 characters")
        return value

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        problem = credentials.base_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value.rstrip("/")

    @field_validator(*SECRET_NAME_FIELDS)
    @classmethod
    def _secret_names(cls, value: str | None, info) -> str | None:
        return _check_env_name(value, info.field_name)

    @field_validator("field_groups")
    @classmethod
    def _dedupe_groups(cls, value: list[str]) -> list[str]:
        return [g.value for g in FieldGroup if g in set(value)]

    @model_validator(mode="after")
    def _secrets_fit_together(self) -> ServiceSettings:
        if self.webhook_enabled and not (self.webhook_secret_env or self.webhook_signing_key_env):
            raise ValueError(
                "webhook_enabled needs webhook_secret_env (Golioth pipelines) or webhook_signing_key_env "
                "(signed events), the variables holding the secrets"
            )
        # One secret, one job: a pipeline secret travels in clear, so it must never be the API key
        # or the signing key.
        current = [n for n in (self.api_key_env, self.webhook_secret_env, self.webhook_signing_key_env) if n]
        if len(set(current)) < len(current):
            raise ValueError("api_key_env, webhook_secret_env and webhook_signing_key_env must be different variables")
        for secret in ROTATING_SECRETS:
            if getattr(self, secret.previous) and getattr(self, secret.until) is None:
                raise ValueError(f"{secret.previous} needs {secret.until} (when the rotation window ends)")
        return self


class Service(ServiceSettings):
    """A stored service: its settings plus identity and timestamps."""

    model_config = ConfigDict(extra="ignore")

    id: int
    created_at: datetime | None = None
    updated_at: datetime | None = None

    # Stored rows load whatever rules they were written under; the rules apply where secrets are read.
    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator(*SECRET_NAME_FIELDS)
    @classmethod
    def _secret_names(cls, value: str | None, info) -> str | None:
        return value

    @model_validator(mode="after")
    def _secrets_fit_together(self) -> Service:
        return self

    def policy_for(self, group: str) -> str:
        return self.policy_overrides.get(group, self.conflict_policy)  # type: ignore[call-overload]

    def _describe(self) -> str:
        return f"service {self.id} ({self.organization_id})"

    def api_key(self) -> SecretStr:
        """The API key, read from the variable the service names, for its base URL only."""
        problem = credentials.base_url_problem(self.base_url)
        if problem:
            raise MissingSecret(f"{self._describe()} will not send its API key: {problem}")
        try:
            value = credentials.read_secret(self.api_key_env)
        except credentials.SecretRefused as exc:
            raise MissingSecret(f"{self._describe()}: {exc}; change it with `golioth-sync services update`") from None
        if not value:
            raise MissingSecret(
                f"{self._describe()}: ${self.api_key_env} (its Golioth API key) is not set in this process"
            )
        return SecretStr(value)

    def webhook_secrets(self, secret: RotatingSecret, now: datetime | None = None) -> list[str] | None:
        """The values that authenticate one delivery format: the current secret, plus the previous one
        until its rotation window ends. None when the service does not accept this format at all.

        Raises MissingSecret (naming the variable, never a value) when the format is configured but
        no usable value is there: not set, not allowed, too weak, or shared with the API key."""
        name = getattr(self, secret.current)
        if not name:
            return None
        now = now or datetime.now(UTC)
        names = [name]
        until = getattr(self, secret.until)
        if getattr(self, secret.previous) and until is not None and until > now:
            names.append(getattr(self, secret.previous))
        values = [v for v in (self._webhook_value(secret, n) for n in names) if v]
        if not values:
            raise MissingSecret(f"{self._describe()} has no usable webhook {secret.label}: see the errors above")
        return values

    def _webhook_value(self, secret: RotatingSecret, name: str) -> str | None:
        if name == self.api_key_env:
            log.error("%s: the webhook %s must not be the API key's variable", self._describe(), secret.label)
            return None
        try:
            value = credentials.read_secret(name)
        except credentials.SecretRefused as exc:
            log.error("%s: webhook %s $%s refused: %s", self._describe(), secret.label, name, exc)
            return None
        if not value:
            log.error("%s reads its webhook %s from $%s, which is not set here", self._describe(), secret.label, name)
            return None
        problem = secret.problem(value)
        if problem:
            log.error("%s: the value of $%s is refused: %s", self._describe(), name, problem)
            return None
        return value


def organization_exists(conn: Connection, organization_id: str) -> bool:
    return conn.execute(sa.select(organizations.c.id).where(organizations.c.id == organization_id)).first() is not None


def service_id_of(conn: Connection, organization_id: str) -> int | None:
    """The organization's service id, or None if it has none."""
    query = sa.select(device_services.c.id).where(device_services.c.organization_id == organization_id)
    return conn.execute(query).scalar()


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


def local_mapping(conn: Connection, organization_id: str) -> TableMapping:
    """The organization's local table: its service's mapping, or the built-in table (also when the
    organization has no service)."""
    try:
        service = service_for_org(conn, organization_id)
    except ServiceNotFound:
        return builtin_mapping(organization_id)
    return service.local_table or builtin_mapping(organization_id)
