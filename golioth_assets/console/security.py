"""The console's guards, as one ASGI middleware plus a form reader.

- Access: bound to loopback, the console is open to local users; bound elsewhere it needs
  GOLIOTH_SYNC_CONSOLE_TOKEN, sent as `Authorization: Bearer <token>` or as the cookie the
  /login form sets. With a token configured, every request but /login needs it.
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
from urllib.parse import parse_qs, urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "gs_session"
AUTH_COOKIE = "gs_console_auth"
TOKEN_ENV = "GOLIOTH_SYNC_CONSOLE_TOKEN"
MIN_TOKEN_LENGTH = 16
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


def auth_cookie_value(token: str) -> str:
    """What the auth cookie holds: derived from the token, so the cookie never is the token."""
    return hmac.new(token.encode(), b"golioth-sync console session", hashlib.sha256).hexdigest()


class Guard:
    """Pure ASGI middleware: host check, token check, session cookie, cross-site POST refusal, headers."""

    def __init__(self, app: ASGIApp, *, secret: bytes, token: str | None, loopback_only: bool) -> None:
        self.app = app
        self.secret = secret
        self.token = token
        self.loopback_only = loopback_only

    def csrf_for(self, session: str) -> str:
        return hmac.new(self.secret, session.encode(), hashlib.sha256).hexdigest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self._refuse(request)
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
        if self.token and request.url.path not in PUBLIC_PATHS and not self.authenticated(request):
            if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                return RedirectResponse("/login", status_code=303)
            return PlainTextResponse(
                "authentication required: Authorization: Bearer <GOLIOTH_SYNC_CONSOLE_TOKEN>",
                status_code=401,
                headers={"www-authenticate": 'Bearer realm="golioth-sync console"'},
            )
        return None

    def authenticated(self, request: Request) -> bool:
        if not self.token:
            return True
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer ") and hmac.compare_digest(
            header[7:].strip().encode(), self.token.encode()
        ):
            return True
        cookie = request.cookies.get(AUTH_COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), auth_cookie_value(self.token).encode())

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


def first(form: dict[str, list[str]], name: str, default: str | None = None) -> str | None:
    values = form.get(name)
    return values[0] if values else default


__all__ = ["Guard", "auth_cookie_value", "first", "host_name", "is_loopback", "read_form"]
