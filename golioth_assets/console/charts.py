"""The console's Charts page: sync duration and changes, pending conflicts and webhook traffic over
time, for the whole fleet or one organization, as server-rendered SVG (console/svg.py). The
numbers come from our own tables through store/metrics.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pandas as pd
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from golioth_assets.actions import services as service_actions
from golioth_assets.console.svg import Series, time_chart
from golioth_assets.store import metrics
from golioth_assets.store.webhook_events import STATUSES as EVENT_STATUSES

LOCAL, GOLIOTH = "#3b6fd6", "#e0892b"
# Stacked in this order: what went well at the bottom, what needs a look on top.
EVENT_COLORS = {
    "processed": "#1a7f37",
    "claimed": "#6e7781",
    "pending": "#d4a72c",
    "failed": "#e16f24",
    "dead": "#c62828",
}


@dataclass(frozen=True)
class Window:
    label: str
    span: timedelta
    bucket: timedelta

    @property
    def bucket_text(self) -> str:
        minutes = int(self.bucket.total_seconds() // 60)
        return f"{minutes}-minute" if minutes < 60 else f"{minutes // 60}-hour"


WINDOWS = {
    w.label: w
    for w in (
        Window("1h", timedelta(hours=1), timedelta(minutes=1)),
        Window("6h", timedelta(hours=6), timedelta(minutes=5)),
        Window("24h", timedelta(hours=24), timedelta(minutes=15)),
        Window("7d", timedelta(days=7), timedelta(hours=2)),
    )
}
DEFAULT_WINDOW = "6h"


def _points(frame: pd.DataFrame, column: str, *, at: str = "bucket", scale: float = 1.0) -> list[tuple]:
    if column not in frame:
        return []
    return [(t.to_pydatetime(), float(v) * scale) for t, v in zip(pd.to_datetime(frame[at], utc=True), frame[column])]


def duration_chart(runs: pd.DataFrame, start: datetime, end: datetime, window: Window) -> dict:
    series = [
        Series("median", LOCAL, _points(runs, "median_seconds"), dots=False),
        Series("slowest", "#b3261e", _points(runs, "max_seconds"), line=False),
    ]
    count = int(runs["runs"].sum()) if not runs.empty else 0
    summary = (
        f"{count} sync(s); median of medians {runs['median_seconds'].median():.1f} s, "
        f"slowest {runs['max_seconds'].max():.1f} s"
        if count
        else "no finished sync in this window"
    )
    svg = time_chart(
        chart_id="chart-duration",
        title="Sync duration",
        unit="seconds",
        start=start,
        end=end,
        series=series,
        kind="line",
    )
    return {
        "title": "Sync duration",
        "note": f"per {window.bucket_text} bucket; dry runs left out",
        "svg": svg,
        "summary": summary,
    }


def changes_chart(runs: pd.DataFrame, start: datetime, end: datetime, window: Window) -> dict:
    series = [
        Series("local (database)", LOCAL, _points(runs, "local_changes")),
        Series("Golioth", GOLIOTH, _points(runs, "remote_changes")),
    ]
    local = int(runs["local_changes"].sum()) if not runs.empty else 0
    remote = int(runs["remote_changes"].sum()) if not runs.empty else 0
    svg = time_chart(
        chart_id="chart-changes",
        title="Changes written by syncs",
        unit="devices changed",
        start=start,
        end=end,
        series=series,
        kind="bars",
        bucket=window.bucket,
        whole=True,
    )
    return {
        "title": "Changes written by syncs",
        "note": f"creates, updates and deletes summed per {window.bucket_text} bucket",
        "svg": svg,
        "summary": f"{local + remote} change(s): {local} local, {remote} in Golioth",
    }


def conflicts_chart(pending: pd.DataFrame, start: datetime, end: datetime) -> dict:
    series = [Series("pending conflicts", "#8250df", _points(pending, "pending", at="at"), dots=False)]
    now = int(pending["pending"].iloc[-1]) if not pending.empty else 0
    svg = time_chart(
        chart_id="chart-conflicts",
        title="Pending conflicts",
        unit="conflicts",
        start=start,
        end=end,
        series=series,
        kind="step",
        whole=True,
    )
    return {
        "title": "Pending conflicts",
        "note": "waiting for an operator's decision",
        "svg": svg,
        "summary": f"{now} pending now",
    }


def webhooks_chart(events: pd.DataFrame, start: datetime, end: datetime, window: Window) -> dict:
    per_minute = 60 / window.bucket.total_seconds()
    statuses = [s for s in dict.fromkeys([*EVENT_COLORS, *EVENT_STATUSES]) if s in events]
    series = [Series(s, EVENT_COLORS.get(s, "#6e7781"), _points(events, s, scale=per_minute)) for s in statuses]
    total = int(sum(events[s].sum() for s in statuses))
    svg = time_chart(
        chart_id="chart-webhooks",
        title="Webhook events per minute",
        unit="events per minute",
        start=start,
        end=end,
        series=series or [Series("processed", EVENT_COLORS["processed"])],
        kind="bars",
        bucket=window.bucket,
    )
    minutes = window.span.total_seconds() / 60
    return {
        "title": "Webhook events per minute, by status",
        "note": f"averaged over {window.bucket_text} buckets; status as it is now",
        "svg": svg,
        "summary": f"{total} event(s) received, {total / minutes:.1f} per minute on average",
    }


class ChartPages:
    """GET /charts?org=ORG&window=6h (no org: the whole fleet)."""

    def __init__(self, console) -> None:
        self.console = console

    async def page(self, request: Request) -> Response:
        org = request.query_params.get("org") or None
        window = WINDOWS.get(request.query_params.get("window") or DEFAULT_WINDOW)
        if window is None:
            raise HTTPException(400, f"window must be one of {', '.join(WINDOWS)}")
        services = await self.console.call(service_actions.list_services, self.console.engine)
        orgs = [s.organization_id for s in services]
        if org is not None and org not in orgs:
            raise HTTPException(404, f"no service for organization {org!r}")
        charts, summary = await self.console.call(self.charts, org, window)
        context = {"page": "charts", "org": org, "orgs": orgs, "window": window.label, "windows": list(WINDOWS)}
        return self.console.render(request, "charts.html", {**context, "charts": charts, "summary": summary})

    def charts(self, org: str | None, window: Window) -> tuple[list[dict], list[dict]]:
        """The four charts, and for the fleet view one summary row per organization."""
        end = datetime.now(UTC)
        start = end - window.span
        with self.console.engine.connect() as conn:
            runs = metrics.sync_runs(conn, org, start, window.bucket)
            pending = metrics.pending_conflicts(conn, org, start, window.bucket)
            events = metrics.webhook_events(conn, org, start, window.bucket)
            summary = metrics.organization_summary(conn, start) if org is None else []
        charts = [
            duration_chart(runs, start, end, window),
            changes_chart(runs, start, end, window),
            conflicts_chart(pending, start, end),
            webhooks_chart(events, start, end, window),
        ]
        return charts, summary
