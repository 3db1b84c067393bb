"""The console's guards, as one ASGI middleware plus a form reader.

- Access: bound to loopback, the console is open to local users; bound elsewhere it needs
  GOLIOTH_SYNC_CONSOLE_TOKEN, sent as `Authorization: Bearer <token>` or signed in through /login.
  With a token configured, every request but /login needs it.
- Sessions: /login opens a server-side session (console_sessions) that ends after 8 hours, after
  30 idle minutes, at logout, or when the token changes; the cookie is `Secure` whenever the request
  came over https (directly, or through a proxy trusted with `--forwarded-allow-ips`).
- Throttling: 5 wrong tokens from one client within 15 minutes (through /login or a Bearer header)
  and that client gets 429 until the oldest failure is 15 minutes old.
- DNS rebinding: on loopback only Host headers naming loopback are accepted.
- CSRF: every form POST carries a token bound to the browser's session cookie (HMAC of the
  session id with a per-process secret), and cross-site POSTs (Origin / Sec-Fetch-Site) are refused.
- Headers: a strict CSP (no scripts at all), no framing, no sniffing, same-origin referrers.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import timedelta
from typing import overload
from urllib.parse import parse_qs, urlsplit

from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from golioth_assets.store import console_sessions

SESSION_COOKIE = "gs_session"
AUTH_COOKIE = "gs_console_auth"
TOKEN_ENV = "GOLIOTH_SYNC_CONSOLE_TOKEN"
MIN_TOKEN_LENGTH = 16
SESSION_LIFETIME = timedelta(hours=8)
SESSION_IDLE = timedelta(minutes=30)
MAX_FORM_BYTES = 256 * 1024
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    # Not no-referrer: under it browsers send `Origin: null` on same-origin POSTs.
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
PUBLIC_PATHS = ("/login",)


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The host of a Host header, without the port ("[::1]:8089" → "::1")."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def token_hash(token: str) -> str:
    """What sessions remember of the token that opened them: a slow hash, computed once per process,
    so the sessions table gives no cheap way to guess the token."""
    return hashlib.pbkdf2_hmac("sha256", token.encode(), b"golioth-sync console sessions", 200_000).hex()


class LoginThrottle:
    """Wrong tokens per client: after `max_failures` within `window_seconds`, refuse until the oldest
    of them is `window_seconds` old. Bounded memory: the least recently failing clients are forgotten."""

    def __init__(
        self,
        max_failures: int = 5,
        window_seconds: float = 900.0,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self.max_clients = max_clients
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str) -> deque[float]:
        failures = self._failures.get(client, deque())
        cutoff = self.clock() - self.window
        while failures and failures[0] <= cutoff:
            failures.popleft()
        return failures

    def retry_after(self, client: str) -> int:
        """Seconds until `client` may try again; 0 when it may now."""
        failures = self._recent(client)
        if len(failures) < self.max_failures:
            return 0
        return max(1, int(failures[0] + self.window - self.clock()) + 1)

    def failed(self, client: str) -> None:
        failures = self._recent(client)
        failures.append(self.clock())
        self._failures[client] = failures
        self._failures.move_to_end(client)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


def client_of(request: Request) -> str:
    return request.client.host if request.client else "?"


def too_many_attempts(seconds: int) -> Response:
    return PlainTextResponse(
        f"too many wrong tokens from this address: try again in {seconds} s",
        status_code=429,
        headers={"retry-after": str(seconds)},
    )


class Guard:
    """Pure ASGI middleware: host check, token or session check, CSRF session cookie, cross-site POST
    refusal, security headers."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        secret: bytes,
        token: str | None,
        loopback_only: bool,
        engine: Engine,
        throttle: LoginThrottle | None = None,
        session_lifetime: timedelta = SESSION_LIFETIME,
        session_idle: timedelta = SESSION_IDLE,
    ) -> None:
        self.app = app
        self.secret = secret
        self.token = token
        self.token_hash = token_hash(token) if token else ""
        self.loopback_only = loopback_only
        self.engine = engine
        self.throttle = throttle or LoginThrottle()
        self.session_lifetime = session_lifetime
        self.session_idle = session_idle

    @property
    def operator_signed_in(self) -> bool:
        """Whether requests that reach a page carry the operator's token (a token is configured: the
        guard let them through only with it). Without a token, anyone who can reach loopback can."""
        return bool(self.token)

    def token_matches(self, sent: str) -> bool:
        # Fixed-size digests, so the comparison takes the same time whatever the lengths.
        if not self.token:
            return False
        return hmac.compare_digest(hashlib.sha256(sent.encode()).digest(), hashlib.sha256(self.token.encode()).digest())

    def open_session(self) -> str:
        with self.engine.begin() as conn:
            return console_sessions.open_session(conn, self.token_hash, self.session_lifetime)

    def revoke_session(self, session_id: str) -> None:
        with self.engine.begin() as conn:
            console_sessions.revoke_session(conn, session_id)

    def _session_is_live(self, session_id: str) -> bool:
        with self.engine.begin() as conn:
            return console_sessions.touch_session(conn, session_id, self.token_hash, self.session_idle)

    def csrf_for(self, session: str) -> str:
        return hmac.new(self.secret, session.encode(), hashlib.sha256).hexdigest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self._refuse(request) or await self._check_credentials(request)
        if refusal is not None:
            await self._with_headers(refusal)(scope, receive, send)
            return
        session = request.cookies.get(SESSION_COOKIE)
        new_session = None
        if not session or len(session) < 32:
            session = new_session = secrets.token_urlsafe(32)
        scope.setdefault("state", {})
        scope["state"]["session"] = session
        scope["state"]["csrf_token"] = self.csrf_for(session)
        scope["state"]["guard"] = self
        secure = request.url.scheme == "https"

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                if new_session:
                    cookie = f"{SESSION_COOKIE}={new_session}; Path=/; HttpOnly; SameSite=Strict" + (
                        "; Secure" if secure else ""
                    )
                    headers.append((b"set-cookie", cookie.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_wrapper)

    def _refuse(self, request: Request) -> Response | None:
        if self.loopback_only and not is_loopback(host_name(request.headers.get("host") or "")):
            return PlainTextResponse("this console answers on 127.0.0.1/localhost only", status_code=421)
        if request.method not in ("GET", "HEAD", "POST"):
            return PlainTextResponse("method not allowed", status_code=405)
        if request.method == "POST":
            site = request.headers.get("sec-fetch-site")
            if site and site not in ("same-origin", "none"):
                return PlainTextResponse("cross-site request refused", status_code=403)
            origin = request.headers.get("origin")
            if origin is not None and (origin == "null" or urlsplit(origin).netloc != request.headers.get("host")):
                return PlainTextResponse("cross-origin request refused", status_code=403)
        return None

    async def _check_credentials(self, request: Request) -> Response | None:
        """None when the request may go on: no token configured, a public path, the right Bearer
        token, or a live session cookie."""
        if not self.token or request.url.path in PUBLIC_PATHS:
            return None
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            client = client_of(request)
            wait = self.throttle.retry_after(client)
            if wait:
                return too_many_attempts(wait)
            if self.token_matches(header[7:].strip()):
                return None
            self.throttle.failed(client)
        else:
            cookie = request.cookies.get(AUTH_COOKIE, "")
            live: bool = bool(cookie) and await run_in_threadpool(self._session_is_live, cookie)
            if live:
                return None
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/login", status_code=303)
        return PlainTextResponse(
            "authentication required: Authorization: Bearer <GOLIOTH_SYNC_CONSOLE_TOKEN>",
            status_code=401,
            headers={"www-authenticate": 'Bearer realm="golioth-sync console"'},
        )

    def _with_headers(self, response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


async def read_form(request: Request) -> dict[str, list[str]]:
    """A same-origin, CSRF-checked urlencoded form (no python-multipart needed)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise HTTPException(415, "forms only (application/x-www-form-urlencoded)")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, "form too large")
    try:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=500)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "malformed form") from None
    sent = (form.get("csrf") or [""])[0]
    expected = request.state.csrf_token
    if not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise HTTPException(403, "the form expired or came from another site: reload the page and try again")
    return form


@overload
def first(form: dict[str, list[str]], name: str) -> str | None: ...
@overload
def first(form: dict[str, list[str]], name: str, default: str) -> str: ...
def first(form: dict[str, list[str]], name: str, default: str | None = None) -> str | None:
    """The form's first value for `name`, else `default`."""
    values = form.get(name)
    return values[0] if values else default


__all__ = [
    "Guard",
    "LoginThrottle",
    "client_of",
    "first",
    "host_name",
    "is_loopback",
    "read_form",
    "token_hash",
    "too_many_attempts",
]
