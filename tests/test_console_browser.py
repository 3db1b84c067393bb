"""The console in a real browser: headless Debian Chromium driven by Python playwright resolves
conflicts by clicking, and the next sync applies them to both sides.

Needs /usr/bin/chromium (`apt-get install -y chromium`) and the `playwright` package; playwright's
own browser downloads are never used. Screenshots go to $GOLIOTH_SYNC_SCREENSHOT_DIR (the docs use
docs/screenshots/) or to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from golioth_assets.console.app import create_app
from golioth_assets.store import webhook_events as inbox
from tests.test_console import ConsoleServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def chromium():
    if not CHROMIUM.exists():
        pytest.skip("Debian's Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed (pip install playwright)"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("GOLIOTH_SYNC_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def console(engine, monkeypatch):
    monkeypatch.setenv("DAGSTER_UI_URL", "http://127.0.0.1:3000")
    server = ConsoleServer(create_app(engine))
    try:
        yield server
    finally:
        server.stop()


def _status(h, cid) -> dict:
    with h.engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT * FROM device_conflicts WHERE id = :i"), {"i": cid}).mappings().one())


def test_resolve_conflicts_by_clicking_then_sync_applies_them(make_harness, console, chromium, shots):
    h = make_harness(devices=12)
    use_golioth, d1, g1 = h.make_conflict(0, "porch-sensor-local", "porch-sensor-golioth")
    edited, d2, g2 = h.make_conflict(1, "garage-local", "garage-golioth")
    untouched, _, _ = h.make_conflict(2, "attic-local", "attic-golioth")

    page = chromium.new_page(viewport={"width": 1440, "height": 900})
    try:
        page.goto(f"{console.url}/")
        assert page.locator(f'tr[data-org="{h.org}"] td.pending').inner_text() == "3"
        page.screenshot(path=str(shots / "console-status.png"), full_page=True)

        page.goto(f"{console.url}/conflicts?org={h.org}")
        card = page.locator(f"#conflict-{use_golioth}")
        assert card.locator(".side.local pre").inner_text() == '"porch-sensor-local"'
        assert card.locator(".side.remote pre").inner_text() == '"porch-sensor-golioth"'
        page.screenshot(path=str(shots / "console-conflicts.png"), full_page=True)

        # "Use Golioth" on the first conflict.
        card.locator("input.by").first.fill("grace")
        card.locator("button.use-remote").click()
        page.wait_for_selector("p.flash.ok")
        assert f"conflict {use_golioth} resolved with Golioth's value by grace" in page.locator("p.flash").inner_text()

        # "Edit value" on the second: the name typed on the first form is remembered.
        card = page.locator(f"#conflict-{edited}")
        assert card.locator("form.edit-value input.by").input_value() == "grace"
        card.locator("textarea.value").fill('"garage-door-sensor"')
        card.locator("button.use-value").click()
        page.wait_for_selector("p.flash.ok")
        assert "resolved with an edited value by grace" in page.locator("p.flash").inner_text()
        page.screenshot(path=str(shots / "console-conflict-resolved.png"), full_page=True)

        # A malformed value is refused on the page and changes nothing.
        card = page.locator(f"#conflict-{untouched}")
        card.locator("textarea.value").fill("not json")
        card.locator("button.use-value").click()
        page.wait_for_selector("p.flash.error")
        assert "the value is not valid JSON" in page.locator("p.flash").inner_text()
        assert _status(h, untouched)["status"] == "pending"

        h.sync()
        assert (h.local().loc[d1, "name"], h.remote()[g1]["name"]) == ("porch-sensor-golioth", "porch-sensor-golioth")
        assert (h.local().loc[d2, "name"], h.remote()[g2]["name"]) == ("garage-door-sensor", "garage-door-sensor")
        assert {_status(h, c)["status"] for c in (use_golioth, edited)} == {"applied"}
        assert "grace" in h.changed_by(d1) and "grace" in h.changed_by(d2)

        # The audit trail in the console says who chose.
        page.goto(f"{console.url}/history?org={h.org}")
        page.fill("#device-lookup input[name=device]", "garage-door-sensor")
        page.click("#device-lookup button")
        page.wait_for_selector("#changes")
        rows = page.locator("#changes tbody tr")
        texts = [rows.nth(i).inner_text() for i in range(rows.count())]
        assert any("garage-door-sensor" in t and "grace" in t and "Golioth" in t for t in texts)
        assert any("garage-door-sensor" in t and "grace" in t and "local (database)" in t for t in texts)
        page.screenshot(path=str(shots / "console-device-history.png"), full_page=True)

        page.goto(f"{console.url}/services/{h.service.id}")
        page.click("#test")
        page.wait_for_selector("#test-report")
        assert "Devices in Golioth: 12" in page.locator("#test-report").inner_text()
        page.screenshot(path=str(shots / "console-service.png"), full_page=True)

        with h.engine.begin() as conn:
            inbox.store_events(
                conn,
                [
                    inbox.NewEvent(
                        h.service.id,
                        h.org,
                        f"shot-{i}-{uuid.uuid4().hex[:6]}",
                        "signed",
                        "device.updated",
                        g1,
                        json.dumps({"i": i}),
                    )
                    for i in range(2)
                ],
            )
            inbox.claim_pending(conn, limit=1, claimed_by=f"{h.org}/shot", organization_id=h.org)
            inbox.release_failed(conn, f"{h.org}/shot", "Golioth answered 503 five times", max_attempts=1)
        page.goto(f"{console.url}/webhooks?org={h.org}")
        page.screenshot(path=str(shots / "console-webhooks.png"), full_page=True)
        page.click("button.replay")
        page.wait_for_selector("p.flash.ok")
        assert "requeued 1 dead event(s)" in page.locator("p.flash").inner_text()
    finally:
        page.close()


def test_sign_in_and_sign_out_in_a_browser(engine, chromium):
    """With a token, the browser signs in through the form, sees "Sign out", and after pressing it
    is back at the login page: the session ended server-side, so reloading does not get back in."""
    from tests.test_console import TOKEN

    server = ConsoleServer(create_app(engine, token=TOKEN, loopback_only=False))
    page = chromium.new_page()
    try:
        page.goto(f"{server.url}/")
        assert page.url.endswith("/login")
        page.fill("input[name=token]", "not-the-token")
        page.click("button[type=submit]")
        assert "wrong token" in page.locator("p.flash.error").inner_text()
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_selector("#logout")
        assert "signed in" in page.locator("p.flash").inner_text()
        cookie = next(c for c in page.context.cookies() if c["name"] == "gs_console_auth")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] > 0
        page.click("#logout")
        page.wait_for_url(f"{server.url}/login")
        page.goto(f"{server.url}/services")
        assert page.url.endswith("/login")
        # Putting the old cookie back does not help: logout revoked the session.
        page.context.add_cookies([cookie])
        page.goto(f"{server.url}/services")
        assert page.url.endswith("/login")
    finally:
        page.close()
        server.stop()
