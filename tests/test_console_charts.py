"""The console's charts (/charts): server-rendered SVG of sync duration and changes, pending
conflicts and webhook traffic, per organization and for the fleet.

Six hours of history are written to PostgreSQL with known numbers (sync runs every ten minutes,
conflicts detected and resolved at known times, webhook events per minute by status); the page is
fetched over real HTTP, and every mark's data-value is compared with what was written. The
browser test loads both views in headless Chromium under the console's strict CSP and writes the
screenshots the docs show (docs/screenshots/console-charts-*.png).
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa

from golioth_assets.console.app import create_app
from golioth_assets.console.charts import WINDOWS
from golioth_assets.webhooks.testing import make_webhook_service
from tests.test_console import ConsoleServer
from tests.test_console_browser import chromium, shots  # noqa: F401 - fixtures

MARK = re.compile(r'<(?:circle|rect) class="mark"[^>]*data-series="([^"]+)" data-at="([^"]+)" data-value="([^"]+)"')


@dataclass
class History:
    organization_id: str
    durations: list[float] = field(default_factory=list)
    local_changes: int = 0
    remote_changes: int = 0
    pending_now: int = 0
    events: dict[str, int] = field(default_factory=dict)


def write_history(engine, org: str, *, seed: int, scale: int = 1) -> History:
    """Six hours of an organization's life, ending now: what the charts must show."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    service_id = make_webhook_service(engine, org, signing_key_env="GOLIOTH_CHART_TEST_SECRET", project_id=f"p-{org}")
    history = History(org)
    runs, conflicts, events = [], [], []
    for i in range(36):  # a full sync every 10 minutes; the first one imports the fleet
        started = now - timedelta(minutes=355 - 10 * i)
        seconds = round(2.5 + rng.random() * 3 + (9 if i == 20 else 0), 2)  # one slow run
        created = 400 * scale if i == 0 else 0
        updated, pushed = rng.randrange(0, 12) * scale, rng.randrange(0, 5) * scale
        runs.append((started, seconds, created, updated, pushed, "failed" if i == 27 else "success"))
        history.durations.append(seconds)
        history.local_changes += created + updated
        history.remote_changes += pushed
    for i in range(14):  # conflicts pile up, then an operator works through most of them
        detected = now - timedelta(minutes=300 - 12 * i)
        resolved = detected + timedelta(minutes=45 + 7 * i) if i < 10 else None
        resolved = resolved if resolved and resolved < now else None
        conflicts.append((detected, resolved))
        history.pending_now += resolved is None
    for minute in range(360):
        for _ in range(rng.randrange(2, 7) * scale):
            status = rng.choices(["processed", "failed", "dead", "pending"], [90, 4, 2, 4])[0]
            events.append((now - timedelta(minutes=359 - minute, seconds=rng.randrange(60)), status))
            history.events[status] = history.events.get(status, 0) + 1
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO golioth_sync_log (organization_id, service_id, trigger, direction, policy, started_at, "
                "finished_at, status, created_local, updated_local, updated_remote) "
                "VALUES (:org, :service, 'schedule', 'bidirectional', 'manual', :started, :finished, :status, "
                ":created, :updated, :pushed)"
            ),
            [
                {
                    "org": org,
                    "service": service_id,
                    "started": s,
                    "finished": s + timedelta(seconds=sec),
                    "status": st,
                    "created": c,
                    "updated": u,
                    "pushed": p,
                }
                for s, sec, c, u, p, st in runs
            ],
        )
        # A dry run writes nothing and is left out of the charts.
        conn.execute(
            sa.text(
                "INSERT INTO golioth_sync_log (organization_id, service_id, direction, policy, dry_run, started_at, "
                "finished_at, status, created_local) VALUES (:org, :service, 'bidirectional', 'manual', true, "
                "now() - interval '1 hour', now() - interval '59 minutes', 'success', 999)"
            ),
            {"org": org, "service": service_id},
        )
        conn.execute(
            sa.text(
                "INSERT INTO device_conflicts (organization_id, service_id, golioth_device_id, field, conflict_type, "
                "status, detected_at, resolved_at) VALUES (:org, :service, :device, 'name', 'field', :status, "
                ":detected, :resolved)"
            ),
            [
                {
                    "org": org,
                    "service": service_id,
                    "device": f"dev-{i}",
                    "status": "applied" if resolved else "pending",
                    "detected": detected,
                    "resolved": resolved,
                }
                for i, (detected, resolved) in enumerate(conflicts)
            ],
        )
        conn.execute(
            sa.text(
                "INSERT INTO webhook_events (service_id, organization_id, event_id, source, event_type, payload, "
                "received_at, status) VALUES (:service, :org, :event, 'golioth_pipeline', 'device.data', '{}', "
                ":received, :status)"
            ),
            [
                {"service": service_id, "org": org, "event": uuid.uuid4().hex, "received": at, "status": status}
                for at, status in events
            ],
        )
    return history


def marks(page: str, chart_id: str) -> list[tuple[str, datetime, float]]:
    svg = re.search(rf'<svg id="{chart_id}".*?</svg>', page, re.S)
    assert svg, f"no {chart_id} on the page"
    return [(s, datetime.fromisoformat(at), float(v)) for s, at, v in MARK.findall(svg.group(0))]


def total(found: list[tuple[str, datetime, float]], series: str) -> float:
    return sum(v for s, _, v in found if s == series)


@pytest.fixture
def console(engine, monkeypatch):
    monkeypatch.setenv("DAGSTER_UI_URL", "http://dagster.test:3000")
    server = ConsoleServer(create_app(engine))
    try:
        yield server
    finally:
        server.stop()


def _org() -> str:
    return f"charts-{uuid.uuid4().hex[:8]}"


def test_an_organizations_charts_show_the_numbers_in_its_tables(engine, console):
    history = write_history(engine, _org(), seed=7)
    page = httpx.get(f"{console.url}/charts", params={"org": history.organization_id, "window": "6h"}, timeout=30)
    assert page.status_code == 200, page.text
    assert "<script" not in page.text and "default-src 'none'" in page.headers["content-security-policy"]

    # One run per 5-minute bucket here, so the slowest of each bucket is that run.
    slowest = sorted(v for s, _, v in marks(page.text, "chart-duration") if s == "slowest")
    assert slowest == sorted(history.durations)
    changes = marks(page.text, "chart-changes")
    assert total(changes, "local (database)") == history.local_changes  # the dry run's 999 is left out
    assert total(changes, "Golioth") == history.remote_changes
    pending = marks(page.text, "chart-conflicts")
    assert max(pending, key=lambda m: m[1])[2] == history.pending_now
    assert max(v for _, _, v in pending) > history.pending_now  # it rose before operators caught up
    per_minute = 60 / WINDOWS["6h"].bucket.total_seconds()
    webhooks = marks(page.text, "chart-webhooks")
    for status, count in history.events.items():
        assert round(total(webhooks, status) / per_minute) == count, status
    summaries = re.findall(r'class="chart-summary">([^<]*)', page.text)
    assert f"{history.pending_now} pending now" in summaries


def test_the_fleet_view_adds_up_every_organization_and_bad_queries_are_refused(engine, console):
    first, second = write_history(engine, _org(), seed=1), write_history(engine, _org(), seed=2, scale=3)
    page = httpx.get(f"{console.url}/charts", params={"window": "6h"}, timeout=30)
    assert page.status_code == 200
    assert first.organization_id in page.text and second.organization_id in page.text  # the org picker
    with engine.connect() as conn:  # the whole fleet in the window, counted independently
        expected = conn.execute(
            sa.text(
                "SELECT sum(created_local + updated_local + deleted_local) FROM golioth_sync_log "
                "WHERE NOT dry_run AND finished_at IS NOT NULL AND started_at >= now() - interval '6 hours'"
            )
        ).scalar_one()
    fleet = total(marks(page.text, "chart-changes"), "local (database)")
    assert fleet == expected >= first.local_changes + second.local_changes
    for org in (first, second):  # and one row per organization under the charts
        row = re.search(rf'<tr data-org="{org.organization_id}">(.*?)</tr>', page.text, re.S).group(1)
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        assert cells[1] == "36" and cells[3] == f"{max(org.durations):.1f} s", cells
        assert cells[5] == f"{org.local_changes} / {org.remote_changes}" and cells[6] == str(org.pending_now)
        assert cells[7] == str(sum(org.events.values())) and cells[8] == str(org.events.get("dead", 0))

    assert httpx.get(f"{console.url}/charts", params={"window": "1y"}).status_code == 400
    assert httpx.get(f"{console.url}/charts", params={"org": "no-such-org"}).status_code == 404
    for window in WINDOWS:
        assert httpx.get(f"{console.url}/charts", params={"window": window}, timeout=30).status_code == 200


@pytest.mark.slow
@pytest.mark.browser
def test_charts_render_in_chromium_under_the_csp(engine, console, chromium, shots):  # noqa: F811
    acme = write_history(engine, f"acme-{uuid.uuid4().hex[:4]}", seed=11, scale=2)
    write_history(engine, _org(), seed=12)
    page = chromium.new_page(viewport={"width": 1440, "height": 900})
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    try:
        for view, path, shot in (
            ("fleet", "/charts?window=6h", "console-charts-fleet.png"),
            ("acme", f"/charts?org={acme.organization_id}&window=6h", "console-charts-org.png"),
        ):
            page.goto(f"{console.url}{path}")
            for chart in ("duration", "changes", "conflicts", "webhooks"):
                box = page.locator(f"svg#chart-{chart}").bounding_box()
                assert box and box["width"] > 500 and box["height"] > 180, (view, chart, box)
            assert page.locator("svg#chart-duration .mark").count() >= 36
            assert page.locator("nav#chart-orgs a[aria-current]").inner_text() == (
                "Fleet" if view == "fleet" else acme.organization_id
            )
            page.screenshot(path=str(shots / shot), full_page=True)
    finally:
        page.close()
    assert not problems, problems  # a CSP violation shows up as a console error
