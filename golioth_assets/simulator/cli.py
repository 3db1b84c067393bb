"""`golioth-sync simulator`: the click command the main CLI group mounts.

    golioth-sync simulator --devices 10000 --seed 42 --port 8765 --api-key KEY --project-id PID \
        --fail-rate 0.1 --rate-limit 200 --latency-ms 50 --webhook-url http://localhost:8000/webhooks/golioth/1
"""

from __future__ import annotations

import click

from .faults import FaultConfig
from .model import EventsTarget, WebhookTarget
from .state import ProjectSpec


@click.command("simulator")
@click.option("--devices", default=1000, show_default=True, help="Seeded devices per project.")
@click.option("--seed", default=42, show_default=True, help="Seed for devices (and faults, unless --fault-seed).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, help="0 picks a free port.")
@click.option("--project-id", default="sim-project", show_default=True)
@click.option("--api-key", default="sim-api-key", show_default=True, help="The project's x-api-key.")
@click.option("--organization-id", default="sim-org", show_default=True)
@click.option(
    "--extra-projects",
    default=0,
    show_default=True,
    help="More tenants: PROJECT-ID-1.. with API-KEY-1.., each with --devices devices.",
)
@click.option("--fail-rate", default=0.0, show_default=True, help="Share of API requests answered 500.")
@click.option("--unavailable-rate", default=0.0, show_default=True, help="Share answered 503.")
@click.option("--rate-limit", type=int, default=None, help="Requests/second per project before 429s.")
@click.option("--rate-limit-share", default=0.0, show_default=True, help="Share answered 429 regardless of rate.")
@click.option("--retry-after", default=1, show_default=True, help="Retry-After seconds on 429s.")
@click.option("--latency-ms", default=0.0, show_default=True, help="Added to every API request.")
@click.option("--spike-ms", default=0.0, show_default=True, help="Extra latency of an occasional spike.")
@click.option("--spike-probability", default=0.0, show_default=True)
@click.option("--fault-seed", type=int, default=None, help="Seed for fault draws (default: --seed).")
@click.option("--webhook-url", default=None, help="Pipeline webhook destination for device data messages.")
@click.option("--webhook-secret-header", default="x-golioth-sync-secret", show_default=True)
@click.option("--webhook-secret", default=None, help="Value of the static secret header.")
@click.option(
    "--inject-metadata/--raw-payload",
    default=True,
    show_default=True,
    help="Wrap data messages in {data, device_id, project_id, timestamp}.",
)
@click.option("--events-url", default=None, help="Where Golioth console edits go as signed device events.")
@click.option("--events-secret", default=None, help="Standard Webhooks secret (whsec_...).")
def simulator_command(
    devices: int,
    seed: int,
    host: str,
    port: int,
    project_id: str,
    api_key: str,
    organization_id: str,
    extra_projects: int,
    fail_rate: float,
    unavailable_rate: float,
    rate_limit: int | None,
    rate_limit_share: float,
    retry_after: int,
    latency_ms: float,
    spike_ms: float,
    spike_probability: float,
    fault_seed: int | None,
    webhook_url: str | None,
    webhook_secret_header: str,
    webhook_secret: str | None,
    inject_metadata: bool,
    events_url: str | None,
    events_secret: str | None,
) -> None:
    """Run the Golioth API simulator in the foreground."""
    from .server import run

    if events_url and not events_secret:
        raise click.UsageError("--events-url needs --events-secret (whsec_...)")
    webhook = None
    if webhook_url:
        headers = {webhook_secret_header: webhook_secret} if webhook_secret else {}
        webhook = WebhookTarget(url=webhook_url, headers=headers, inject_metadata=inject_metadata)
    events = EventsTarget(url=events_url, secret=events_secret) if events_url and events_secret else None

    tenants = [(project_id, api_key)] + [(f"{project_id}-{i}", f"{api_key}-{i}") for i in range(1, extra_projects + 1)]
    projects = [
        ProjectSpec(
            pid, key, devices=devices, seed=seed, organization_id=organization_id, webhook=webhook, events=events
        )
        for pid, key in tenants
    ]
    faults = FaultConfig(
        error_rate=fail_rate,
        unavailable_rate=unavailable_rate,
        rate_limit_rps=rate_limit,
        rate_limit_share=rate_limit_share,
        retry_after_s=retry_after,
        latency_ms=latency_ms,
        spike_ms=spike_ms,
        spike_probability=spike_probability,
        seed=seed if fault_seed is None else fault_seed,
    )

    def announce(url: str) -> None:
        click.echo(f"Golioth simulator listening on {url}", err=True)
        for pid, key in tenants:
            click.echo(f"  project {pid}  x-api-key {key}  ({devices} devices)", err=True)
        click.echo(f"  control API: {url}/_sim/health", err=True)

    run(projects, faults, host, port, announce=announce)
