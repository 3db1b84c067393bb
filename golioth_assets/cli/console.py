"""`golioth-sync console`: serve the web console.

Bound to 127.0.0.1 by default. Binding any other address needs GOLIOTH_SYNC_CONSOLE_TOKEN (at least
16 characters); every request must then carry it (`Authorization: Bearer …`, or the session the
/login page opens). Put a TLS-terminating proxy in front when it is reachable over a network, and
name it with `--forwarded-allow-ips` so that its X-Forwarded-Proto/-For are believed: then the
session cookie is `Secure` and login throttling sees the real client. Headers from anyone else are
ignored.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import uvicorn

from golioth_assets.console.security import MIN_TOKEN_LENGTH, TOKEN_ENV, is_loopback


def console_settings(host: str) -> tuple[str | None, bool]:
    """(token, loopback_only) for a bind address, or a ClickException explaining what is missing."""
    token = os.environ.get(TOKEN_ENV) or None
    loopback = is_loopback(host)
    if not loopback and not token:
        raise click.ClickException(
            f"refusing to serve the console on {host}: set {TOKEN_ENV} (at least {MIN_TOKEN_LENGTH} characters) "
            "so every request must present it, or bind 127.0.0.1"
        )
    if token and len(token) < MIN_TOKEN_LENGTH:
        raise click.ClickException(f"{TOKEN_ENV} is too short: use at least {MIN_TOKEN_LENGTH} random characters")
    return token, loopback


@click.command("console")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (non-loopback needs a token)."
)
@click.option("--port", default=8089, show_default=True, type=int)
@click.option(
    "--dagster-ui-url",
    envvar="DAGSTER_UI_URL",
    default="http://127.0.0.1:3000",
    show_default=True,
    help="Where run links point (env DAGSTER_UI_URL).",
)
@click.option(
    "--forwarded-allow-ips",
    metavar="IPS",
    default=None,
    help="Comma-separated addresses of the TLS proxy in front, whose X-Forwarded-* headers are trusted "
    "(default: none are).",
)
def console(host: str, port: int, dagster_ui_url: str, forwarded_allow_ips: str | None) -> None:
    """Serve the web console: status, services, conflicts, history, webhook inbox."""
    import uvicorn

    from golioth_assets.cli.runtime import prepare
    from golioth_assets.console.app import create_app

    token, loopback = console_settings(host)
    runtime = prepare(dagster=False)
    app = create_app(runtime.engine, token=token, loopback_only=loopback, dagster_ui_url=dagster_ui_url)
    shown = f"[{host}]" if ":" in host else host
    click.echo(
        f"golioth-sync console on http://{shown}:{port} (database {runtime.describe()})"
        + ("; token required" if token else "")
        + (f"; trusting X-Forwarded-* from {forwarded_allow_ips}" if forwarded_allow_ips else "")
    )
    uvicorn.Server(server_config(app, host, port, forwarded_allow_ips)).run()


def server_config(app, host: str, port: int, forwarded_allow_ips: str | None) -> uvicorn.Config:
    """uvicorn's settings for the console. X-Forwarded-Proto/-For are believed only from the named
    proxies (uvicorn would otherwise trust loopback by default, and any local user could claim https
    or another client address)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        proxy_headers=bool(forwarded_allow_ips),
        forwarded_allow_ips=forwarded_allow_ips or "",
        ws="none",
    )
