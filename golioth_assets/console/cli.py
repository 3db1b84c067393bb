"""`golioth-sync console`: serve the web console.

Bound to 127.0.0.1 by default. Binding any other address needs GOLIOTH_SYNC_CONSOLE_TOKEN (at least
16 characters); every request must then carry it (`Authorization: Bearer …`, or the cookie the
/login page sets). Put a TLS-terminating proxy in front when it is reachable over a network.
"""

from __future__ import annotations

import os

import click

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


@click.command("console", short_help="Serve the web console: status, conflicts, history, inbox.")
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
def console(host: str, port: int, dagster_ui_url: str) -> None:
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
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, proxy_headers=False)
