"""The HTTP face of the simulator: Golioth API routes under /v1, control API under /_sim.

`build_app(state)` returns an ASGI app. API requests pass through `FaultsAndStats`
(request counting, then latency / 429 / 5xx injection) before routing; control requests
bypass it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Message

from .churn import ChurnStep
from .clock import require_object_id
from .errors import INTERNAL, NOT_FOUND, UNIMPLEMENTED, ApiError, error_body, invalid
from .faults import FaultConfig
from .model import EventsTarget, dumps
from .project import MAX_PER_PAGE, DeviceFilter, Project
from .state import ProjectSpec, SimState, webhook_from_dict

log = logging.getLogger(__name__)

JSON = "application/json"
Handler = Callable[[Request], Awaitable[Response]]


# ---- response and request helpers -----------------------------------------------------


def ok(body: bytes) -> Response:
    return Response(body, 200, media_type=JSON)


def ok_data(resource: dict) -> Response:
    return ok(b'{"data":' + dumps(resource) + b"}")


def ok_json(value: Any) -> Response:
    return ok(dumps(value))


def error_response(err: ApiError) -> Response:
    return Response(err.body(), err.http_status, headers=err.headers, media_type=JSON)


def endpoint(fn: Handler) -> Handler:
    """Turn ApiError (and anything unexpected) into an rpcStatus response."""

    @functools.wraps(fn)
    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except ApiError as err:
            return error_response(err)
        except ClientDisconnect:
            # The client died mid-request (the fault tests SIGKILL syncs): nobody to answer, and
            # not a simulator bug. 499 is nginx's "client closed request", for the request stats.
            return Response(status_code=499)
        except (ValueError, TypeError, KeyError) as exc:
            if request.url.path.startswith("/_sim/"):
                return error_response(invalid(str(exc)))
            log.exception("simulator bug on %s %s", request.method, request.url.path)
            return error_response(ApiError(INTERNAL, "internal error"))
        except Exception:
            log.exception("simulator bug on %s %s", request.method, request.url.path)
            return error_response(ApiError(INTERNAL, "internal error"))

    return wrapper


async def read_json(request: Request, *, required: bool = False) -> Any:
    raw = await request.body()
    if not raw.strip():
        # grpc-gateway decodes an empty body as an empty message.
        if required:
            raise invalid("request body is required")
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise invalid(f"proto: syntax error: {exc}") from None


def query_int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise invalid(f'parsing field "{name}": strconv.ParseInt: parsing "{raw}": invalid syntax') from None


_BOOLS = {"1": True, "t": True, "T": True, "true": True, "TRUE": True, "True": True}
_BOOLS.update({"0": False, "f": False, "F": False, "false": False, "FALSE": False, "False": False})


def query_bool(request: Request, name: str) -> bool | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw not in _BOOLS:
        raise invalid(f'parsing field "{name}": strconv.ParseBool: parsing "{raw}": invalid syntax')
    return _BOOLS[raw]


def paging(request: Request) -> tuple[int, int]:
    page = query_int(request, "page", 0)
    per_page = query_int(request, "perPage", MAX_PER_PAGE)
    if page < 0:
        raise invalid("page must not be negative")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise invalid(f"perPage must be between 1 and {MAX_PER_PAGE}")
    return page, per_page


# ---- the Golioth API ------------------------------------------------------------------

DEVICES = "/v1/projects/{projectId}/devices"
DEVICE = DEVICES + "/{deviceId}"
STATE = DEVICE + "/data/{path:path}"
TAGS = "/v1/projects/{projectId}/tags"
TAG = TAGS + "/{tagId}"
BLUEPRINTS = "/v1/projects/{projectId}/blueprints"
BLUEPRINT = BLUEPRINTS + "/{blueprintId}"
COHORTS = "/v1/organizations/{organizationId}/projects/{projectId}/cohorts"
COHORT = COHORTS + "/{cohortId}"


class GoliothApi:
    def __init__(self, state: SimState) -> None:
        self.state = state

    def _project(self, request: Request) -> Project:
        return self.state.authorize(request.headers.get("x-api-key"), request.path_params["projectId"])

    def routes(self) -> list[BaseRoute]:
        r = Route
        return [
            r(DEVICES, endpoint(self.list_devices), methods=["GET"]),
            r(DEVICES, endpoint(self.create_device), methods=["POST"]),
            r(DEVICE, endpoint(self.get_device), methods=["GET"]),
            r(DEVICE, endpoint(self.patch_device), methods=["PATCH"]),
            r(DEVICE, endpoint(self.put_device), methods=["PUT"]),
            r(DEVICE, endpoint(self.delete_device), methods=["DELETE"]),
            r(STATE, endpoint(self.get_state), methods=["GET"]),
            r(STATE, endpoint(self.put_state), methods=["PUT", "POST"]),
            r(STATE, endpoint(self.patch_state), methods=["PATCH"]),
            r(STATE, endpoint(self.delete_state), methods=["DELETE"]),
            r(TAGS, endpoint(self.list_tags), methods=["GET"]),
            r(TAGS, endpoint(self.create_tag), methods=["POST"]),
            r(TAG, endpoint(self.get_tag), methods=["GET"]),
            r(TAG, endpoint(self.update_tag), methods=["PATCH", "PUT"]),
            r(TAG, endpoint(self.delete_tag), methods=["DELETE"]),
            r(BLUEPRINTS, endpoint(self.list_blueprints), methods=["GET"]),
            r(BLUEPRINTS, endpoint(self.create_blueprint), methods=["POST"]),
            r(BLUEPRINT, endpoint(self.get_blueprint), methods=["GET"]),
            r(BLUEPRINT, endpoint(self.update_blueprint), methods=["PATCH", "PUT"]),
            r(BLUEPRINT, endpoint(self.delete_blueprint), methods=["DELETE"]),
            r(COHORTS, endpoint(self.list_cohorts), methods=["GET"]),
            r(COHORTS, endpoint(self.create_cohort), methods=["POST"]),
            r(COHORT, endpoint(self.get_cohort), methods=["GET"]),
            r(COHORT, endpoint(self.update_cohort), methods=["PUT"]),
            r(COHORT, endpoint(self.delete_cohort), methods=["DELETE"]),
        ]

    # devices

    async def list_devices(self, request: Request) -> Response:
        q = request.query_params
        with self.state.lock:
            project = self._project(request)
            page, per_page = paging(request)
            tags = tuple(t for t in q.getlist("tags") if t)
            for tag_id in tags:
                require_object_id(tag_id)
            blueprint_id = q.get("blueprintId") or None
            if blueprint_id:
                require_object_id(blueprint_id)
            flt = DeviceFilter(
                device_name=q.get("deviceName") or None,
                hardware_id=q.get("hardwareId") or None,
                tags=tags,
                blueprint_id=blueprint_id,
                cohort_id=q.get("cohortId") or None,
                enabled=query_bool(request, "enabled"),
                term=q.get("term") or None,
            )
            return ok(project.list_devices(flt, page, per_page, q.get("statePath") or None))

    async def create_device(self, request: Request) -> Response:
        body = await read_json(request)
        with self.state.lock:
            return ok_data(self._project(request).create_device(body).to_dict())

    async def get_device(self, request: Request) -> Response:
        with self.state.lock:
            device = self._project(request).get_device(request.path_params["deviceId"])
            return ok(b'{"data":' + device.json_bytes() + b"}")

    async def patch_device(self, request: Request) -> Response:
        return await self._update_device(request, replace=False)

    async def put_device(self, request: Request) -> Response:
        return await self._update_device(request, replace=True)

    async def _update_device(self, request: Request, *, replace: bool) -> Response:
        body = await read_json(request)
        with self.state.lock:
            project = self._project(request)
            device = project.update_device(request.path_params["deviceId"], body, replace=replace)
            return ok(b'{"data":' + device.json_bytes() + b"}")

    async def delete_device(self, request: Request) -> Response:
        with self.state.lock:
            self._project(request).delete_device(request.path_params["deviceId"])
            return ok(b"{}")

    # LightDB State

    async def get_state(self, request: Request) -> Response:
        with self.state.lock:
            project = self._project(request)
            value = project.get_state(request.path_params["deviceId"], request.path_params["path"])
            return ok_json({"data": value})

    async def put_state(self, request: Request) -> Response:
        return await self._write_state(request, merge=False)

    async def patch_state(self, request: Request) -> Response:
        return await self._write_state(request, merge=True)

    async def _write_state(self, request: Request, *, merge: bool) -> Response:
        value = await read_json(request, required=True)
        with self.state.lock:
            project = self._project(request)
            project.write_state(request.path_params["deviceId"], request.path_params["path"], value, merge=merge)
            return ok(b"{}")

    async def delete_state(self, request: Request) -> Response:
        with self.state.lock:
            project = self._project(request)
            project.delete_state(request.path_params["deviceId"], request.path_params["path"])
            return ok(b"{}")

    # tags

    async def list_tags(self, request: Request) -> Response:
        with self.state.lock:
            project = self._project(request)
            page, per_page = paging(request)
            q = request.query_params
            return ok(project.list_tags(page, per_page, q.get("tagName") or None, [i for i in q.getlist("ids") if i]))

    async def create_tag(self, request: Request) -> Response:
        body = await read_json(request)
        with self.state.lock:
            return ok_data(self._project(request).create_tag(body).to_dict())

    async def get_tag(self, request: Request) -> Response:
        with self.state.lock:
            return ok_data(self._project(request).get_tag(request.path_params["tagId"]).to_dict())

    async def update_tag(self, request: Request) -> Response:
        body = await read_json(request)
        with self.state.lock:
            return ok_data(self._project(request).update_tag(request.path_params["tagId"], body).to_dict())

    async def delete_tag(self, request: Request) -> Response:
        with self.state.lock:
            self._project(request).delete_tag(request.path_params["tagId"])
            return ok(b"{}")

    # blueprints

    async def list_blueprints(self, request: Request) -> Response:
        with self.state.lock:
            project = self._project(request)
            page, per_page = paging(request)
            q = request.query_params
            ids = [i for i in q.getlist("ids") if i]
            return ok(project.list_blueprints(page, per_page, q.get("blueprintName") or None, ids))

    async def create_blueprint(self, request: Request) -> Response:
        body = await read_json(request)
        with self.state.lock:
            return ok_data(self._project(request).create_blueprint(body).to_dict())

    async def get_blueprint(self, request: Request) -> Response:
        with self.state.lock:
            return ok_data(self._project(request).get_blueprint(request.path_params["blueprintId"]).to_dict())

    async def update_blueprint(self, request: Request) -> Response:
        body = await read_json(request)
        with self.state.lock:
            project = self._project(request)
            return ok_data(project.update_blueprint(request.path_params["blueprintId"], body).to_dict())

    async def delete_blueprint(self, request: Request) -> Response:
        with self.state.lock:
            self._project(request).delete_blueprint(request.path_params["blueprintId"])
            return ok(b"{}")

    # cohorts (organization-scoped path; any organizationId is accepted for a known project)

    async def list_cohorts(self, request: Request) -> Response:
        with self.state.lock:
            project = self._project(request)
            page, per_page = paging(request)
            return ok(project.list_cohorts(page, per_page))

    async def create_cohort(self, request: Request) -> Response:
        body = await read_json(request)
        with self.state.lock:
            return ok_data(self._project(request).create_cohort(body).to_dict())

    async def get_cohort(self, request: Request) -> Response:
        with self.state.lock:
            return ok_data(self._project(request).get_cohort(request.path_params["cohortId"]).to_dict())

    async def update_cohort(self, request: Request) -> Response:
        body = await read_json(request)
        with self.state.lock:
            return ok_data(self._project(request).update_cohort(request.path_params["cohortId"], body).to_dict())

    async def delete_cohort(self, request: Request) -> Response:
        with self.state.lock:
            self._project(request).delete_cohort(request.path_params["cohortId"])
            return ok(b"{}")


# ---- the control API ------------------------------------------------------------------


class ControlApi:
    """Simulator-only operations under /_sim: no API key, no faults, not counted in stats."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    def routes(self) -> list[BaseRoute]:
        r = Route
        p = "/projects/{projectId}"
        return [
            r("/health", endpoint(self.health), methods=["GET"]),
            r("/reset", endpoint(self.reset), methods=["POST"]),
            r("/projects", endpoint(self.list_projects), methods=["GET"]),
            r("/projects", endpoint(self.add_project), methods=["POST"]),
            r(p, endpoint(self.get_project), methods=["GET"]),
            r(p, endpoint(self.remove_project), methods=["DELETE"]),
            r(p + "/deleted", endpoint(self.set_deleted), methods=["PUT"]),
            r(p + "/faults", endpoint(self.get_project_faults), methods=["GET"]),
            r(p + "/faults", endpoint(self.set_project_faults), methods=["PUT"]),
            r(p + "/faults", endpoint(self.clear_project_faults), methods=["DELETE"]),
            r(p + "/devices", endpoint(self.console_create), methods=["POST"]),
            r(p + "/devices/{deviceId}", endpoint(self.console_update), methods=["PATCH", "PUT"]),
            r(p + "/devices/{deviceId}", endpoint(self.console_delete), methods=["DELETE"]),
            r(p + "/devices/{deviceId}/activity", endpoint(self.activity), methods=["POST"]),
            r(p + "/mutate", endpoint(self.mutate), methods=["POST"]),
            r(p + "/churn", endpoint(self.get_churn), methods=["GET"]),
            r(p + "/churn", endpoint(self.set_churn), methods=["PUT"]),
            r(p + "/churn", endpoint(self.clear_churn), methods=["DELETE"]),
            r(p + "/webhook", endpoint(self.set_webhook), methods=["PUT"]),
            r(p + "/webhook", endpoint(self.clear_webhook), methods=["DELETE"]),
            r(p + "/events", endpoint(self.set_events), methods=["PUT"]),
            r(p + "/events", endpoint(self.clear_events), methods=["DELETE"]),
            r("/faults", endpoint(self.get_faults), methods=["GET"]),
            r("/faults", endpoint(self.set_faults), methods=["PUT"]),
            r("/stats", endpoint(self.get_stats), methods=["GET"]),
            r("/stats/reset", endpoint(self.reset_stats), methods=["POST"]),
            r("/webhooks", endpoint(self.webhook_stats), methods=["GET"]),
            r("/webhooks/flush", endpoint(self.flush_webhooks), methods=["POST"]),
        ]

    async def health(self, request: Request) -> Response:
        return ok_json({"ok": True, "projects": len(self.state.projects)})

    async def reset(self, request: Request) -> Response:
        self.state.reset()
        return ok_json({"ok": True})

    async def list_projects(self, request: Request) -> Response:
        with self.state.lock:
            return ok_json({"list": [p.summary() for p in self.state.projects.values()]})

    async def add_project(self, request: Request) -> Response:
        spec = ProjectSpec.from_dict(await read_json(request))
        # Seeding a big project takes a moment; keep the event loop serving meanwhile.
        project = await asyncio.to_thread(self.state.add_project, spec)
        return ok_json(project.summary())

    async def get_project(self, request: Request) -> Response:
        return ok_json(self.state.project(request.path_params["projectId"]).summary())

    async def remove_project(self, request: Request) -> Response:
        self.state.remove_project(request.path_params["projectId"])
        return ok(b"{}")

    async def set_deleted(self, request: Request) -> Response:
        body = await read_json(request)
        deleted = bool(body.get("deleted", True))
        self.state.set_deleted(request.path_params["projectId"], deleted, body.get("mode", "unauthenticated"))
        return ok_json({"deleted": deleted})

    async def get_faults(self, request: Request) -> Response:
        return ok_json(self.state.faults.global_scope.config.to_dict())

    async def set_faults(self, request: Request) -> Response:
        config = FaultConfig.from_dict(await read_json(request))
        self.state.faults.set_global(config)
        return ok_json(config.to_dict())

    async def get_project_faults(self, request: Request) -> Response:
        self.state.project(request.path_params["projectId"])
        config = self.state.faults.get_project(request.path_params["projectId"])
        return ok_json(config.to_dict() if config else None)

    async def set_project_faults(self, request: Request) -> Response:
        config = FaultConfig.from_dict(await read_json(request))
        self.state.project(request.path_params["projectId"])
        self.state.faults.set_project(request.path_params["projectId"], config)
        return ok_json(config.to_dict())

    async def clear_project_faults(self, request: Request) -> Response:
        self.state.faults.set_project(request.path_params["projectId"], None)
        return ok(b"{}")

    async def get_stats(self, request: Request) -> Response:
        return ok_json(self.state.stats.snapshot(request.query_params.get("projectId") or None))

    async def reset_stats(self, request: Request) -> Response:
        self.state.stats.reset(request.query_params.get("projectId") or None)
        return ok(b"{}")

    async def console_create(self, request: Request) -> Response:
        body = await read_json(request)
        return ok_json({"data": self.state.console_create(request.path_params["projectId"], body)})

    async def console_update(self, request: Request) -> Response:
        body = await read_json(request)
        pid, did = request.path_params["projectId"], request.path_params["deviceId"]
        return ok_json({"data": self.state.console_update(pid, did, body, replace=request.method == "PUT")})

    async def console_delete(self, request: Request) -> Response:
        pid, did = request.path_params["projectId"], request.path_params["deviceId"]
        return ok_json({"data": self.state.console_delete(pid, did)})

    async def activity(self, request: Request) -> Response:
        body = await read_json(request)
        result = self.state.device_activity(
            request.path_params["projectId"],
            request.path_params["deviceId"],
            data=body.get("data"),
            path=body.get("path") or "data",
            firmware_version=body.get("firmwareVersion"),
        )
        return ok_json(result)

    async def mutate(self, request: Request) -> Response:
        body = await read_json(request)
        changed = self.state.mutate(request.path_params["projectId"], int(body["count"]), int(body.get("seed", 0)))
        return ok_json({"deviceIds": changed})

    async def get_churn(self, request: Request) -> Response:
        return ok_json(self.state.churn_report(request.path_params["projectId"]))

    async def set_churn(self, request: Request) -> Response:
        body = await read_json(request, required=True)
        steps = body.get("steps") if isinstance(body, dict) else None
        if not isinstance(steps, list) or not steps:
            raise invalid("give `steps`: a non-empty list of churn steps")
        parsed = [ChurnStep.from_dict(step) for step in steps]
        return ok_json(self.state.set_churn(request.path_params["projectId"], parsed))

    async def clear_churn(self, request: Request) -> Response:
        return ok_json(self.state.set_churn(request.path_params["projectId"], None))

    async def set_webhook(self, request: Request) -> Response:
        target = webhook_from_dict(await read_json(request, required=True))
        self.state.set_webhook(request.path_params["projectId"], target)
        return ok_json(target.to_dict())

    async def clear_webhook(self, request: Request) -> Response:
        self.state.set_webhook(request.path_params["projectId"], None)
        return ok(b"{}")

    async def set_events(self, request: Request) -> Response:
        body = await read_json(request, required=True)
        target = EventsTarget(url=body["url"], secret=body["secret"])
        self.state.set_events(request.path_params["projectId"], target)
        return ok_json(target.to_dict())

    async def clear_events(self, request: Request) -> Response:
        self.state.set_events(request.path_params["projectId"], None)
        return ok(b"{}")

    async def webhook_stats(self, request: Request) -> Response:
        return ok_json(self.state.sender.stats())

    async def flush_webhooks(self, request: Request) -> Response:
        body = await read_json(request)
        deadline = time.monotonic() + float(body.get("timeoutS", 10))
        # Poll instead of blocking: the receiver may be served by this same event loop.
        while self.state.sender.stats()["pending"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return ok_json(self.state.sender.stats())


# ---- faults + stats in front of the API ------------------------------------------------

_PROJECT_IN_PATH = re.compile(r"^/v1/(?:organizations/[^/]+/)?projects/([^/]+)")


class FaultsAndStats:
    """Pure ASGI middleware: counts every API request and injects the configured faults."""

    def __init__(self, app: Starlette, state: SimState, api_routes: list[Route]) -> None:
        self.app = app
        self.state = state
        self.templates = [(route.path_regex, route.path) for route in api_routes]

    def _route_of(self, path: str) -> str:
        for regex, template in self.templates:
            if regex.match(path):
                return template
        return "unmatched"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sim"):
            await self.app(scope, receive, send)
            return
        match = _PROJECT_IN_PATH.match(scope["path"])
        project_id = match.group(1) if match else None
        self.state.stats.started(project_id)
        try:
            await self._faulty(scope, receive, send, project_id)
        finally:
            self.state.stats.finished(project_id)

    async def _faulty(self, scope: dict, receive: Any, send: Any, project_id: str | None) -> None:
        path, method = scope["path"], scope["method"]
        decision = self.state.faults.decide(project_id, method)
        if decision.delay_s:
            await asyncio.sleep(decision.delay_s)
        status = 500
        if decision.error is not None:
            err = decision.error
            status = err.http_status
            headers = [(b"content-type", JSON.encode())]
            headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
            body = err.body()
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        else:

            async def capture(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            await self.app(scope, receive, capture)
        self.state.stats.record(project_id, method, self._route_of(path), status)


async def _not_found(request: Request, exc: Exception) -> Response:
    return Response(error_body(NOT_FOUND, "Not Found"), 404, media_type=JSON)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # registered for HTTPException only
    if exc.status_code == 405:
        return Response(error_body(UNIMPLEMENTED, "Method Not Allowed"), 405, media_type=JSON)
    return Response(error_body(INTERNAL, exc.detail), exc.status_code, media_type=JSON)


def build_app(state: SimState) -> FaultsAndStats:
    api_routes = GoliothApi(state).routes()
    app = Starlette(
        routes=[Mount("/_sim", routes=ControlApi(state).routes()), *api_routes],
        exception_handlers={404: _not_found, HTTPException: _http_error},
    )
    return FaultsAndStats(app, state, [r for r in api_routes if isinstance(r, Route)])
