"""`golioth-sync services …`: configure which Golioth project an organization syncs with, and how.

Secrets never pass through here: `--api-key-env` and `--webhook-secret-env` take the NAME of an
environment variable, and a value that looks like a key is refused without being echoed. Settings
are read at the start of every run, so a change takes effect on the next run, no restart needed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click
from rich.table import Table

from golioth_assets import credentials
from golioth_assets.actions import OperationError
from golioth_assets.actions import services as actions
from golioth_assets.cli.output import CommandFailed, echo_json, json_option
from golioth_assets.cli.render import TerminalConsole, list_table
from golioth_assets.core.vocabulary import Direction, FieldGroup, Policy, values
from golioth_assets.store.services import PIPELINE_SECRET, SIGNING_KEY

out = TerminalConsole()

# Settings field → the option that sets it, so errors name what the operator typed.
LABELS = {
    "organization_id": "--org",
    "name": "--name",
    "project_id": "--project-id",
    "base_url": "--base-url",
    "golioth_organization_id": "--golioth-org",
    "api_key_env": "--api-key-env",
    "sync_enabled": "--enabled/--disabled",
    "interval_seconds": "--interval",
    "direction": "--direction",
    "conflict_policy": "--policy",
    "policy_overrides": "--override",
    "field_groups": "--groups",
    "allow_deletes": "--allow-deletes",
    "desired_state_path": "--desired-state-path",
    "webhook_enabled": "--webhooks",
    "webhook_secret_env": "--webhook-secret-env",
    "webhook_secret_header": "--webhook-header",
    "local_table": "--local-table",
    "webhook_signing_key_env": "--webhook-signing-key-env",
}


def open_engine():
    """The application database (embedded or DATABASE_URL), migrated."""
    from golioth_assets.cli.runtime import prepare

    return prepare(dagster=False).engine


def operator_errors(fn: Callable) -> Callable:
    """Operator mistakes → one line on stderr and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OperationError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _setting_options(*, adding: bool) -> Callable[[Callable], Callable]:
    """The options of `add`, whose help gives the defaults it fills in, and of `update`, which changes
    only what is given. Every option defaults to None, so both can tell given from omitted."""

    def default(text: str) -> str:
        return f" [default: {text}]" if adding else ""

    options = [
        click.option("--name", required=adding, help="A label for this connection."),
        click.option(
            "--project-id",
            envvar="GOLIOTH_PROJECT_ID" if adding else None,
            help="The Golioth project id" + (" [env var: GOLIOTH_PROJECT_ID; required]" if adding else "") + ".",
        ),
        click.option(
            "--base-url",
            envvar="GOLIOTH_BASE_URL" if adding else None,
            help="Golioth API base URL"
            + (" [env var: GOLIOTH_BASE_URL; default: https://api.golioth.io]" if adding else "")
            + ".",
        ),
        click.option("--golioth-org", "golioth_organization_id", help="Golioth organization id (needed for cohorts)."),
        click.option(
            "--api-key-env",
            metavar="NAME",
            help="NAME of the environment variable holding the Golioth API key (never the key itself)"
            + default("GOLIOTH_API_KEY")
            + ".",
        ),
        click.option(
            "--enabled/--disabled",
            "sync_enabled",
            default=None,
            help="Whether scheduled syncs run" + default("enabled") + ".",
        ),
        click.option(
            "--interval",
            "interval_seconds",
            type=int,
            metavar="SECONDS",
            help="Seconds between full syncs (>= 60)" + default("300") + ".",
        ),
        click.option(
            "--direction",
            metavar="|".join(values(Direction)),
            help="Which way changes flow" + default("bidirectional") + ".",
        ),
        click.option(
            "--policy",
            "conflict_policy",
            metavar="|".join(values(Policy)),
            help="Who wins when both sides changed a field" + default("manual") + ".",
        ),
        click.option(
            "--override",
            "overrides",
            multiple=True,
            metavar="GROUP=POLICY",
            help=f"Policy for one field group (repeatable); groups: {', '.join(values(FieldGroup))}.",
        ),
        click.option(
            "--groups",
            metavar="G1,G2",
            help="Field groups that sync, comma-separated (names as for --override)" + default("all") + ".",
        ),
        click.option(
            "--allow-deletes/--no-deletes",
            "allow_deletes",
            default=None,
            help="Propagate deletes" + default("no") + ".",
        ),
        click.option("--desired-state-path", help="LightDB State path of desired_state" + default("desired") + "."),
        click.option(
            "--webhooks/--no-webhooks",
            "webhook_enabled",
            default=None,
            help="Accept Golioth webhooks for this service" + default("no") + ".",
        ),
        click.option(
            "--webhook-secret-env",
            metavar="NAME",
            help="NAME of the GOLIOTH_… variable holding the Golioth pipelines' header secret (32+ random characters).",
        ),
        click.option(
            "--webhook-signing-key-env",
            metavar="NAME",
            help="NAME of the GOLIOTH_… variable holding the Standard Webhooks signing key (whsec_…), "
            "for signed device events.",
        ),
        click.option(
            "--webhook-header",
            "webhook_secret_header",
            help="Header carrying the shared secret" + default("x-golioth-sync-secret") + ".",
        ),
        click.option(
            "--local-table",
            "local_table_file",
            metavar="MAPPING.yaml",
            type=click.Path(dir_okay=False),
            help="Sync the product's own device table, as this mapping file describes (docs/local-tables.md)"
            + default("golioth-sync's built-in `devices` table")
            + ".",
        ),
        click.option(
            "--builtin-table",
            is_flag=True,
            default=None,
            help="Sync golioth-sync's built-in `devices` table again (drops the mapping).",
        ),
    ]

    def decorate(fn: Callable) -> Callable:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


_NOT_SETTINGS = ("overrides", "groups", "clear_overrides", "local_table_file", "builtin_table")


def _settings_from(options: dict[str, Any], *, current_overrides: dict | None = None) -> dict[str, Any]:
    data = {k: v for k, v in options.items() if v is not None and k not in _NOT_SETTINGS}
    if options.get("local_table_file") and options.get("builtin_table"):
        raise click.UsageError("give --local-table or --builtin-table, not both")
    if options.get("local_table_file"):
        data["local_table"] = actions.read_mapping(options["local_table_file"])
    if options.get("builtin_table"):
        data["local_table"] = None
    if options.get("overrides") or options.get("clear_overrides"):
        base = {} if options.get("clear_overrides") else dict(current_overrides or {})
        data["policy_overrides"] = {**base, **actions.parse_overrides(",".join(options.get("overrides") or ()))}
    groups = actions.parse_groups(options.get("groups"))
    if groups is not None:
        data["field_groups"] = groups
    return data


def _service_ref(fn: Callable) -> Callable:
    """SERVICE as an argument (its id or organization) or as --org ORG; the command gets `service`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, service: str | None = None, org: str | None = None, **kwargs: Any) -> Any:
        if service and org and service != org:
            raise click.UsageError("give the service as an argument or as --org, not both")
        if not (service or org):
            raise click.UsageError("which service? give its organization (--org ORG) or its id")
        return fn(*args, service=service or org, **kwargs)

    wrapper = click.option("--org", "org", metavar="ORG", help="The service's organization.")(wrapper)
    return click.argument("service", required=False)(wrapper)


@click.group()
def services() -> None:
    """Golioth connections: one per organization (device_services)."""


@services.command(short_help="Connect an organization to a Golioth project.")
@click.option("--org", "organization_id", required=True, help="The organization (a lowercase slug).")
@_setting_options(adding=True)
@json_option
@operator_errors
def add(organization_id: str, as_json: bool, **options: Any) -> None:
    """Add a service: which Golioth project an organization syncs with, and how."""
    data = {"organization_id": organization_id, **_settings_from(options)}
    if "project_id" not in data:
        raise click.UsageError("missing --project-id (or set GOLIOTH_PROJECT_ID)")
    service = actions.add_service(open_engine(), data, labels=LABELS)
    if as_json:
        return echo_json({"service": service_json(service)})
    out.print(f"added service {service.id} for organization [bold]{service.organization_id}[/]")
    out.print(settings_table(service))
    out.print(
        f"Next: `golioth-sync services test {service.organization_id}`, then "
        f"`golioth-sync sync --org {service.organization_id} --dry-run`."
    )


@services.command("list")
@json_option
@operator_errors
def list_(as_json: bool) -> None:
    """Every service with its main settings."""
    rows = actions.list_services(open_engine())
    if as_json:
        return echo_json({"services": [service_json(s) for s in rows]})
    # Base URL and key variable are in `services show`: with them the table no longer fits 80 columns.
    table = list_table(
        "services", ("id", "org", "project", "schedule", "direction", "policy", "name"), cut=("project", "name")
    )
    for s in rows:
        schedule = f"every {s.interval_seconds} s" if s.sync_enabled else "disabled"
        table.add_row(str(s.id), s.organization_id, s.project_id, schedule, s.direction, s.conflict_policy, s.name)
    out.print(table)
    if not rows:
        out.print("no services yet: add one with `golioth-sync services add --org ORG ...`")


@services.command()
@_service_ref
@json_option
@operator_errors
def show(service: str, as_json: bool) -> None:
    """All settings of one service (SERVICE: its id or organization)."""
    found = actions.get_service(open_engine(), service)
    if as_json:
        return echo_json({"service": service_json(found)})
    out.print(settings_table(found))


@services.command()
@_service_ref
@_setting_options(adding=False)
@click.option("--clear-overrides", is_flag=True, help="Drop every per-group policy override first.")
@click.option(
    "--rotation-window",
    default="24h",
    metavar="DURATION",
    help="When a webhook secret's variable changes, how long the previous one is still accepted: "
    "24h unless given (0s: not at all).",
)
@click.option("--end-rotation", is_flag=True, help="Stop accepting previous webhook secrets now.")
@json_option
@operator_errors
def update(service: str, rotation_window: str, end_rotation: bool, as_json: bool, **options: Any) -> None:
    """Change settings of a service (SERVICE: its id or organization).

    Every setting is unchanged if its option is omitted. The next run uses the new settings."""
    from golioth_assets.cli.webhooks import parse_duration

    window = parse_duration(rotation_window)
    engine = open_engine()
    current = actions.get_service(engine, service)
    changes = _settings_from(options, current_overrides=current.policy_overrides)
    if end_rotation:
        changes.update(actions.end_rotations())
    updated = actions.update_service(engine, current.id, changes, labels=LABELS, rotation_window=window)
    if as_json:
        return echo_json({"service": service_json(updated), "changed": sorted(changes)})
    out.print(f"updated service {updated.id} ({updated.organization_id}): {', '.join(sorted(changes))}")
    out.print(settings_table(updated))


@services.command()
@_service_ref
@operator_errors
def disable(service: str) -> None:
    """Stop scheduled syncs of a service (settings and links stay)."""
    updated = actions.set_enabled(open_engine(), service, False)
    out.print(f"service {updated.id} ({updated.organization_id}) disabled: the schedule skips it")


@services.command()
@_service_ref
@operator_errors
def enable(service: str) -> None:
    """Resume scheduled syncs of a service."""
    updated = actions.set_enabled(open_engine(), service, True)
    out.print(f"service {updated.id} ({updated.organization_id}) enabled")


@services.command(short_help="Delete a service with its links, conflicts and inbox.")
@_service_ref
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@operator_errors
def remove(service: str, yes: bool) -> None:
    """Delete a service with its device links, conflicts and webhook inbox.

    The organization's devices and its sync history stay."""
    engine = open_engine()
    current = actions.get_service(engine, service)
    if not yes:
        click.confirm(
            f"Remove service {current.id} ({current.organization_id} → project {current.project_id}) with its links, "
            "conflicts and webhook events?",
            abort=True,
        )
    removed = actions.remove_service(engine, current.id)
    out.print(f"removed service {removed.id} ({removed.organization_id})")


@services.command("test", short_help="Check the key and the connection; count the devices.")
@_service_ref
@json_option
@operator_errors
def test_(service: str, as_json: bool) -> None:
    """Check the connection: the key is set and accepted, the project reachable; print the device count.

    Exits 1 when a check fails."""
    report = actions.check_connection(open_engine(), service)
    if as_json:
        echo_json(
            {
                "service": service_json(report.service),
                "ok": report.ok,
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in report.checks],
                "device_count": report.device_count,
            }
        )
        if not report.ok:
            raise CommandFailed("connection test failed")
        return
    s = report.service
    out.print(f"service {s.id} ({s.organization_id}) → project {s.project_id} at {s.base_url}")
    for check in report.checks:
        mark = "[green]✓[/]" if check.ok else "[red]✗[/]"
        out.print(f"  {mark} {check.name}: {check.detail}")
    if report.device_count is not None:
        out.print(f"devices in Golioth: {report.device_count}")
    if not report.ok:
        failed = next(c for c in report.checks if not c.ok)
        raise click.ClickException(f"connection test failed: {failed.name}: {failed.detail}")


# -- rendering -----------------------------------------------------------------------------------------


def service_json(service) -> dict[str, Any]:
    """Every setting (secrets are variable names, never values), and whether each variable is set here."""
    return {
        **service.model_dump(mode="json"),
        "api_key_set": credentials.secret_is_set(service.api_key_env),
        "webhook_secret_set": bool(
            service.webhook_secret_env and credentials.secret_is_set(service.webhook_secret_env)
        ),
        "webhook_signing_key_set": bool(
            service.webhook_signing_key_env and credentials.secret_is_set(service.webhook_signing_key_env)
        ),
    }


def _env_status(name: str | None) -> str:
    if not name:
        return "-"
    return f"${name} ({'set' if credentials.secret_is_set(name) else 'NOT SET here'})"


def _previous_status(service, secret) -> str:
    name, until = getattr(service, secret.previous), getattr(service, secret.until)
    if not name or until is None or until <= datetime.now(UTC):
        return "-"
    return f"{_env_status(name)} until {until:%Y-%m-%d %H:%M %Z}"


def settings_table(service) -> Table:
    table = Table(title=f"service {service.id}: {service.organization_id}", show_header=False)
    table.add_column("setting")
    table.add_column("value", overflow="fold")
    overrides = ", ".join(f"{g}={p}" for g, p in sorted(service.policy_overrides.items())) or "none"
    rows = [
        ("organization", service.organization_id),
        ("name", service.name),
        ("Golioth project", service.project_id),
        ("base URL", service.base_url),
        ("Golioth organization", service.golioth_organization_id or "-"),
        ("API key", _env_status(service.api_key_env)),
        ("sync enabled", "yes" if service.sync_enabled else "no"),
        ("interval", f"{service.interval_seconds} s"),
        ("direction", service.direction),
        ("conflict policy", service.conflict_policy),
        ("policy overrides", overrides),
        ("field groups", ", ".join(service.field_groups)),
        ("deletes allowed", "yes" if service.allow_deletes else "no"),
        ("desired state path", service.desired_state_path),
        ("webhooks", "on" if service.webhook_enabled else "off"),
        ("pipeline secret", _env_status(service.webhook_secret_env)),
        ("pipeline secret header", service.webhook_secret_header),
        ("previous pipeline secret", _previous_status(service, PIPELINE_SECRET)),
        ("signing key", _env_status(service.webhook_signing_key_env)),
        ("previous signing key", _previous_status(service, SIGNING_KEY)),
        ("local table", actions.describe_local_table(service)),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    return table
