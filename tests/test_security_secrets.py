"""Issue 13, weaknesses 1, 4 (weak secrets) and 6: no setting can make golioth-sync send a secret of
its own process somewhere, and no refused value is repeated back.

The attack of weakness 1: through a console on loopback (no token), point a service at a listener
and at a variable such as GOLIOTH_SYNC_CONSOLE_TOKEN, then press "Test the connection". Each test
here crosses a real boundary: HTTP to the console, the CLI through click, a listener on a socket,
and PostgreSQL.
"""

from __future__ import annotations

import base64
import html
import http.server
import os
import threading
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from golioth_assets.actions import InvalidInput
from golioth_assets.actions import services as actions
from golioth_assets.cli.main import cli
from golioth_assets.console.app import create_app
from golioth_assets.store import services as store
from tests.test_console import TOKEN, ConsoleServer, post, sign_in

CONSOLE_TOKEN_VALUE = "the-console-token-must-never-leave-0123456789"
SIGNING_KEY = "whsec_" + base64.b64encode(b"a-signing-key-of-32-random-bytes").decode()
OTHER_TENANT_KEY = "another-tenants-key-must-never-leave-0123456789"
# What a local attacker would like to read out of the process, and two names that are not secrets.
FORBIDDEN_NAMES = [
    "GOLIOTH_SYNC_CONSOLE_TOKEN",
    "DATABASE_URL",
    "DAGSTER_DATABASE_URL",
    "GOLIOTH_SYNC_DAGSTER_PG_URL",
    "GOLIOTH_DATABASE_URL",
    "HOME",
    "PATH",
    "golioth_lower_case",
]


class Listener:
    """An HTTP server on loopback that records every request's headers: where a leak would land."""

    def __init__(self) -> None:
        seen: list[dict[str, str]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                seen.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"list": [], "total": 0, "page": 0, "perPage": 1}')

            def log_message(self, *args) -> None:
                pass

        self.requests = seen
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def leaked(self, *values: str) -> bool:
        return any(value in header for request in self.requests for header in request.values() for value in values)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    found = Listener()
    try:
        yield found
    finally:
        found.stop()


@pytest.fixture
def secrets_in_process(monkeypatch) -> None:
    monkeypatch.setenv("GOLIOTH_SYNC_CONSOLE_TOKEN", CONSOLE_TOKEN_VALUE)
    monkeypatch.setenv("GOLIOTH_OTHER_TENANT_KEY", OTHER_TENANT_KEY)


@pytest.fixture
def open_console(engine) -> Iterator[ConsoleServer]:
    """The console as `golioth-sync console` serves it on loopback without a token."""
    server = ConsoleServer(create_app(engine))
    try:
        yield server
    finally:
        server.stop()


def _form(service: store.Service, **changes: str) -> list[tuple[str, str]]:
    values = {
        "name": service.name,
        "project_id": service.project_id,
        "base_url": service.base_url,
        "golioth_organization_id": service.golioth_organization_id or "",
        "api_key_env": service.api_key_env,
        "sync_enabled": "on",
        "interval_seconds": str(service.interval_seconds),
        "direction": service.direction,
        "conflict_policy": service.conflict_policy,
        "desired_state_path": service.desired_state_path,
        "webhook_secret_header": service.webhook_secret_header,
        **changes,
    }
    return [*values.items(), *(("field_groups", g) for g in service.field_groups)]


def _stored(engine, service_id: int) -> store.Service:
    with engine.connect() as conn:
        return store.get_service(conn, service_id)


def run(*args: str):
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "250"})


# -- 1. the console attack -------------------------------------------------------------------------------


def test_a_local_user_cannot_send_a_secret_of_the_console_anywhere(harness, open_console, listener, secrets_in_process):
    import httpx

    sid = harness.service.id
    page = f"/services/{sid}"
    with httpx.Client(base_url=open_console.url, follow_redirects=False, timeout=30) as browser:
        for variable in ("GOLIOTH_SYNC_CONSOLE_TOKEN", "GOLIOTH_OTHER_TENANT_KEY", "DATABASE_URL"):
            attempt = post(
                browser, page, _form(harness.service, base_url=listener.url, api_key_env=variable), token_from=page
            )
            assert attempt.status_code == 403, attempt.text
            assert "needs the operator" in html.unescape(attempt.text)
        # Either half alone is refused too: the URL, or the variable.
        only_url = post(browser, page, _form(harness.service, base_url=listener.url), token_from=page)
        only_name = post(browser, page, _form(harness.service, api_key_env="GOLIOTH_OTHER_TENANT_KEY"), token_from=page)
        assert (only_url.status_code, only_name.status_code) == (403, 403)
        # Settings that send nothing anywhere are still the console's to change.
        interval = post(browser, page, _form(harness.service, interval_seconds="900"), token_from=page)
        assert interval.status_code == 303
        tested = post(browser, f"{page}/test", {}, token_from=page)
        assert tested.status_code == 200 and "Connection test: passed" in tested.text
        # Adding a service is the operator's too: it names a URL and a variable.
        added = post(browser, "/services/new", _form(harness.service, organization_id="evil"), token_from=page)
        assert added.status_code == 403
    stored = _stored(harness.engine, sid)
    assert (stored.base_url, stored.api_key_env, stored.interval_seconds) == (
        harness.service.base_url,
        harness.service.api_key_env,
        900,
    )
    assert listener.requests == []


def test_the_operator_may_change_the_connection_but_only_to_allowed_names_and_urls(
    harness, guarded, listener, secrets_in_process
):
    import httpx

    sid = harness.service.id
    page = f"/services/{sid}"
    with httpx.Client(base_url=guarded.url, follow_redirects=False, timeout=30) as operator:
        assert sign_in(operator).status_code == 303
        for name in FORBIDDEN_NAMES:
            refused = post(operator, page, _form(harness.service, api_key_env=name), token_from=page)
            assert refused.status_code == 400, (name, refused.text)
        plain_http = post(operator, page, _form(harness.service, base_url="http://golioth.example"), token_from=page)
        assert plain_http.status_code == 400 and "https://" in html.unescape(plain_http.text)
        moved = post(
            operator,
            page,
            _form(harness.service, base_url=listener.url, api_key_env="GOLIOTH_OTHER_TENANT_KEY"),
            token_from=page,
        )
        assert moved.status_code == 303  # the operator's own decision, with an allowed name
    assert listener.requests == []
    assert _stored(harness.engine, sid).api_key_env == "GOLIOTH_OTHER_TENANT_KEY"


@pytest.fixture
def guarded(engine) -> Iterator[ConsoleServer]:
    server = ConsoleServer(create_app(engine, token=TOKEN, loopback_only=False))
    try:
        yield server
    finally:
        server.stop()


# -- the same rules through the API and the CLI ------------------------------------------------------------


@pytest.mark.parametrize("name", FORBIDDEN_NAMES)
def test_the_api_and_the_cli_refuse_names_outside_the_allow_list(
    db_env, harness, name, secrets_in_process, monkeypatch
):
    if name not in os.environ:
        monkeypatch.setenv(name, "set, so only the allow-list can refuse it")
    with pytest.raises(InvalidInput):
        actions.update_service(harness.engine, harness.service.id, {"api_key_env": name})
    with pytest.raises(InvalidInput):
        actions.update_service(
            harness.engine, harness.service.id, {"webhook_enabled": True, "webhook_secret_env": name}
        )
    result = run("services", "update", harness.org, "--api-key-env", name)
    assert result.exit_code == 1 and result.output.startswith("Error: ")
    assert _stored(harness.engine, harness.service.id).api_key_env == harness.service.api_key_env


@pytest.mark.parametrize(
    ("url", "allowed", "accepted"),
    [
        ("https://api.golioth.io", False, True),
        ("https://golioth.example:8443/base", False, True),
        ("http://127.0.0.1:9", True, True),
        ("http://localhost:9", True, True),
        ("http://[::1]:9", True, True),
        ("http://127.0.0.1:9", False, False),  # loopback http needs the explicit allowance
        ("http://golioth.example", True, False),  # and never leaves loopback
        ("http://10.0.0.1", True, False),
        ("https://user:password@golioth.example", False, False),
        ("ftp://golioth.example", True, False),
        ("https://", False, False),
    ],
)
def test_the_base_url_is_https_or_an_allowed_loopback(monkeypatch, url, allowed, accepted):
    from golioth_assets import credentials

    if allowed:
        monkeypatch.setenv(credentials.ALLOW_LOOPBACK_HTTP_ENV, "1")
    else:
        monkeypatch.delenv(credentials.ALLOW_LOOPBACK_HTTP_ENV, raising=False)
    settings = {"organization_id": "acme", "name": "n", "project_id": "p", "base_url": url}
    if accepted:
        assert store.ServiceSettings(**settings).base_url == url.rstrip("/")
    else:
        with pytest.raises(ValueError, match="base_url"):
            store.ServiceSettings(**settings)


def test_a_row_written_under_older_rules_never_hands_out_its_secret(harness, listener, secrets_in_process):
    """A service stored before these rules (or written by hand) loads, but its key is not read from
    a forbidden variable, nor sent to a plain-http URL: checked where the secret is read."""
    with harness.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE device_services SET api_key_env = 'GOLIOTH_SYNC_CONSOLE_TOKEN', base_url = :u WHERE id = :i"
            ),
            {"u": listener.url, "i": harness.service.id},
        )
    report = actions.check_connection(harness.engine, harness.service.id)
    assert not report.ok and "golioth-sync's own settings" in report.checks[0].detail
    with harness.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE device_services SET api_key_env = :k, base_url = 'http://golioth.example' WHERE id = :i"),
            {"k": harness.service.api_key_env, "i": harness.service.id},
        )
    report = actions.check_connection(harness.engine, harness.service.id)
    assert not report.ok and "will not send its API key" in report.checks[0].detail
    assert listener.requests == [] and not listener.leaked(CONSOLE_TOKEN_VALUE, harness.project.api_key)


# -- the operator's secrets folder ---------------------------------------------------------------------------


def test_secrets_are_read_from_an_owner_only_file_in_the_secrets_folder(tmp_path, monkeypatch):
    from golioth_assets import credentials

    monkeypatch.setenv("GOLIOTH_SYNC_HOME", str(tmp_path))
    monkeypatch.delenv("GOLIOTH_FILE_KEY", raising=False)
    folder = tmp_path / "secrets"
    folder.mkdir(mode=0o700)
    secret_file = folder / "GOLIOTH_FILE_KEY"
    secret_file.write_text("key-from-a-file\n")
    secret_file.chmod(0o600)
    assert credentials.read_secret("GOLIOTH_FILE_KEY") == "key-from-a-file"
    assert actions.check_env_reference("api_key_env", "GOLIOTH_FILE_KEY") == "GOLIOTH_FILE_KEY"
    monkeypatch.setenv("GOLIOTH_FILE_KEY", "key-from-the-environment")
    assert credentials.read_secret("GOLIOTH_FILE_KEY") == "key-from-the-environment"  # the environment wins
    monkeypatch.delenv("GOLIOTH_FILE_KEY")

    secret_file.chmod(0o640)  # readable by the group: someone else may know it
    with pytest.raises(credentials.SecretRefused, match="chmod 600"):
        credentials.read_secret("GOLIOTH_FILE_KEY")
    with pytest.raises(InvalidInput, match="chmod 600"):
        actions.check_env_reference("api_key_env", "GOLIOTH_FILE_KEY")
    secret_file.chmod(0o600)
    folder.chmod(0o777)  # anyone may replace the file
    with pytest.raises(credentials.SecretRefused):
        credentials.read_secret("GOLIOTH_FILE_KEY")
    folder.chmod(0o700)
    # The allow-list holds for files too: no name outside it is ever read.
    (folder / "HOME").write_text("x")
    with pytest.raises(credentials.SecretRefused):
        credentials.read_secret("HOME")


# -- 4. weak webhook secrets, and one secret per job -----------------------------------------------------------


def _add_with(org: str, sim_project, key_env: str, *extra: str):
    return run(
        "services",
        "add",
        "--org",
        org,
        "--name",
        "n",
        "--project-id",
        sim_project.project_id,
        "--base-url",
        sim_project.url,
        "--api-key-env",
        key_env,
        "--webhooks",
        *extra,
    )


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("--webhook-secret-env", "/root", "at least 32 printable characters"),
        ("--webhook-secret-env", "a" * 40, "must be random"),
        ("--webhook-secret-env", SIGNING_KEY, "must not be a whsec_ signing key"),
        ("--webhook-signing-key-env", "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c", "whsec_ followed by the base64"),
        ("--webhook-signing-key-env", "whsec_" + base64.b64encode(b"s" * 32).decode(), "random bytes"),
        ("--webhook-signing-key-env", "whsec_" + base64.b64encode(b"short").decode(), "24 to 64 random bytes"),
    ],
)
def test_weak_webhook_secrets_are_refused_without_repeating_them(
    db_env, engine, sim_project, monkeypatch, option, value, reason
):
    org = f"weak-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("GOLIOTH_WEAK_TEST_KEY", sim_project.api_key)
    monkeypatch.setenv("GOLIOTH_WEAK_TEST_SECRET", value)
    result = _add_with(org, sim_project, "GOLIOTH_WEAK_TEST_KEY", option, "GOLIOTH_WEAK_TEST_SECRET")
    assert result.exit_code == 1, result.output
    assert reason in result.output and value not in result.output
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM device_services WHERE organization_id = :o"), {"o": org}
            ).scalar()
            == 0
        )


def test_each_job_needs_a_secret_of_its_own(db_env, sim_project, monkeypatch):
    org = f"same-{uuid.uuid4().hex[:8]}"
    key = "f3a9c1d7e5b2084f6a1c9e3d7b5f2a8c0d4e6f1a"  # strong enough to pass for a pipeline secret too
    monkeypatch.setenv("GOLIOTH_SAME_KEY", key)
    monkeypatch.setenv("GOLIOTH_SAME_SECRET_A", "0d4e6f1af3a9c1d7e5b2084f6a1c9e3d7b5f2a8c")
    monkeypatch.setenv("GOLIOTH_SAME_SECRET_B", key)
    same_variable = _add_with(org, sim_project, "GOLIOTH_SAME_KEY", "--webhook-secret-env", "GOLIOTH_SAME_KEY")
    same_value = _add_with(org, sim_project, "GOLIOTH_SAME_KEY", "--webhook-secret-env", "GOLIOTH_SAME_SECRET_B")
    for refused in (same_variable, same_value):
        assert refused.exit_code == 1 and "the same value" in refused.output and key not in refused.output
    with pytest.raises(ValueError, match="must be different variables"):
        store.ServiceSettings(
            organization_id=org,
            name="n",
            project_id="p",
            api_key_env="GOLIOTH_SAME_KEY",
            webhook_secret_env="GOLIOTH_SAME_KEY",
        )
    monkeypatch.setenv("GOLIOTH_SAME_SIGNING", SIGNING_KEY)
    ok = _add_with(
        org,
        sim_project,
        "GOLIOTH_SAME_KEY",
        "--webhook-secret-env",
        "GOLIOTH_SAME_SECRET_A",
        "--webhook-signing-key-env",
        "GOLIOTH_SAME_SIGNING",
    )
    assert ok.exit_code == 0, ok.output


# -- 6. refused values are never echoed ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--webhook-secret-env", "whsec_notset"),
        ("--webhook-signing-key-env", "whsec_notset"),
        ("--webhook-secret-env", "GOLIOTH_NOTSET_BUT_MAYBE_A_SECRET"),
        ("--webhook-secret-env", "s3cr3t_value"),
    ],
)
def test_the_cli_never_echoes_a_refused_value(db_env, sim_project, monkeypatch, option, value):
    monkeypatch.setenv("GOLIOTH_ECHO_TEST_KEY", sim_project.api_key)
    monkeypatch.delenv(value, raising=False)
    result = _add_with(f"echo-{uuid.uuid4().hex[:8]}", sim_project, "GOLIOTH_ECHO_TEST_KEY", option, value)
    assert result.exit_code == 1 and result.output.startswith("Error: ")
    assert value not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_an_allowed_name_that_is_set_is_a_name_however_it_looks(monkeypatch):
    # Digit-heavy, like a hex key: still a name, because it is allowed and names a variable that is set.
    monkeypatch.setenv("GOLIOTH_KEY_1234567890", "the-key")
    assert actions.check_env_reference("api_key_env", "GOLIOTH_KEY_1234567890") == "GOLIOTH_KEY_1234567890"
    monkeypatch.delenv("GOLIOTH_KEY_1234567890")
    with pytest.raises(InvalidInput, match="NAME of an environment variable"):
        actions.check_env_reference("api_key_env", "GOLIOTH_KEY_1234567890")
