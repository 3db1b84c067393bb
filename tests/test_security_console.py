"""Issue 13, weakness 5: console sessions expire and can be revoked, logins are throttled, and behind
a trusted TLS proxy the session cookie is `Secure`.

The console runs under uvicorn on a loopback socket (the settings `golioth-sync console` uses);
sessions live in the test database.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa
import uvicorn

from golioth_assets.cli.console import server_config
from golioth_assets.console.app import create_app
from golioth_assets.console.security import AUTH_COOKIE, LoginThrottle
from tests.test_console import TOKEN, csrf, sign_in


class Console:
    """The console app under uvicorn, configured as `golioth-sync console` configures it."""

    def __init__(self, app, forwarded_allow_ips: str | None = None) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(server_config(app, "127.0.0.1", 0, forwarded_allow_ips))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "console did not start"
            time.sleep(0.01)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, follow_redirects=False, timeout=30)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)


@pytest.fixture
def start(engine) -> Iterator:
    started: list[Console] = []

    def make(*, token: str = TOKEN, forwarded_allow_ips: str | None = None, **app_options) -> Console:
        app = create_app(engine, token=token, loopback_only=False, **app_options)
        started.append(Console(app, forwarded_allow_ips))
        return started[-1]

    yield make
    for console in started:
        console.stop()


def _session_cookie(client: httpx.Client) -> str:
    return client.cookies[AUTH_COOKIE]


def _with_cookie(console: Console, value: str) -> int:
    """What a browser holding only this session cookie gets for the status page."""
    with console.client() as other:
        other.cookies.set(AUTH_COOKIE, value)
        return other.get("/").status_code


# -- sessions --------------------------------------------------------------------------------------------


def test_logout_revokes_the_session_server_side(start):
    console = start()
    with console.client() as browser:
        assert sign_in(browser).status_code == 303
        cookie = _session_cookie(browser)
        page = browser.get("/")
        assert page.status_code == 200 and 'id="logout"' in page.text
        out = browser.post("/logout", data={"csrf": csrf(page)})
        assert out.status_code == 303 and out.headers["location"] == "/login"
    # A copy of the cookie taken before logout (a stolen one) is worth nothing after it.
    assert _with_cookie(console, cookie) == 401


def test_sessions_expire_and_each_sign_in_gets_a_new_random_one(start, engine):
    console = start()
    with console.client() as first, console.client() as second:
        sign_in(first)
        sign_in(second)
        cookies = _session_cookie(first), _session_cookie(second)
    assert cookies[0] != cookies[1] and TOKEN not in cookies[0]
    assert _with_cookie(console, cookies[0]) == 200
    hashes = [hashlib.sha256(c.encode()).hexdigest() for c in cookies]  # all the table holds of a cookie
    with engine.begin() as conn:  # the first one reaches its absolute expiry
        conn.execute(
            sa.text("UPDATE console_sessions SET expires_at = now() - interval '1 second' WHERE id_hash = :h"),
            {"h": hashes[0]},
        )
    assert [_with_cookie(console, c) for c in cookies] == [401, 200]
    with engine.begin() as conn:  # and the second has been idle for 31 minutes
        conn.execute(
            sa.text("UPDATE console_sessions SET last_seen_at = now() - interval '31 minutes' WHERE id_hash = :h"),
            {"h": hashes[1]},
        )
    assert _with_cookie(console, cookies[1]) == 401


def test_a_new_token_ends_every_session_opened_with_the_old_one(start):
    console = start()
    with console.client() as browser:
        sign_in(browser)
        cookie = _session_cookie(browser)
    assert _with_cookie(console, cookie) == 200
    rotated = start(token="a-brand-new-console-token-0123456789")  # same database, new token
    assert _with_cookie(rotated, cookie) == 401


def test_a_guessed_or_forged_cookie_is_refused(start):
    console = start()
    # What the cookie used to be: a fixed HMAC of the token, valid for ever.
    old_style = hmac.new(TOKEN.encode(), b"golioth-sync console session", hashlib.sha256).hexdigest()
    assert _with_cookie(console, old_style) == 401
    assert _with_cookie(console, "x" * 43) == 401


# -- throttling ------------------------------------------------------------------------------------------


def test_wrong_tokens_are_throttled_per_client_through_login_and_bearer(start):
    console = start(throttle=LoginThrottle(max_failures=3, window_seconds=60))
    with console.client() as guesser:
        login = guesser.get("/login")
        for _ in range(3):
            assert guesser.post("/login", data={"csrf": csrf(login), "token": "guess-guess-guess"}).status_code == 401
        locked = guesser.post("/login", data={"csrf": csrf(login), "token": TOKEN})
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
        # The Bearer header is the same door: refused too, even with the right token.
        bearer = guesser.get("/", headers={"authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 429


def test_bearer_guesses_count_towards_the_throttle(start):
    console = start(throttle=LoginThrottle(max_failures=2, window_seconds=60))
    with console.client() as guesser:
        for _ in range(2):
            assert guesser.get("/", headers={"authorization": "Bearer guess-guess-guess"}).status_code == 401
        assert guesser.post("/login", data={"csrf": csrf(guesser.get("/login")), "token": TOKEN}).status_code == 429


def test_the_throttle_forgets_old_failures():
    now = [1000.0]
    throttle = LoginThrottle(max_failures=2, window_seconds=60, clock=lambda: now[0])
    throttle.failed("10.0.0.1")
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 61 and throttle.retry_after("10.0.0.2") == 0
    now[0] += 61
    assert throttle.retry_after("10.0.0.1") == 0


# -- behind a TLS proxy ----------------------------------------------------------------------------------


def _login_over_proxy(console: Console, client_ip: str, token: str = TOKEN) -> httpx.Response:
    """Sign in as a browser behind the proxy would. httpx keeps `Secure` cookies from a plain-http
    URL to itself, so the CSRF session cookie is carried by hand, as the browser would over https."""
    headers = {"x-forwarded-proto": "https", "x-forwarded-for": client_ip}
    with console.client() as browser:
        login = browser.get("/login", headers=headers)
        session = re.search(r"gs_session=([^;]+)", login.headers["set-cookie"]).group(1)
        browser.cookies.clear()
        return browser.post(
            "/login",
            data={"csrf": csrf(login), "token": token},
            headers={**headers, "cookie": f"gs_session={session}"},
        )


def _cookie_attributes(response: httpx.Response, name: str) -> str:
    found = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    assert found, response.headers
    return found[0]


def test_behind_a_trusted_proxy_the_session_cookie_is_secure(start):
    proxied = start(forwarded_allow_ips="127.0.0.1")
    signed_in = _login_over_proxy(proxied, "203.0.113.7")
    assert signed_in.status_code == 303
    assert re.search(r";\s*secure", _cookie_attributes(signed_in, AUTH_COOKIE), re.I)
    assert re.search(r";\s*httponly", _cookie_attributes(signed_in, AUTH_COOKIE), re.I)
    # Without --forwarded-allow-ips the same headers are anyone's claim, and are ignored.
    direct = start()
    plain = _login_over_proxy(direct, "203.0.113.7")
    assert plain.status_code == 303
    assert not re.search(r";\s*secure", _cookie_attributes(plain, AUTH_COOKIE), re.I)


def test_behind_a_trusted_proxy_the_throttle_sees_the_real_client(start):
    proxied = start(forwarded_allow_ips="127.0.0.1", throttle=LoginThrottle(max_failures=2, window_seconds=60))
    for _ in range(2):
        assert _login_over_proxy(proxied, "198.51.100.1", token="guess-guess-guess").status_code == 401
    assert _login_over_proxy(proxied, "198.51.100.1").status_code == 429
    assert _login_over_proxy(proxied, "198.51.100.2").status_code == 303  # another client is not locked out
