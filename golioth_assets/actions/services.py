"""Configure Golioth services: add, change, enable/disable, remove and test one.

Settings are validated by `store.services.ServiceSettings` (the one validation path); this module
adds what only an operator front end needs:

- errors as one line, built from pydantic's error list *without* the input values, so a secret
  typed into the wrong field is never echoed back;
- secret names (`api_key_env`, `webhook_secret_env`, `webhook_signing_key_env`) must be allowed by
  golioth_assets.credentials (a `GOLIOTH_` name outside golioth-sync's own settings), be set here
  (environment or secrets folder), hold a strong enough value for their job, and hold three different
  values; a refused value is never repeated (it may be the secret itself);
- changing a webhook secret's variable starts a rotation: the previous variable stays accepted for
  a window (24 hours unless told otherwise), so senders can move over without a failed delivery.

Settings are read from the database at the start of every run, so a change takes effect on the
next run without restarting anything.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy.engine import Connection, Engine

from golioth_assets import credentials
from golioth_assets.actions.errors import InvalidInput, NotFound, OperationError
from golioth_assets.core.vocabulary import FieldGroup, Policy, values
from golioth_assets.store import services as store

SETTING_FIELDS: tuple[str, ...] = tuple(store.ServiceSettings.model_fields)
ENV_FIELDS: tuple[str, ...] = store.SECRET_NAME_FIELDS
# Settings that decide which secret is read and where it is sent: the console leaves them to the operator.
CONNECTION_FIELDS: tuple[str, ...] = (
    "base_url",
    *ENV_FIELDS,
    *(s.until for s in store.ROTATING_SECRETS),
)
DEFAULT_ROTATION_WINDOW = timedelta(hours=24)
# Each current secret's job: how strong its value must be (the API key is Golioth's to judge).
_STRENGTH = {s.current: s.problem for s in store.ROTATING_SECRETS}
_CURRENT_SECRETS = ("api_key_env", *_STRENGTH)

_LOOKS_LIKE_KEY = re.compile(r"^[A-Za-z0-9]{24,}$")


# -- validation --------------------------------------------------------------------------------------


def format_validation_error(
    exc: ValidationError, *, hide: tuple[str, ...] = (), labels: Mapping[str, str] | None = None
) -> str:
    """pydantic's errors as one line, without input values (and with `hide` strings masked).

    `labels` renames fields for the front end (e.g. interval_seconds → --interval)."""
    parts = []
    labels = labels or {}
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        loc = [str(p) for p in error["loc"]]
        if loc:
            loc[0] = labels.get(loc[0], loc[0])
        where = ".".join(loc) or "settings"
        message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        parts.append(f"{where}: {message}")
    text = "invalid service settings: " + "; ".join(parts)
    for secret in hide:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def looks_like_secret(value: str) -> bool:
    """True for values that are more likely a key than the name of an environment variable."""
    if _LOOKS_LIKE_KEY.match(value) and not value.isupper():
        return True
    if len(value) >= 16 and any(c.islower() for c in value) and any(c.isupper() for c in value):
        return True  # env names are one case; random keys are mixed
    # hex and base36 keys are digit-heavy
    return len(value) >= 16 and sum(c.isdigit() for c in value) / len(value) >= 0.25


def _value_of_some_variable(value: str) -> str | None:
    if len(value) < 8:
        return None
    for name, current in os.environ.items():
        if current == value and name != value:
            return name
    return None


def _refused_name(field_label: str, value: str) -> str | None:
    """Why `value` is refused as a secret's name, in words that never repeat it."""
    if credentials.name_problem(value) is None and credentials.secret_is_set(value):
        return None  # an allowed name of a secret that is set: a name, whatever it looks like
    holder = _value_of_some_variable(value)
    if holder:
        return (
            f"{field_label}: that is the value of ${holder}, not a variable name; pass the NAME (e.g. {holder}) "
            "so the secret is never stored"
        )
    if not credentials.is_name_shaped(value) or looks_like_secret(value):
        return (
            f"{field_label}: takes the NAME of an environment variable (like GOLIOTH_API_KEY), not a key or "
            "secret; the value given was refused and not stored"
        )
    problem = credentials.name_problem(value)
    if problem:
        return f"{field_label}: the variable {problem}; the name given was refused and not stored"
    return None


def _value_problem(field_name: str, field_label: str, name: str, *, require_set: bool) -> str | None:
    """Is the named secret there (when it must be) and strong enough for its job?"""
    try:
        value = credentials.read_secret(name)
    except credentials.SecretRefused as exc:
        return f"{field_label}: {exc}"
    if value is None:
        if not require_set:
            return None
        return (
            f"{field_label}: the variable named is not set here (nor a file in {credentials.secrets_dir()}); "
            "export it first (only its name is stored, and the name given is not repeated in case it was a secret)"
        )
    judge = _STRENGTH.get(field_name)
    problem = judge(value) if judge and require_set else None
    return f"{field_label}: the value of that variable is refused: {problem}" if problem else None


def check_env_reference(
    field_name: str, value: Any, *, require_set: bool = True, label: str | None = None
) -> str | None:
    """Validate a setting that names a secret; return the name (None if empty).

    The name must pass golioth_assets.credentials' allow-list; with `require_set` the secret must be
    set here and strong enough for its job. Never echoes a refused value: it might be the secret itself.
    """
    field_label = label or field_name
    if value is None or (isinstance(value, str) and not value.strip()):
        if field_name == "api_key_env":
            raise InvalidInput(
                f"{field_label}: give the NAME of the environment variable that holds the Golioth API key"
            )
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{field_label}: must be the name of an environment variable")
    value = value.strip()
    problem = _refused_name(field_label, value) or _value_problem(
        field_name, field_label, value, require_set=require_set
    )
    if problem:
        raise InvalidInput(problem)
    return value


def _same_values(data: Mapping[str, Any], labels: Mapping[str, str]) -> None:
    """The API key, the pipeline secret and the signing key must be three different secrets."""
    seen: dict[str, str] = {}
    for name in _CURRENT_SECRETS:
        ref = data.get(name)
        value = credentials.read_secret(ref) if ref and not credentials.name_problem(ref) else None
        if value is None:
            continue
        if value in seen:
            first_label, second_label = labels.get(seen[value], seen[value]), labels.get(name, name)
            raise InvalidInput(
                f"{first_label} and {second_label} name variables holding the same value: "
                "each job needs a secret of its own"
            )
        seen[value] = name


def validate_settings(
    data: Mapping[str, Any], *, check_env: tuple[str, ...] = _CURRENT_SECRETS, labels: Mapping[str, str] | None = None
) -> store.ServiceSettings:
    """Validate a full set of settings. `check_env` lists the secret fields whose variables must be set
    here and strong enough (every current secret by default)."""
    labels = labels or {}
    data = dict(data)
    unknown = sorted(set(data) - set(SETTING_FIELDS))
    if unknown:
        raise InvalidInput(f"unknown setting(s): {', '.join(unknown)}")
    hide = tuple(str(data[f]) for f in ENV_FIELDS if isinstance(data.get(f), str))
    for name in ENV_FIELDS:
        if name in data:
            data[name] = check_env_reference(name, data[name], require_set=name in check_env, label=labels.get(name))
    _same_values(data, labels)
    try:
        return store.ServiceSettings.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(format_validation_error(exc, hide=hide, labels=labels)) from None


def parse_overrides(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """`tags=remote_wins,desired_state=local_wins` (or a mapping) → {group: policy}, validated."""
    if text is None:
        return {}
    if isinstance(text, Mapping):
        pairs = list(text.items())
    else:
        pairs = []
        for item in (p.strip() for p in text.split(",")):
            if not item:
                continue
            if "=" not in item:
                raise InvalidInput(f"policy override {item!r}: expected GROUP=POLICY, e.g. tags=remote_wins")
            group, _, policy = item.partition("=")
            pairs.append((group.strip(), policy.strip()))
    out: dict[str, str] = {}
    for group, policy in pairs:
        if group not in values(FieldGroup):
            raise InvalidInput(
                f"policy override: unknown field group {group!r} (one of {', '.join(values(FieldGroup))})"
            )
        if policy not in values(Policy):
            raise InvalidInput(
                f"policy override for {group}: unknown policy {policy!r} (one of {', '.join(values(Policy))})"
            )
        out[group] = policy
    return out


def parse_groups(text: str | list[str] | None) -> list[str] | None:
    """`identity,tags,enabled` (or a list) → validated field groups; None when not given."""
    if text is None:
        return None
    items = [g.strip() for g in (text.split(",") if isinstance(text, str) else text) if g.strip()]
    bad = [g for g in items if g not in values(FieldGroup)]
    if bad:
        raise InvalidInput(
            f"unknown field group(s) {', '.join(map(repr, bad))} (one of {', '.join(values(FieldGroup))})"
        )
    return items


# -- lookups -----------------------------------------------------------------------------------------


def find_service(conn: Connection, ref: str | int) -> store.Service:
    """A service by id (digits) or by its organization."""
    text = str(ref).strip()
    try:
        if text.isdigit():
            return store.get_service(conn, int(text))
        return store.service_for_org(conn, text)
    except store.ServiceNotFound as exc:
        raise NotFound(f"{exc}; `golioth-sync services list` shows the configured ones") from None


def get_service(engine: Engine, ref: str | int) -> store.Service:
    with engine.connect() as conn:
        return find_service(conn, ref)


def list_services(engine: Engine) -> list[store.Service]:
    with engine.connect() as conn:
        return store.list_services(conn)


def organization_exists(conn: Connection, organization_id: str) -> bool:
    return store.organization_exists(conn, organization_id)


# -- writes ------------------------------------------------------------------------------------------


def add_service(engine: Engine, data: Mapping[str, Any], *, labels: Mapping[str, str] | None = None) -> store.Service:
    settings = validate_settings(data, labels=labels)
    with engine.begin() as conn:
        existing = store.service_id_of(conn, settings.organization_id)
        if existing is not None:
            raise InvalidInput(
                f"organization {settings.organization_id!r} already has a service (id {existing}); "
                "change it with `golioth-sync services update`"
            )
        return store.create_service(conn, settings)


def rotation_changes(
    current: store.ServiceSettings, changes: Mapping[str, Any], window: timedelta = DEFAULT_ROTATION_WINDOW
) -> dict[str, Any]:
    """`changes`, plus a rotation for each webhook secret whose variable changes: the old variable
    stays accepted until now + `window` (a zero window ends the old one at once)."""
    out = dict(changes)
    ends = datetime.now(UTC) + window
    for secret in store.ROTATING_SECRETS:
        if secret.current not in changes or secret.previous in changes:
            continue
        old, new = getattr(current, secret.current), changes[secret.current]
        if not old or not new or new == old:
            continue  # nothing to rotate from, or the format is switched off
        keep = window > timedelta(0)
        out[secret.previous] = old if keep else None
        out[secret.until] = ends if keep else None
    return out


def end_rotations() -> dict[str, None]:
    """Changes that stop accepting every previous webhook secret now."""
    return {field: None for s in store.ROTATING_SECRETS for field in (s.previous, s.until)}


def update_service(
    engine: Engine,
    ref: str | int,
    changes: Mapping[str, Any],
    *,
    labels: Mapping[str, str] | None = None,
    rotation_window: timedelta = DEFAULT_ROTATION_WINDOW,
) -> store.Service:
    """Change some settings; the merged result is validated as a whole before anything is written.
    Changing a webhook secret's variable keeps the old one accepted for `rotation_window`."""
    changes = dict(changes)
    if not changes:
        raise InvalidInput("nothing to change: give at least one setting")
    if "organization_id" in changes:
        raise InvalidInput("a service's organization cannot change; remove it and add a new one")
    with engine.begin() as conn:
        current = find_service(conn, ref)
        changes = rotation_changes(current, changes, rotation_window)
        merged = {**current.model_dump(include=set(SETTING_FIELDS)), **changes}
        # Only variables named by this change must be set in this shell.
        check_env = tuple(f for f in _CURRENT_SECRETS if f in changes)
        settings = validate_settings(merged, check_env=check_env, labels=labels)
        try:
            return store.update_service(conn, current.id, **settings.model_dump())
        except ValidationError as exc:  # pragma: no cover - validated above
            raise InvalidInput(format_validation_error(exc)) from None


def set_enabled(engine: Engine, ref: str | int, enabled: bool) -> store.Service:
    with engine.begin() as conn:
        current = find_service(conn, ref)
        return store.update_service(conn, current.id, sync_enabled=enabled)


def remove_service(engine: Engine, ref: str | int) -> store.Service:
    """Delete a service with its links, conflicts and webhook events. Devices and history stay."""
    with engine.begin() as conn:
        current = find_service(conn, ref)
        store.delete_service(conn, current.id)
        return current


# -- connection test ---------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class ConnectionReport:
    service: store.Service
    checks: list[Check] = field(default_factory=list)
    device_count: int | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


def check_connection(engine: Engine, ref: str | int, *, transport=None) -> ConnectionReport:
    """Is the key set and accepted, is the project reachable, and how many devices does it have?"""
    from golioth_assets.engine.sync import open_client
    from golioth_assets.golioth import errors
    from golioth_assets.golioth.retry import RetryPolicy

    service = get_service(engine, ref)
    report = ConnectionReport(service)
    try:
        service.api_key()
    except store.MissingSecret as exc:
        report.checks.append(Check("api key", False, str(exc)))
        return report
    report.checks.append(Check("api key", True, f"${service.api_key_env} is set"))
    try:
        client = open_client(service, transport=transport, max_concurrency=1)
    except ValueError as exc:
        report.checks.append(Check("api key", False, str(exc)))
        return report
    # An operator is waiting: two quick attempts, not a sync's patient backoff.
    client.retry = RetryPolicy(max_attempts=2, base_delay=0.2, max_delay=1.0, budget=2)
    with client:
        try:
            page = next(iter(client.iter_device_pages(per_page=1)))
        except errors.AuthenticationError:
            report.checks.append(Check("reachable", True, f"{service.base_url} answered"))
            report.checks.append(
                Check(
                    "key accepted",
                    False,
                    f"Golioth rejected the key in ${service.api_key_env} for project {service.project_id!r}",
                )
            )
            return report
        except errors.NotFoundError:
            report.checks.append(Check("reachable", True, f"{service.base_url} answered"))
            report.checks.append(
                Check("project", False, f"project {service.project_id!r} was not found at {service.base_url}")
            )
            return report
        except (errors.TransportError, errors.RetryBudgetExceeded) as exc:
            report.checks.append(Check("reachable", False, f"cannot reach {service.base_url}: {exc.message}"))
            return report
        except errors.GoliothError as exc:
            report.checks.append(Check("reachable", False, str(exc)))
            return report
    report.checks.append(Check("reachable", True, f"{service.base_url} answered"))
    report.checks.append(Check("key accepted", True, f"project {service.project_id!r} is readable with this key"))
    report.device_count = int(page.total)
    return report


__all__ = [
    "CONNECTION_FIELDS",
    "ConnectionReport",
    "OperationError",
    "SETTING_FIELDS",
    "add_service",
    "check_env_reference",
    "find_service",
    "format_validation_error",
    "get_service",
    "list_services",
    "parse_groups",
    "parse_overrides",
    "remove_service",
    "set_enabled",
    "check_connection",
    "end_rotations",
    "rotation_changes",
    "update_service",
    "validate_settings",
]


def read_mapping(path: str):
    """A mapping file, validated: a bad one is one clear line (file and entry), nothing stored."""
    from golioth_assets.store.local_table.mapping import load_mapping

    try:
        return load_mapping(path)
    except OSError as exc:
        raise InvalidInput(f"--local-table: cannot read {path}: {exc.strerror}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "mapping"
        raise InvalidInput(f"--local-table {path}: {where}: {first['msg']}") from None
    except ValueError as exc:
        raise InvalidInput(f"--local-table: {exc}") from None


def describe_local_table(service: store.Service) -> str:
    """Where the service's devices live, for display: the table, and the variable naming its
    database (the URL itself, which may hold a password, is never shown)."""
    mapping = service.local_table
    if mapping is None:
        return "devices (built-in)"
    where = f"${mapping.connection_env}" if mapping.connection_env else "golioth-sync's database"
    return f"{mapping.table} in {where}"
