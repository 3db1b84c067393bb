"""`golioth-sync webhooks …`: run the receiver and look after the inbox."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import click
import sqlalchemy as sa

from golioth_assets.actions import OperationError
from golioth_assets.actions import webhooks as webhook_actions
from golioth_assets.store import webhook_events as inbox
from golioth_assets.webhooks.config import ENV_PREFIX, ReceiverConfig

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2}


def parse_duration(value: str) -> timedelta:
    match = _DURATION.match(value)
    if not match:
        raise click.BadParameter(f"expected a duration like 30m, 12h or 7d, got {value!r}")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def parse_size(value: str) -> int:
    match = _SIZE.match(value)
    if not match:
        raise click.BadParameter(f"expected a size like 1MiB, 512KiB or 65536, got {value!r}")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _SIZE_UNITS[unit]


def _engine() -> sa.engine.Engine:
    from golioth_assets.store.database import app_engine

    return app_engine()


def _bound_options(fn: Callable) -> Callable:
    """The request bounds, each also settable as GOLIOTH_SYNC_WEBHOOK_<FIELD> (how workers receive them)."""
    defaults = ReceiverConfig()
    options = [
        ("--max-header-bytes", "max_header_bytes", "16KiB", str, "Request line + headers (431 above)."),
        ("--max-headers", "max_headers", defaults.max_headers, int, "Header fields per request (431 above)."),
        ("--max-url-bytes", "max_url_bytes", defaults.max_url_bytes, int, "Request target (414 above)."),
        (
            "--header-timeout",
            "header_timeout_seconds",
            defaults.header_timeout_seconds,
            float,
            "Seconds to receive a request's headers (408 after).",
        ),
        (
            "--body-timeout",
            "body_timeout_seconds",
            defaults.body_timeout_seconds,
            float,
            "Seconds to receive a body after its headers.",
        ),
        (
            "--max-connections",
            "max_connections",
            defaults.max_connections,
            int,
            "Open connections per worker (more are closed).",
        ),
    ]
    for flag, name, default, kind, text in reversed(options):
        fn = click.option(
            flag, name, default=default, type=kind, show_default=True, envvar=ENV_PREFIX + name.upper(), help=text
        )(fn)
    return fn


@click.group()
def webhooks() -> None:
    """The webhook receiver and its inbox (webhook_events)."""


@webhooks.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8088, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="uvicorn worker processes.")
@click.option("--max-body", default="1MiB", show_default=True, help="Largest accepted body (413 above).")
@click.option(
    "--max-queue",
    default=ReceiverConfig.max_queue,
    show_default=True,
    help="Events awaiting commit per worker before 503.",
)
@click.option(
    "--max-in-flight",
    default=ReceiverConfig.max_in_flight,
    show_default=True,
    help="Concurrent requests per worker before 503.",
)
@click.option(
    "--max-loop-lag-ms",
    default=ReceiverConfig.max_loop_lag_ms,
    show_default=True,
    help="Shed load while the event loop lags this much (0: off).",
)
@click.option(
    "--writers",
    default=ReceiverConfig.writers,
    show_default=True,
    help="Group-commit threads (DB connections) per worker.",
)
@click.option(
    "--cache-seconds",
    default=ReceiverConfig.service_cache_seconds,
    show_default=True,
    help="How long service settings are reused.",
)
@click.option(
    "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
@_bound_options
def serve(
    host: str,
    port: int,
    workers: int,
    max_body: str,
    max_queue: int,
    max_in_flight: int,
    max_loop_lag_ms: float,
    writers: int,
    cache_seconds: float,
    log_level: str,
    **bounds: Any,
) -> None:
    """Run the receiver: POST /webhooks/golioth/{service_id}, GET /healthz.

    Request heads, header counts, slow clients and open connections are bounded in the receiver
    itself (see docs/webhooks.md), so it is safe without a proxy in front."""
    import uvicorn

    from golioth_assets.store.database import render, resolve_urls

    config = ReceiverConfig(
        max_body_bytes=parse_size(max_body),
        max_queue=max_queue,
        max_in_flight=max_in_flight,
        max_loop_lag_ms=max_loop_lag_ms,
        writers=writers,
        service_cache_seconds=cache_seconds,
        **{**bounds, "max_header_bytes": parse_size(bounds["max_header_bytes"])},
    )
    engine = _engine()  # starts the embedded server once, here, rather than racing in each worker
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("webhook_events"):
            raise click.ClickException("the database has no webhook_events table: run `golioth-sync db upgrade` first")
    app_url, _ = resolve_urls()
    # Workers are separate processes: they learn the database and the settings from the environment.
    os.environ["DATABASE_URL"] = app_url.render_as_string(hide_password=False)
    os.environ.update(config.to_env())
    click.echo(f"webhook receiver on http://{host}:{port} ({workers} worker(s)), database {render(app_url)}")
    uvicorn.run(
        "golioth_assets.webhooks.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="golioth_assets.webhooks.protocol:BoundedHttpToolsProtocol",
        ws="none",  # no WebSocket upgrades: nothing here speaks it, and it would bypass the bounds
        access_log=False,
        log_level=log_level,
        # Above the load balancer's idle timeout, so it is the one that closes idle connections.
        timeout_keep_alive=75,
    )


@webhooks.command("list")
@click.option("--status", type=click.Choice(inbox.STATUSES), help="Only events in this state.")
@click.option("--org", "organization_id", help="Only this organization's events.")
@click.option("--limit", default=50, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (see docs/operators.md).")
def list_(status: str | None, organization_id: str | None, limit: int, as_json: bool) -> None:
    """Show the inbox, newest first, with per-status counts."""
    from rich.console import Console

    from golioth_assets.cli.render import list_table, shorten

    engine = _engine()
    with engine.connect() as conn:
        rows = inbox.list_events(conn, status=status, organization_id=organization_id, limit=limit)
        counts = inbox.count_by_status(conn, organization_id)
    if as_json:
        return _print_json(rows, counts)
    columns = ["id", "org", "type", "device", "status", "attempts", "received", "last error"]
    if organization_id:
        columns.remove("org")
    table = list_table("webhook events", columns, wrap=("last error",), cut=("org", "device"))
    for row in rows:
        cells = {
            "id": str(row.id),
            "org": row.organization_id,
            "type": row.event_type,
            "device": row.golioth_device_id or row.device_id or "",  # a captured local change: its key
            "status": row.status,
            "attempts": str(row.attempts),
            "received": row.received_at.strftime("%Y-%m-%d %H:%M"),
            "last error": shorten(row.last_error or ""),
        }
        table.add_row(*(cells[c] for c in columns))
    out = Console()
    out.print(table)
    out.print("  ".join(f"{name}: {n}" for name, n in counts.items()))


def _print_json(rows, counts: dict[str, int]) -> None:
    """Events without their payloads (device data; `webhook_events` has them), and counts by status."""
    from golioth_assets.cli.output import echo_json

    keys = (
        "id",
        "organization_id",
        "event_type",
        "golioth_device_id",
        "device_id",
        "status",
        "attempts",
        "received_at",
    )
    events = [{**{k: getattr(row, k) for k in keys}, "last_error": row.last_error} for row in rows]
    echo_json({"events": events, "counts": counts})


@webhooks.command()
@click.option("--id", "ids", multiple=True, type=int, help="A dead event's id (repeatable).")
@click.option("--org", "organization_id", help="Every dead event of this organization.")
@click.option("--all", "all_dead", is_flag=True, help="Every dead event.")
def replay(ids: tuple[int, ...], organization_id: str | None, all_dead: bool) -> None:
    """Requeue dead letters as pending, with a fresh attempt count."""
    if not (ids or organization_id or all_dead):
        raise click.UsageError("say which dead events: --id, --org or --all")
    try:
        count = webhook_actions.replay(_engine(), ids, organization_id, every_org=all_dead)
    except OperationError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"requeued {count} dead event(s)")


@webhooks.command()
@click.option(
    "--older-than", default="7d", show_default=True, help="Retention for processed events (30m, 12h, 7d, 2w)."
)
def prune(older_than: str) -> None:
    """Delete processed events older than the retention; dead letters stay."""
    retention = parse_duration(older_than)
    with _engine().begin() as conn:
        count = inbox.prune_processed(conn, retention)
    click.echo(f"pruned {count} processed event(s) older than {older_than}")
