"""The web console over real HTTP (uvicorn in a thread), against real PostgreSQL and the simulator."""

from __future__ import annotations

import html
import json
import re
import socket
import threading
import time
import uuid

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from click.testing import CliRunner

from golioth_assets.console.app import create_app
from golioth_assets.store import services as service_store
from golioth_assets.store import webhook_events as inbox
from golioth_assets.webhooks.testing import make_webhook_service

TOKEN = "console-test-token-0123456789"


class ConsoleServer:
    def __init__(self, app) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "console did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)


@pytest.fixture
def console(engine, monkeypatch):
    monkeypatch.setenv("DAGSTER_UI_URL", "http://dagster.test:3000")
    server = ConsoleServer(create_app(engine))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser(console):
    with httpx.Client(base_url=console.url, follow_redirects=False, timeout=30) as client:
        yield client


@pytest.fixture
def guarded(engine):
    server = ConsoleServer(create_app(engine, token=TOKEN, loopback_only=False))
    try:
        yield server
    finally:
        server.stop()


def sign_in(client: httpx.Client) -> httpx.Response:
    login = client.get("/login")
    return client.post("/login", data={"csrf": csrf(login), "token": TOKEN})


@pytest.fixture
def operator(guarded):
    """A browser signed in to a console that has a token: the operator."""
    with httpx.Client(base_url=guarded.url, follow_redirects=False, timeout=30) as client:
        assert sign_in(client).status_code == 303
        yield client


def csrf(page: httpx.Response) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text).group(1)


def post(client: httpx.Client, path: str, form: dict | list, *, token_from: str) -> httpx.Response:
    """POST a form like a browser that just loaded `token_from` (the session's CSRF token is on it)."""
    page = client.get(token_from)
    assert page.status_code == 200, page.text
    data: dict[str, list[str]] = {"csrf": [csrf(page)]}
    for name, value in form.items() if isinstance(form, dict) else form:
        data.setdefault(name, []).append(value)
    return client.post(path, data=data, headers={"origin": str(client.base_url).rstrip("/")})


def flash(client: httpx.Client, response: httpx.Response) -> str:
    assert response.status_code == 303, response.text
    page = client.get(response.headers["location"])
    found = re.search(r'<p class="flash (?:ok|error)" role="status">(.*?)</p>', page.text, re.S)
    return html.unescape(found.group(1)) if found else ""


# -- pages ------------------------------------------------------------------------------------------


def test_status_page_shows_last_sync_next_due_counts_and_dagster_link(harness, browser):
    harness.sync()
    harness.make_conflict()
    with harness.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE golioth_sync_log SET dagster_run_id = 'abc-123' WHERE organization_id = :o"),
            {"o": harness.org},
        )
        started = conn.execute(
            sa.text("SELECT max(started_at) FROM golioth_sync_log WHERE organization_id = :o"), {"o": harness.org}
        ).scalar()
    page = browser.get("/")
    assert page.status_code == 200
    row = re.search(rf'<tr data-org="{harness.org}">(.*?)</tr>', page.text, re.S).group(1)
    assert "http://dagster.test:3000/runs/abc-123" in row
    due = started + __import__("datetime").timedelta(seconds=harness.service.interval_seconds)
    assert f"{due:%Y-%m-%d %H:%M:%S}" in row  # next due = last full sync start + interval
    assert re.search(r'class="pending"><a href="/conflicts\?org=[^"]+">1</a>', row)
    assert "<td>20</td>" in row  # devices
    assert "success" in row


def test_conflict_queue_shows_values_side_by_side(harness, browser):
    cid, _, _ = harness.make_conflict()
    page = browser.get("/conflicts", params={"org": harness.org})
    assert page.status_code == 200
    card = re.search(rf'<article class="conflict" id="conflict-{cid}".*?</article>', page.text, re.S).group(0)
    base = harness.conflict(cid)["base_value"]
    sides = re.findall(r'<div class="side (\w+)"><h3>.*?</h3><pre>(.*?)</pre></div>', card, re.S)
    assert [(s, html.unescape(v)) for s, v in sides] == [
        ("base", json.dumps(base)),
        ("local", '"local-name"'),
        ("remote", '"remote-name"'),
    ]
    for button in ("Use local", "Use Golioth", "Use this value"):
        assert button in card
    assert browser.get(f"/conflicts/{cid}").status_code == 200
    assert browser.get("/conflicts/987654321").status_code == 404
    assert browser.get("/conflicts", params={"org": "nobody-here"}).status_code == 404


@pytest.mark.parametrize(
    ("form", "chosen"), [({"use": "remote"}, "remote-name"), ({"use": "value", "value": '"typed-in"'}, "typed-in")]
)
def test_resolve_through_the_console_is_applied_by_the_next_sync(harness, browser, form, chosen):
    cid, device_id, gid = harness.make_conflict()
    other, _, _ = harness.make_conflict(1, "l2", "r2")
    back = f"/conflicts?org={harness.org}"
    response = post(browser, f"/conflicts/{cid}/resolve", {**form, "by": "carol", "back": back}, token_from=back)
    message = flash(browser, response)
    assert f"conflict {cid} resolved" in message and "by carol" in message
    assert response.headers["location"] == back
    assert harness.conflict(cid)["status"] == "resolved"

    harness.sync()
    assert harness.local().loc[device_id, "name"] == chosen
    assert harness.remote()[gid]["name"] == chosen
    row = harness.conflict(cid)
    assert (row["status"], row["resolved_by"]) == ("applied", "carol")
    assert "carol" in harness.changed_by(device_id)
    # The name is remembered for the next form.
    assert 'name="by" value="carol"' in browser.get(f"/conflicts/{other}").text


def test_console_refusals_change_nothing(harness, browser):
    cid, _, _ = harness.make_conflict()
    page = f"/conflicts/{cid}"
    bad_json = flash(
        browser,
        post(browser, f"/conflicts/{cid}/resolve", {"use": "value", "value": "{nope", "by": "x"}, token_from=page),
    )
    assert "the value is not valid JSON" in bad_json
    nobody = flash(browser, post(browser, f"/conflicts/{cid}/resolve", {"use": "local", "by": ""}, token_from=page))
    assert "say who decides" in nobody
    for elsewhere in ("//evil.example/", "/\\evil.example", "https://evil.example/"):
        bounced = post(
            browser,
            f"/conflicts/{cid}/resolve",
            {"use": "sideways", "by": "Ada Lovelace", "back": elsewhere},
            token_from=page,
        )
        assert bounced.headers["location"] == f"/conflicts/{cid}"  # never an open redirect
        assert "choose local, remote or value" in flash(browser, bounced)
    assert 'name="by" value="Ada Lovelace"' in browser.get(page).text
    assert harness.conflict(cid)["status"] == "pending"
    # Two operators had the page open; the first one's click wins, the second is told.
    with httpx.Client(base_url=browser.base_url) as second:
        token = csrf(second.get(page))  # the second operator's page, still showing the buttons
        assert "resolved" in flash(
            browser, post(browser, f"/conflicts/{cid}/resolve", {"use": "local", "by": "a"}, token_from=page)
        )
        late = second.post(f"/conflicts/{cid}/resolve", data={"csrf": token, "use": "remote", "by": "b"})
        again = flash(second, late)
    assert again == f"conflict {cid} is already resolved (local, by a); the next sync applies it; nothing changed"
    assert harness.conflict(cid)["resolved_by"] == "a"


def test_posts_need_the_session_csrf_token_and_same_origin(harness, browser, console):
    cid, _, _ = harness.make_conflict()
    page = browser.get(f"/conflicts/{cid}")
    token = csrf(page)
    # No token, a wrong token, another session's token, a cross-site origin: all refused.
    assert browser.post(f"/conflicts/{cid}/resolve", data={"use": "local", "by": "eve"}).status_code == 403
    assert (
        browser.post(f"/conflicts/{cid}/resolve", data={"csrf": "0" * 64, "use": "local", "by": "eve"}).status_code
        == 403
    )
    with httpx.Client(base_url=console.url) as stranger:
        assert (
            stranger.post(f"/conflicts/{cid}/resolve", data={"csrf": token, "use": "local", "by": "eve"}).status_code
            == 403
        )
    evil = browser.post(
        f"/conflicts/{cid}/resolve",
        data={"csrf": token, "use": "local", "by": "eve"},
        headers={"origin": "http://evil.example"},
    )
    assert evil.status_code == 403
    cross_site = browser.post(
        f"/conflicts/{cid}/resolve",
        data={"csrf": token, "use": "local", "by": "eve"},
        headers={"sec-fetch-site": "cross-site"},
    )
    assert cross_site.status_code == 403
    assert harness.conflict(cid)["status"] == "pending"
    # DNS rebinding: a loopback console answers loopback host names only.
    assert browser.get("/", headers={"host": "evil.example"}).status_code == 421
    headers = browser.get("/").headers
    assert (
        "script-src" not in headers["content-security-policy"]
        and "default-src 'none'" in headers["content-security-policy"]
    )
    assert headers["x-frame-options"] == "DENY"


def test_services_page_edits_with_the_cli_validation(harness, operator):
    browser = operator
    sid = harness.service.id
    page = browser.get(f"/services/{sid}")
    assert page.status_code == 200 and harness.service.api_key_env in page.text
    form = {
        "name": harness.service.name,
        "project_id": harness.service.project_id,
        "base_url": harness.service.base_url,
        "golioth_organization_id": harness.service.golioth_organization_id or "",
        "api_key_env": harness.service.api_key_env,
        "sync_enabled": "on",
        "interval_seconds": "45",
        "direction": "bidirectional",
        "conflict_policy": "manual",
        "desired_state_path": "desired",
        "webhook_secret_header": "x-golioth-sync-secret",
    }
    groups = [("field_groups", g) for g in harness.service.field_groups]
    refused = post(browser, f"/services/{sid}", [*form.items(), *groups], token_from=f"/services/{sid}")
    assert refused.status_code == 400
    assert "interval_seconds: Input should be greater than or equal to 60" in html.unescape(refused.text)

    secret = "Xq7Lr2Vb9Nc4Zt6Mw1Kp8Hs3Jd5Fg0Ya"
    leaked = post(
        browser,
        f"/services/{sid}",
        [*{**form, "interval_seconds": "300", "api_key_env": secret}.items(), *groups],
        token_from=f"/services/{sid}",
    )
    assert leaked.status_code == 400 and "NAME of an environment variable" in leaked.text
    assert secret not in leaked.text  # neither in the message nor refilled into the form
    named = post(
        browser,
        f"/services/{sid}",
        [*{**form, "interval_seconds": "300", "api_key_env": "GOLIOTH_SYNC_CONSOLE_TOKEN"}.items(), *groups],
        token_from=f"/services/{sid}",
    )
    assert named.status_code == 400 and "golioth-sync's own settings" in html.unescape(named.text)
    with harness.engine.connect() as conn:
        assert service_store.get_service(conn, sid).interval_seconds == harness.service.interval_seconds

    ok = post(
        browser,
        f"/services/{sid}",
        [
            *{
                **form,
                "interval_seconds": "900",
                "conflict_policy": "remote_wins",
                "override_tags": "local_wins",
            }.items(),
            ("field_groups", "identity"),
            ("field_groups", "tags"),
        ],
        token_from=f"/services/{sid}",
    )
    assert "the next run uses the new settings" in flash(browser, ok)
    with harness.engine.connect() as conn:
        saved = service_store.get_service(conn, sid)
    assert (saved.interval_seconds, saved.conflict_policy, saved.policy_overrides) == (
        900,
        "remote_wins",
        {"tags": "local_wins"},
    )
    assert saved.field_groups == ["identity", "tags"]

    tested = post(browser, f"/services/{sid}/test", {}, token_from=f"/services/{sid}")
    assert tested.status_code == 200 and "Connection test: passed" in tested.text
    assert f"Devices in Golioth: <strong>{harness.project.devices}</strong>" in tested.text


def test_add_a_service_from_the_console(engine, operator, sim_project, monkeypatch):
    browser = operator
    monkeypatch.setenv("GOLIOTH_CONSOLE_ADD_KEY", sim_project.api_key)
    org = f"web-{uuid.uuid4().hex[:8]}"
    form = {
        "organization_id": org,
        "name": "Web fleet",
        "project_id": sim_project.project_id,
        "base_url": sim_project.url,
        "api_key_env": "GOLIOTH_CONSOLE_ADD_KEY",
        "sync_enabled": "on",
        "interval_seconds": "300",
        "direction": "import",
        "conflict_policy": "manual",
        "desired_state_path": "desired",
        "webhook_secret_header": "x-golioth-sync-secret",
    }
    response = post(browser, "/services/new", [*form.items(), ("field_groups", "identity")], token_from="/services/new")
    assert "added service" in flash(browser, response)
    with engine.connect() as conn:
        added = service_store.service_for_org(conn, org)
    assert (added.direction, added.field_groups, added.api_key_env) == (
        "import",
        ["identity"],
        "GOLIOTH_CONSOLE_ADD_KEY",
    )
    assert org in browser.get("/services").text


def test_history_pages_show_the_device_audit_trail(harness, browser):
    cid, device_id, gid = harness.make_conflict()
    with harness.engine.begin() as conn:
        from golioth_assets.store import conflicts as conflict_store

        conflict_store.resolve(conn, cid, use="remote", resolved_by="frank")
    harness.sync()
    runs = browser.get("/history", params={"org": harness.org})
    assert runs.status_code == 200 and runs.text.count('<span class="badge success">') >= 3
    for ref in (device_id, gid):
        page = browser.get(f"/history/{harness.org}/device", params={"device": ref})
        assert page.status_code == 200
        rows = re.findall(r"<tr>(.*?)</tr>", page.text, re.S)
        change = next(r for r in rows if "&#34;local-name&#34;" in r and "&#34;remote-name&#34;" in r)
        assert "frank" in change and "local (database)" in change and "<code>name</code>" in change
    missing = browser.get(f"/history/{harness.org}/device", params={"device": "nope"})
    assert missing.status_code == 303 and "no device" in flash(browser, missing)
    with harness.engine.connect() as conn:
        last = conn.execute(
            sa.text("SELECT max(id) FROM golioth_sync_log WHERE organization_id = :o"), {"o": harness.org}
        ).scalar()
    run_page = browser.get(f"/history/{harness.org}/runs/{last}")
    assert run_page.status_code == 200 and "frank" in run_page.text
    assert browser.get(f"/history/{harness.org}/runs/999999999").status_code == 404


def test_webhook_inbox_shows_dead_letters_and_replays_them(engine, org, browser):
    service = make_webhook_service(engine, org, signing_key_env="GOLIOTH_CONSOLE_WEBHOOK_SECRET")
    events = [
        inbox.NewEvent(
            service,
            org,
            f"console-{i}-{uuid.uuid4().hex[:6]}",
            "signed",
            "device.updated",
            f"dev-{i}",
            json.dumps({"i": i}),
        )
        for i in range(2)
    ]
    with engine.begin() as conn:
        inbox.store_events(conn, events)
        inbox.claim_pending(conn, limit=2, claimed_by=f"{org}/run", organization_id=org)
        inbox.release_failed(conn, f"{org}/run", "golioth unreachable", max_attempts=1)
        dead = sorted(e.id for e in inbox.list_events(conn, status="dead", organization_id=org))
    page = browser.get("/webhooks", params={"org": org, "status": "dead"})
    assert page.status_code == 200 and "golioth unreachable" in page.text and "dead (2)" in page.text
    assert all(f'data-event="{i}"' in page.text for i in dead)

    one = post(browser, "/webhooks/replay", {"id": str(dead[0]), "org": org}, token_from=f"/webhooks?org={org}")
    assert flash(browser, one) == "requeued 1 dead event(s) as pending"
    rest = post(browser, "/webhooks/replay", {"org": org}, token_from=f"/webhooks?org={org}")
    assert flash(browser, rest) == "requeued 1 dead event(s) as pending"
    with engine.connect() as conn:
        assert {k: v for k, v in inbox.count_by_status(conn, org).items() if v} == {"pending": 2}


# -- access -------------------------------------------------------------------------------------------


def test_token_is_required_on_every_request(guarded):
    with httpx.Client(base_url=guarded.url) as anonymous:
        assert anonymous.get("/").status_code == 401
        assert anonymous.get("/conflicts").status_code == 401
        assert anonymous.get("/static/console.css").status_code == 401
        assert anonymous.get("/", headers={"accept": "text/html"}).headers["location"] == "/login"
        assert anonymous.get("/", headers={"authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
        assert anonymous.get("/", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
        # Any Host is fine here: the token is the guard.
        assert (
            anonymous.get("/", headers={"authorization": f"Bearer {TOKEN}", "host": "console.example"}).status_code
            == 200
        )

    with httpx.Client(base_url=guarded.url) as person:
        login = person.get("/login")
        wrong = person.post("/login", data={"csrf": csrf(login), "token": "nope"})
        assert wrong.status_code == 401 and person.get("/").status_code == 401
        right = person.post("/login", data={"csrf": csrf(login), "token": TOKEN})
        assert right.status_code == 303
        assert TOKEN not in right.headers.get("set-cookie", "")
        assert person.get("/").status_code == 200


def test_console_command_refuses_other_addresses_without_a_token(db_env, monkeypatch):
    from golioth_assets.cli.main import cli

    monkeypatch.delenv("GOLIOTH_SYNC_CONSOLE_TOKEN", raising=False)
    refused = CliRunner().invoke(cli, ["console", "--host", "0.0.0.0"])
    assert refused.exit_code == 1
    assert "refusing to serve the console on 0.0.0.0: set GOLIOTH_SYNC_CONSOLE_TOKEN" in refused.output
    monkeypatch.setenv("GOLIOTH_SYNC_CONSOLE_TOKEN", "short")
    weak = CliRunner().invoke(cli, ["console", "--host", "0.0.0.0"])
    assert weak.exit_code == 1 and "too short" in weak.output
