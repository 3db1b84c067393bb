"""The web console: server-rendered pages (starlette + jinja2), no JavaScript at all.

Pages: organization status, services (editable), the conflict queue, sync history with each
device's audit trail, the webhook inbox with dead-letter replay, and charts (console/charts.py). Every write goes through
golioth_assets.actions, the same functions the CLI and the Dagster resolve job use.

    create_app(engine)                        # loopback use, no token
    create_app(engine, token="...", loopback_only=False)
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from golioth_assets.actions import OperationError
from golioth_assets.actions import conflicts as conflict_actions
from golioth_assets.actions import history as history_actions
from golioth_assets.actions import services as service_actions
from golioth_assets.actions import status as status_actions
from golioth_assets.actions import webhooks as webhook_actions
from golioth_assets.console.charts import ChartPages
from golioth_assets.console.security import (
    AUTH_COOKIE,
    SESSION_COOKIE,
    Guard,
    LoginThrottle,
    client_of,
    first,
    read_form,
    too_many_attempts,
)
from golioth_assets.core.vocabulary import Direction, FieldGroup, Policy
from golioth_assets.core.vocabulary import values as choices
from golioth_assets.store.webhook_events import STATUSES as EVENT_STATUSES

HERE = Path(__file__).parent
FLASH_COOKIE = "gs_flash"
OPERATOR_COOKIE = "gs_operator"
SIDE_LABELS = {"local": "local (database)", "remote": "Golioth", "none": "link", "both": "both"}


def _json(value: Any) -> str:
    if value is None:
        return "null"
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _pretty(value: Any) -> str:
    if value is None:
        return "∅ none"
    return (
        json.dumps(value, sort_keys=True, ensure_ascii=False, indent=1)
        if isinstance(value, (dict, list))
        else _json(value)
    )


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if value else ""


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.autoescape = True
    env.filters["json"] = _json
    env.filters["pretty"] = _pretty
    env.filters["when"] = _when
    env.globals["side_label"] = lambda side: SIDE_LABELS.get(side, side)
    return templates


class ConsolePages:
    """The web console's page handlers, with their engine and settings."""

    def __init__(self, engine: Engine, templates: Jinja2Templates, dagster_ui_url: str | None) -> None:
        self.engine = engine
        self.templates = templates
        self.dagster_ui_url = (dagster_ui_url or status_actions.dagster_ui_url()).rstrip("/")

    # -- helpers --------------------------------------------------------------------------------------

    def render(self, request: Request, name: str, context: dict, status_code: int = 200) -> Response:
        flash = request.cookies.get(FLASH_COOKIE)
        message = None
        if flash:
            kind, _, text = unquote(flash).partition(":")
            message = {"kind": kind if kind in ("ok", "error") else "ok", "text": text[:500]}
        response = self.templates.TemplateResponse(
            request,
            name,
            {
                "csrf_token": request.state.csrf_token,
                "flash": message,
                "operator": unquote(request.cookies.get(OPERATOR_COOKIE, ""))[:100],
                "signed_in": request.state.guard.operator_signed_in,
                "dagster_ui_url": self.dagster_ui_url,
                "run_url": lambda run_id: status_actions.dagster_run_url(run_id, self.dagster_ui_url),
                **context,
            },
            status_code=status_code,
        )
        if flash:
            response.delete_cookie(FLASH_COOKIE, path="/")
        return response

    @staticmethod
    def redirect(url: str, message: str | None = None, *, kind: str = "ok") -> RedirectResponse:
        response = RedirectResponse(url, status_code=303)
        if message:
            response.set_cookie(
                FLASH_COOKIE, quote(f"{kind}:{message}"[:600]), httponly=True, samesite="strict", path="/"
            )
        return response

    async def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run blocking database work off the event loop."""
        return await run_in_threadpool(fn, *args, **kwargs)

    # -- status -------------------------------------------------------------------------------------

    async def status(self, request: Request) -> Response:
        rows = await self.call(status_actions.organization_status, self.engine)
        return self.render(request, "status.html", {"page": "status", "rows": rows})

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    # -- services -----------------------------------------------------------------------------------

    async def services(self, request: Request) -> Response:
        rows = await self.call(service_actions.list_services, self.engine)
        return self.render(request, "services.html", {"page": "services", "services": rows})

    def _form_context(self, request: Request, service: Any, values: dict, error: str | None, *, new: bool) -> dict:
        return {
            "page": "services",
            "service": service,
            "values": values,
            "error": error,
            "new": new,
            "connection_locked": not request.state.guard.operator_signed_in,
            "directions": choices(Direction),
            "policies": choices(Policy),
            "groups": choices(FieldGroup),
        }

    async def service_edit(self, request: Request) -> Response:
        service = await self._service_or_404(request.path_params["service_id"])
        values = service.model_dump(include=set(service_actions.SETTING_FIELDS))
        return self.render(request, "service_form.html", self._form_context(request, service, values, None, new=False))

    async def service_new(self, request: Request) -> Response:
        values: dict[str, Any] = {
            "organization_id": "",
            "name": "",
            "project_id": "",
            "base_url": "https://api.golioth.io",
            "golioth_organization_id": None,
            "api_key_env": "GOLIOTH_API_KEY",
            "sync_enabled": True,
            "interval_seconds": 300,
            "direction": "bidirectional",
            "conflict_policy": "manual",
            "policy_overrides": {},
            "field_groups": list(choices(FieldGroup)),
            "allow_deletes": False,
            "desired_state_path": "desired",
            "webhook_enabled": False,
            "webhook_secret_env": None,
            "webhook_secret_header": "x-golioth-sync-secret",
            "webhook_signing_key_env": None,
        }
        return self.render(request, "service_form.html", self._form_context(request, None, values, None, new=True))

    async def service_save(self, request: Request) -> Response:
        form = await read_form(request)
        new = "service_id" not in request.path_params
        submitted = settings_from_form(form, include_org=new)
        try:
            if new:
                _operator_only(request, "adding a service")
                service = await self.call(service_actions.add_service, self.engine, submitted)
                return self.redirect(
                    f"/services/{service.id}", f"added service {service.id} for {service.organization_id}"
                )
            current = await self._service_or_404(request.path_params["service_id"])
            values = current.model_dump(include=set(service_actions.SETTING_FIELDS))
            changes = {k: v for k, v in submitted.items() if values.get(k) != v}
            if not changes:
                return self.redirect(f"/services/{current.id}", "nothing changed")
            touched = sorted(set(changes) & set(service_actions.CONNECTION_FIELDS))
            if touched:
                _operator_only(request, f"changing {', '.join(touched)}")
            service = await self.call(service_actions.update_service, self.engine, current.id, changes)
            return self.redirect(
                f"/services/{service.id}", f"saved {', '.join(sorted(changes))}; the next run uses the new settings"
            )
        except OperationError as exc:
            service = None if new else await self._service_or_404(request.path_params["service_id"])
            base = {} if service is None else service.model_dump(include=set(service_actions.SETTING_FIELDS))
            values = {**base, **submitted}
            # Secret-name fields are never shown back as typed: a refused one may hold the secret itself.
            for name in service_actions.ENV_FIELDS:
                values[name] = base.get(name) or ""
            context = self._form_context(request, service, values, str(exc), new=new)
            return self.render(
                request, "service_form.html", context, status_code=403 if isinstance(exc, OperatorOnly) else 400
            )

    async def service_test(self, request: Request) -> Response:
        await read_form(request)
        service = await self._service_or_404(request.path_params["service_id"])
        report = await self.call(service_actions.check_connection, self.engine, service.id)
        values = service.model_dump(include=set(service_actions.SETTING_FIELDS))
        context = {**self._form_context(request, service, values, None, new=False), "report": report}
        return self.render(request, "service_form.html", context)

    async def _service_or_404(self, ref: str):
        try:
            return await self.call(service_actions.get_service, self.engine, ref)
        except OperationError as exc:
            raise HTTPException(404, str(exc)) from None

    # -- conflicts ----------------------------------------------------------------------------------

    async def conflicts(self, request: Request) -> Response:
        org = request.query_params.get("org") or None
        status = request.query_params.get("status", "pending") or None
        if status == "all":
            status = None
        try:
            rows = await self.call(conflict_actions.list_conflicts, self.engine, org, status, 200)
        except OperationError as exc:
            raise HTTPException(404 if "unknown organization" in str(exc) else 400, str(exc)) from None
        counts = await self.call(conflict_actions.counts_by_status, self.engine, org)
        return self.render(
            request,
            "conflicts.html",
            {
                "page": "conflicts",
                "rows": rows,
                "org": org,
                "status": status or "all",
                "counts": counts,
                "statuses": conflict_actions.STATUSES,
            },
        )

    async def conflict(self, request: Request) -> Response:
        try:
            row = await self.call(conflict_actions.get_conflict, self.engine, request.path_params["conflict_id"])
        except OperationError as exc:
            raise HTTPException(404, str(exc)) from None
        return self.render(request, "conflict.html", {"page": "conflicts", "c": row})

    async def resolve(self, request: Request) -> Response:
        form = await read_form(request)
        cid = request.path_params["conflict_id"]
        use = first(form, "use", "")
        by = first(form, "by", "")
        back = first(form, "back") or ""
        if not _local_path(back):
            back = f"/conflicts/{cid}"
        try:
            if use == "value":
                rows = await self.call(
                    conflict_actions.resolve,
                    self.engine,
                    [cid],
                    use="value",
                    value_json=first(form, "value", ""),
                    resolved_by=by,
                )
            else:
                rows = await self.call(conflict_actions.resolve, self.engine, [cid], use=use, resolved_by=by)
        except OperationError as exc:
            response = self.redirect(back, str(exc), kind="error")
        else:
            row = rows[0]
            label = {"local": "local value", "remote": "Golioth's value", "value": "an edited value"}[row["resolution"]]
            response = self.redirect(
                back,
                f"conflict {row['id']} resolved with {label} by {row['resolved_by']}: {_json(row['resolved_value'])[:120]}; "
                "the next sync applies it",
            )
        if by.strip():
            response.set_cookie(OPERATOR_COOKIE, quote(by.strip()[:100]), httponly=True, samesite="strict", path="/")
        return response

    # -- history ------------------------------------------------------------------------------------

    async def history(self, request: Request) -> Response:
        org = request.query_params.get("org")
        services = await self.call(service_actions.list_services, self.engine)
        orgs = [s.organization_id for s in services]
        if not org and orgs:
            org = orgs[0]
        runs: list[dict] = []
        if org:
            try:
                runs = await self.call(history_actions.runs, self.engine, org, 50)
            except OperationError as exc:
                raise HTTPException(404, str(exc)) from None
        return self.render(request, "history.html", {"page": "history", "org": org, "orgs": orgs, "runs": runs})

    async def device(self, request: Request) -> Response:
        org = request.path_params["org"]
        ref = request.query_params.get("device", "").strip()
        if not ref:
            return self.redirect(f"/history?org={quote(org)}", "give a device id or name", kind="error")
        try:
            found = await self.call(history_actions.device_history, self.engine, org, ref, 500)
        except OperationError as exc:
            return self.redirect(f"/history?org={quote(org)}", str(exc), kind="error")
        return self.render(
            request, "device.html", {"page": "history", "org": org, "h": found, "changes": found.changes()}
        )

    async def run(self, request: Request) -> Response:
        org = request.path_params["org"]
        try:
            run, entries = await self.call(
                history_actions.run_detail, self.engine, int(request.path_params["run_id"]), org, 1000
            )
        except OperationError as exc:
            raise HTTPException(404, str(exc)) from None
        return self.render(request, "run.html", {"page": "history", "org": org, "run": run, "entries": entries})

    # -- webhooks -----------------------------------------------------------------------------------

    async def webhooks(self, request: Request) -> Response:
        org = request.query_params.get("org") or None
        status = request.query_params.get("status") or None
        try:
            events, counts = await self.call(webhook_actions.inbox, self.engine, org, status, 200)
        except OperationError as exc:
            raise HTTPException(400, str(exc)) from None
        return self.render(
            request,
            "webhooks.html",
            {
                "page": "webhooks",
                "events": events,
                "counts": counts,
                "org": org,
                "status": status,
                "statuses": EVENT_STATUSES,
            },
        )

    async def replay(self, request: Request) -> Response:
        form = await read_form(request)
        ids = [int(i) for i in form.get("id", []) if i.strip().isdigit()]
        org = first(form, "org") or None
        back = "/webhooks?" + urlencode({k: v for k, v in (("org", org), ("status", "dead")) if v})
        try:
            count = await self.call(webhook_actions.replay, self.engine, ids or None, None if ids else org)
        except OperationError as exc:
            return self.redirect(back, str(exc), kind="error")
        return self.redirect(back, f"requeued {count} dead event(s) as pending")

    # -- login --------------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        guard: Guard = request.state.guard
        if request.method == "GET":
            return self.render(request, "login.html", {"page": "login", "needed": bool(guard.token)})
        form = await read_form(request)
        if not guard.token:
            return self.redirect("/")
        client = client_of(request)
        wait = guard.throttle.retry_after(client)
        if wait:
            return too_many_attempts(wait)
        if not guard.token_matches(first(form, "token", "") or ""):
            guard.throttle.failed(client)
            return self.render(request, "login.html", {"page": "login", "needed": True, "error": "wrong token"}, 401)
        guard.throttle.succeeded(client)
        session_id = await self.call(guard.open_session)
        secure = request.url.scheme == "https"
        response = self.redirect("/", "signed in")
        response.set_cookie(
            AUTH_COOKIE,
            session_id,
            max_age=int(guard.session_lifetime.total_seconds()),
            httponly=True,
            samesite="strict",
            path="/",
            secure=secure,
        )
        # A fresh CSRF session too, so a session id planted before sign-in is worth nothing after.
        response.set_cookie(SESSION_COOKIE, secrets.token_urlsafe(32), httponly=True, samesite="strict", secure=secure)
        return response

    async def logout(self, request: Request) -> Response:
        await read_form(request)
        guard: Guard = request.state.guard
        session_id = request.cookies.get(AUTH_COOKIE)
        if session_id:
            await self.call(guard.revoke_session, session_id)
        response = self.redirect("/login")
        response.delete_cookie(AUTH_COOKIE, path="/")
        return response


class OperatorOnly(OperationError):
    """A change only the operator (the console token's holder, or the CLI) may make."""


def _operator_only(request: Request, what: str) -> None:
    """Where a service's secrets are read from and sent to is the operator's call: on a console
    without a token (any local user can reach it) those settings are read-only."""
    if not request.state.guard.operator_signed_in:
        raise OperatorOnly(
            f"{what} needs the operator: start the console with GOLIOTH_SYNC_CONSOLE_TOKEN and sign in, "
            "or use `golioth-sync services add|update`"
        )


def _local_path(url: str) -> bool:
    """Only same-site paths are followed after a form ("/x", never "//host", "/\\host" or "https://…")."""
    return url.startswith("/") and not url.startswith("//") and "\\" not in url and all(31 < ord(c) < 127 for c in url)


def settings_from_form(form: dict[str, list[str]], *, include_org: bool) -> dict[str, Any]:
    """The service form → settings (types coerced where unambiguous; pydantic judges the rest)."""

    def text(name: str) -> str | None:
        value = (first(form, name) or "").strip()
        return value or None

    data: dict[str, Any] = {
        "name": text("name") or "",
        "project_id": text("project_id") or "",
        "base_url": text("base_url") or "",
        "golioth_organization_id": text("golioth_organization_id"),
        "api_key_env": text("api_key_env") or "",
        "sync_enabled": first(form, "sync_enabled") is not None,
        "direction": text("direction") or "",
        "conflict_policy": text("conflict_policy") or "",
        "field_groups": [g for g in form.get("field_groups", []) if g],
        "allow_deletes": first(form, "allow_deletes") is not None,
        "desired_state_path": text("desired_state_path") or "",
        "webhook_enabled": first(form, "webhook_enabled") is not None,
        "webhook_secret_env": text("webhook_secret_env"),
        "webhook_secret_header": text("webhook_secret_header") or "",
        "webhook_signing_key_env": text("webhook_signing_key_env"),
    }
    interval = text("interval_seconds") or ""
    data["interval_seconds"] = int(interval) if interval.lstrip("-").isdigit() else interval
    data["policy_overrides"] = {
        group: policy for group in choices(FieldGroup) if (policy := (first(form, f"override_{group}") or "").strip())
    }
    if include_org:
        data["organization_id"] = text("organization_id") or ""
    return data


def create_app(
    engine: Engine,
    *,
    token: str | None = None,
    loopback_only: bool = True,
    dagster_ui_url: str | None = None,
    throttle: LoginThrottle | None = None,
) -> Starlette:
    console = ConsolePages(engine, _templates(), dagster_ui_url)
    charts = ChartPages(console)

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)  # registered for HTTPException only
        if not hasattr(request.state, "csrf_token"):
            return PlainTextResponse(exc.detail, status_code=exc.status_code)
        return console.render(
            request,
            "error.html",
            {"page": "", "status": exc.status_code, "detail": exc.detail},
            status_code=exc.status_code,
        )

    routes = [
        Route("/", console.status),
        Route("/healthz", console.healthz),
        Route("/services", console.services),
        Route("/services/new", console.service_new),
        Route("/services/new", console.service_save, methods=["POST"]),
        Route("/services/{service_id:int}", console.service_edit),
        Route("/services/{service_id:int}", console.service_save, methods=["POST"]),
        Route("/services/{service_id:int}/test", console.service_test, methods=["POST"]),
        Route("/conflicts", console.conflicts),
        Route("/conflicts/{conflict_id:int}", console.conflict),
        Route("/conflicts/{conflict_id:int}/resolve", console.resolve, methods=["POST"]),
        Route("/history", console.history),
        Route("/history/{org}/device", console.device),
        Route("/history/{org}/runs/{run_id:int}", console.run),
        Route("/charts", charts.page),
        Route("/webhooks", console.webhooks),
        Route("/webhooks/replay", console.replay, methods=["POST"]),
        Route("/login", console.login, methods=["GET", "POST"]),
        Route("/logout", console.logout, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found})
    app.add_middleware(
        Guard,
        secret=secrets.token_bytes(32),
        token=token,
        loopback_only=loopback_only,
        engine=engine,
        throttle=throttle,
    )
    return app
