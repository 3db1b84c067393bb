"""GoliothClient: one httpx.Client per project, explicit timeouts, retries, bounded concurrency.

Thread-safe: list_devices and run_many share the one httpx.Client (and its connection pool) across
up to `max_concurrency` threads.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import ssl
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import httpx
from pydantic import SecretStr, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel

from . import errors
from .batch import Calls, run_bounded
from .gcpause import gc_paused
from .models import (
    BLUEPRINT_DATA,
    BLUEPRINT_PAGE,
    COHORT_PAGE,
    DEVICE_DATA,
    DEVICE_PAGE,
    DEVICE_RECORD_PAGE,
    RPC_STATUS,
    STATE_DATA,
    TAG_DATA,
    TAG_PAGE,
    Blueprint,
    Cohort,
    Device,
    DeviceCreate,
    DeviceRecord,
    DeviceUpdate,
    ListPage,
    Tag,
)
from .retry import RetryBudget, RetryPolicy
from .stats import ClientStats

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Named(Protocol):
    @property
    def name(self) -> str: ...


NamedT = TypeVar("NamedT", bound=_Named)

# Reads stay generous (a 100-device page with statePath can be slow), connects fail fast.
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=60.0)
MAX_PER_PAGE = 100
# A list `total` above this is taken for a broken answer, not a project: we plan for 100k devices,
# and trusting a wild total would schedule millions of page requests.
MAX_LIST_TOTAL = 1_000_000
DEVICE_FILTERS = frozenset({"deviceName", "hardwareId", "tags", "blueprintId", "cohortId", "enabled", "term"})


@dataclass(frozen=True)
class DeviceListing:
    """One consistent listing: every page reported the same `total`.

    `served` counts the devices the pages held; a device served on two pages (the list shifted
    right under the reader) is kept once and counted in `duplicates`. So `served == total` unless
    a page came back short, and `len(records) + duplicates == served` always. The devices come as
    shape-checked records (`DeviceRecord`, the bulk path); `devices` builds the models."""

    records: list[DeviceRecord]
    total: int  # the API's own `total`, as every page reported it
    served: int
    duplicates: int
    relistings: int  # listings discarded because their pages disagreed on `total`

    @classmethod
    def of(cls, pages: list[ListPage[DeviceRecord]], *, relistings: int) -> DeviceListing:
        unique: dict[str, DeviceRecord] = {}
        served = 0
        for page in pages:
            served += len(page.list)
            for record in page.list:
                unique.setdefault(record["id"], record)
        return cls(list(unique.values()), pages[0].total, served, served - len(unique), relistings)

    @property
    def devices(self) -> list[Device]:
        """The records as models (the model also checks what a record keeps as text: timestamps)."""
        try:
            return [Device.model_validate(record) for record in self.records]
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"]) or "device"
            raise errors.InvalidResponseError(f"unreadable device in the list ({where}: {problem['msg']})") from exc


@dataclass(frozen=True)
class NameMap:
    """ids <-> names for tags, blueprints or cohorts (names are unique within a project)."""

    by_id: dict[str, str]
    by_name: dict[str, str]

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> NameMap:
        by_id = dict(pairs)
        return cls(by_id, {name: id_ for id_, name in by_id.items()})


class _ApiKeyAuth(httpx.Auth):
    # Set per request rather than in Client.headers, so the key is not in the client's default
    # headers (whose repr would show it) and lives only in the SecretStr.
    def __init__(self, key: SecretStr) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["x-api-key"] = self._key.get_secret_value()
        yield request

    def __repr__(self) -> str:
        return "_ApiKeyAuth(key=**********)"


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every client of the process: building one loads the system's
    CA bundle (~40 ms), which a batched run would otherwise pay once per organization."""
    return httpx.create_ssl_context()


class GoliothClient:
    def __init__(
        self,
        api_key: str | SecretStr,
        project_id: str,
        base_url: str = "https://api.golioth.io",
        organization_id: str | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 16,
        transport: httpx.BaseTransport | None = None,
        key_env_var: str = "GOLIOTH_API_KEY",
    ) -> None:
        key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        if not key.get_secret_value().strip():
            raise ValueError(f"empty Golioth API key for project {project_id!r}: set {key_env_var}")
        if not project_id:
            raise ValueError("project_id is required")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.project_id = project_id
        self.organization_id = organization_id
        self.base_url = base_url.rstrip("/")
        self.max_concurrency = max_concurrency
        self.retry = retry or RetryPolicy()
        self.key_env_var = key_env_var
        self.stats = ClientStats()
        self._api_key = key
        self._budget = RetryBudget(self.retry.budget)
        self._project_path = f"/v1/projects/{quote(project_id, safe='')}"
        self._http = httpx.Client(
            base_url=self.base_url,
            auth=_ApiKeyAuth(key),
            timeout=timeout,
            transport=transport,
            # One connection per worker thread; more would only queue at the server.
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
            headers={"accept": "application/json", "user-agent": "golioth-sync"},
            verify=_tls_context(),
        )

    def __repr__(self) -> str:
        return (
            f"GoliothClient(project_id={self.project_id!r}, base_url={self.base_url!r}, "
            f"organization_id={self.organization_id!r}, max_concurrency={self.max_concurrency})"
        )

    __str__ = __repr__

    def __enter__(self) -> GoliothClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    @property
    def retry_budget_left(self) -> int:
        return self._budget.left

    # -- devices ---------------------------------------------------------------------------------

    def iter_device_pages(
        self, *, per_page: int = MAX_PER_PAGE, state_path: str | None = None, **filters: Any
    ) -> Iterator[ListPage[Device]]:
        """Yield pages one by one (0-based), for streaming large projects."""
        # Checked here, not in the generator, so bad arguments fail at the call.
        params = self._device_params(state_path, filters)
        _check_per_page(per_page)
        return self._iter_pages(f"{self._project_path}/devices", DEVICE_PAGE, params, per_page)

    def list_devices(
        self,
        *,
        per_page: int = MAX_PER_PAGE,
        state_path: str | None = None,
        attempts: int = 3,
        **filters: Any,
    ) -> list[Device]:
        """All matching devices (see `list_devices_counted`)."""
        listing = self.list_devices_counted(per_page=per_page, state_path=state_path, attempts=attempts, **filters)
        try:
            return listing.devices
        except errors.InvalidResponseError as exc:
            raise self._where(errors.InvalidResponseError, exc.message, "GET", f"{self._project_path}/devices") from exc

    def list_devices_counted(
        self,
        *,
        per_page: int = MAX_PER_PAGE,
        state_path: str | None = None,
        attempts: int = 3,
        **filters: Any,
    ) -> DeviceListing:
        """All matching devices, with the listing's own accounting: page 0 first (for `total`),
        then the rest concurrently.

        Pages fetched out of order while devices are created or deleted can shift a device onto
        a page already read, hiding it; a sync would then take it for deleted. So when the pages
        disagree on `total`, the whole listing is redone (up to `attempts` times) and then
        InconsistentListingError is raised rather than returning a possibly incomplete list.
        """
        path = f"{self._project_path}/devices"
        params = self._device_params(state_path, filters)
        _check_per_page(per_page)
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        with gc_paused():
            for attempt in range(1, attempts + 1):
                pages = self._list_devices_once(path, params, per_page)
                totals = {page.total for page in pages}
                if len(totals) == 1:
                    return DeviceListing.of(pages, relistings=attempt - 1)
                log.warning(
                    "device list changed while paging (totals %s); attempt %d/%d", sorted(totals), attempt, attempts
                )
        raise errors.InconsistentListingError(
            f"devices kept changing during {attempts} listings (totals {sorted(totals)})",
            method="GET",
            path=path,
            project_id=self.project_id,
            base_url=self.base_url,
        )

    def _list_devices_once(self, path: str, params: dict[str, Any], per_page: int) -> list[ListPage[DeviceRecord]]:
        first = self._get_page(path, DEVICE_RECORD_PAGE, params, 0, per_page)
        # The server's page size, should it clamp ours down; anything else would skip devices.
        size = first.per_page if 0 < first.per_page <= per_page else per_page
        rest = self._fetch_concurrently(
            {
                p: partial(self._get_page, path, DEVICE_RECORD_PAGE, params, p, size)
                for p in range(1, math.ceil(first.total / size))
            }
        )
        return [first, *(rest[p] for p in sorted(rest))]

    def get_device(self, device_id: str) -> Device:
        response = self._send("GET", self._device_path(device_id))
        return self._read(DEVICE_DATA, response).data

    def create_device(self, body: DeviceCreate) -> Device:
        """POST a device. Golioth has no idempotency key, so `_send` never repeats a create that
        failed after the server may have acted (a 500, a timeout after sending). A hardware id
        stands in for that key: with one, such a failure is followed by a lookup by hardware id,
        and the POST is repeated only if the device is not there. Without one, the failure
        surfaces and the sync engine's next run sorts it out."""
        path = f"{self._project_path}/devices"

        def post() -> Device:
            response = self._send("POST", path, body=body.to_body(), idempotent=False)
            return self._read(DEVICE_DATA, response).data

        if not body.hardware_ids:
            return post()
        return self._create_checked(post, lambda: self._created_device(body), path)

    def _created_device(self, body: DeviceCreate) -> Device | None:
        """The device an earlier POST of `body` created, if it did."""
        hardware_ids = body.hardware_ids or []
        if not hardware_ids:
            return None
        found = [
            d
            for d in self.list_devices(hardware_id=hardware_ids[0])
            if d.name == body.name and set(hardware_ids) <= set(d.hardware_ids)
        ]
        return found[0] if len(found) == 1 else None

    def update_device(self, device_id: str, body: DeviceUpdate) -> Device:
        response = self._send("PATCH", self._device_path(device_id), body=body.to_body())
        return self._read(DEVICE_DATA, response).data

    def replace_device(self, device_id: str, body: DeviceUpdate) -> Device:
        """PUT: replaces the device. Fields left out are cleared, which is the only documented way to
        remove a blueprint (PATCH has no "clear" for blueprintId)."""
        response = self._send("PUT", self._device_path(device_id), body=body.to_body())
        return self._read(DEVICE_DATA, response).data

    def delete_device(self, device_id: str) -> None:
        self._send("DELETE", self._device_path(device_id))

    # -- LightDB State ---------------------------------------------------------------------------

    def get_state(self, device_id: str, path: str) -> Any | None:
        """The value at `path`, or None when nothing is stored there (Golioth answers 404)."""
        try:
            response = self._send("GET", self._state_path(device_id, path))
        except errors.NotFoundError:
            return None
        return self._read(STATE_DATA, response).data

    def put_state(self, device_id: str, path: str, value: Any) -> None:
        self._send("PUT", self._state_path(device_id, path), body=value)

    # -- tags, blueprints, cohorts ----------------------------------------------------------------

    def list_tags(self) -> list[Tag]:
        return self._list_all(f"{self._project_path}/tags", TAG_PAGE)

    def create_tag(self, name: str) -> Tag:
        response = self._send("POST", f"{self._project_path}/tags", body={"name": name}, idempotent=False)
        return self._read(TAG_DATA, response).data

    def list_blueprints(self) -> list[Blueprint]:
        return self._list_all(f"{self._project_path}/blueprints", BLUEPRINT_PAGE)

    def create_blueprint(self, name: str, *, board_id: str | None = None, platform: str | None = None) -> Blueprint:
        body = {"name": name, "boardId": board_id, "platform": platform}
        response = self._send(
            "POST",
            f"{self._project_path}/blueprints",
            body={k: v for k, v in body.items() if v is not None},
            idempotent=False,
        )
        return self._read(BLUEPRINT_DATA, response).data

    def list_cohorts(self) -> list[Cohort]:
        if not self.organization_id:
            raise errors.ConfigurationError(
                "cohorts live under /v1/organizations/{organizationId}/...: create the client with organization_id",
                project_id=self.project_id,
                base_url=self.base_url,
            )
        org = quote(self.organization_id, safe="")
        path = f"/v1/organizations/{org}{self._project_path.removeprefix('/v1')}/cohorts"
        return self._list_all(path, COHORT_PAGE)

    def ensure_tag(self, name: str) -> Tag:
        """The tag called `name`, created if missing (a concurrent creator's 409 is fine). Names
        are unique, so a create whose outcome is unknown is looked up by name before a repeat."""
        path = f"{self._project_path}/tags"
        try:
            return self._create_checked(
                lambda: self.create_tag(name), lambda: self._named(self.list_tags(), name), path
            )
        except errors.AlreadyExistsError:
            return self._find_by_name(self.list_tags(), name)

    def ensure_blueprint(self, name: str) -> Blueprint:
        path = f"{self._project_path}/blueprints"
        try:
            return self._create_checked(
                lambda: self.create_blueprint(name),
                lambda: self._named(self.list_blueprints(), name),
                path,
            )
        except errors.AlreadyExistsError:
            return self._find_by_name(self.list_blueprints(), name)

    @staticmethod
    def _named(items: list[NamedT], name: str) -> NamedT | None:
        return next((item for item in items if item.name == name), None)

    def _find_by_name(self, items: list[NamedT], name: str) -> NamedT:
        for item in items:
            if item.name == name:
                return item
        raise errors.NotFoundError(
            f"{name!r} was reported as existing but is not listed", project_id=self.project_id, base_url=self.base_url
        )

    def tag_maps(self) -> NameMap:
        return NameMap.of((t.id, t.name) for t in self.list_tags())

    def blueprint_maps(self) -> NameMap:
        return NameMap.of((b.id, b.name) for b in self.list_blueprints())

    def cohort_maps(self) -> NameMap:
        return NameMap.of((c.cohort_id, c.name) for c in self.list_cohorts())

    # -- bulk ------------------------------------------------------------------------------------

    def run_many(self, calls: Calls) -> dict[Any, Any]:
        """Run independent calls with at most `max_concurrency` in flight; key -> result | error.

        Accepts bare callables (keyed by position), (key, fn) pairs, or a mapping. One item's
        failure never stops the others. Client-wide failures do: an AuthenticationError (every
        item would send the same bad key) or RetryBudgetExceeded (the API is down); items not yet
        started then get a BatchAborted, so the caller still learns which items were applied.
        """

        def aborted(cause: BaseException) -> errors.BatchAborted:
            error = errors.BatchAborted(
                f"not attempted: batch stopped after {type(cause).__name__}",
                project_id=self.project_id,
                base_url=self.base_url,
            )
            error.__cause__ = cause
            return error

        return run_bounded(
            calls,
            max_workers=self.max_concurrency,
            stop_on=(errors.AuthenticationError, errors.RetryBudgetExceeded),
            aborted=aborted,
        )

    # -- plumbing --------------------------------------------------------------------------------

    def _device_path(self, device_id: str) -> str:
        return f"{self._project_path}/devices/{quote(device_id, safe='')}"

    def _state_path(self, device_id: str, path: str) -> str:
        # The state path is a multi-segment path ("sensors/temp"): keep its slashes.
        return f"{self._device_path(device_id)}/data/{quote(path.strip('/'), safe='/')}"

    def _device_params(self, state_path: str | None, filters: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name, value in filters.items():
            camel = to_camel(name)
            if camel not in DEVICE_FILTERS:
                raise TypeError(f"unknown device filter {name!r}; known: {sorted(DEVICE_FILTERS)}")
            if value is None:
                continue
            params[camel] = ("true" if value else "false") if isinstance(value, bool) else value
        if state_path:
            params["statePath"] = state_path
        return params

    def _get_page(
        self,
        path: str,
        adapter: TypeAdapter[ListPage[T]],
        params: dict[str, Any],
        page: int,
        per_page: int,
    ) -> ListPage[T]:
        response = self._send("GET", path, params={**params, "page": page, "perPage": per_page})
        self.stats.record_page()
        result = self._read(adapter, response)
        if not 0 <= result.total <= MAX_LIST_TOTAL:
            raise self._where(
                errors.InvalidResponseError,
                f"implausible list total {result.total}",
                "GET",
                path,
                status=response.status_code,
            )
        return result

    def _read(self, adapter: TypeAdapter[T], response: httpx.Response) -> T:
        """Parse a 2xx answer. Models are lenient (missing and unknown fields are fine), so one that
        still fails is not an API answer at all (an HTML error page, a truncated body): raise a
        GoliothError that says where, rather than let a pydantic error escape the client."""
        try:
            return adapter.validate_json(response.content)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"]) or "body"
            raise self._where(
                errors.InvalidResponseError,
                f"unreadable answer ({where}: {problem['msg']})",
                response.request.method,
                response.request.url.path,
                status=response.status_code,
            ) from exc

    def _iter_pages(
        self,
        path: str,
        adapter: TypeAdapter[ListPage[T]],
        params: dict[str, Any],
        per_page: int,
    ) -> Iterator[ListPage[T]]:
        _check_per_page(per_page)
        page = 0
        while True:
            result = self._get_page(path, adapter, params, page, per_page)
            yield result
            page += 1
            size = result.per_page if 0 < result.per_page <= per_page else per_page
            if not result.list or page * size >= result.total:
                return

    def _list_all(self, path: str, adapter: TypeAdapter[ListPage[T]]) -> list[T]:
        return [item for page in self._iter_pages(path, adapter, {}, MAX_PER_PAGE) for item in page.list]

    def _fetch_concurrently(self, calls: dict[int, Callable[[], T]]) -> dict[int, T]:
        if not calls:
            return {}
        pool = ThreadPoolExecutor(min(self.max_concurrency, len(calls)), "golioth-page")
        try:
            futures = {key: pool.submit(fn) for key, fn in calls.items()}
            return {key: future.result() for key, future in futures.items()}
        finally:
            # On the first failure, drop queued pages instead of fetching them for nothing.
            pool.shutdown(wait=True, cancel_futures=True)

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = ...,
        idempotent: bool = True,
    ) -> httpx.Response:
        content = None if body is ... else json.dumps(body).encode()
        headers = None if body is ... else {"content-type": "application/json"}
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            retry_after = None
            try:
                response = self._http.request(method, path, params=params, content=content, headers=headers)
            except httpx.TransportError as exc:
                self.stats.record_transport_error()
                failure: errors.GoliothError = self._where(
                    errors.TransportError, f"{type(exc).__name__}: {exc}", method, path
                )
                failure.__cause__ = exc
                retryable = self.retry.retries_exception(exc, idempotent=idempotent)
                outcome = type(exc).__name__
            else:
                self.stats.record_response(response.status_code)
                if response.is_success:
                    log.debug("%s %s -> %s in %.3fs", method, path, response.status_code, time.monotonic() - started)
                    return response
                failure = self._error_from(response, method, path)
                retryable = self.retry.retries_status(response.status_code, idempotent=idempotent)
                retry_after = self.retry.parse_retry_after(response.headers.get("retry-after"))
                outcome = str(response.status_code)
            if not retryable or attempt >= self.retry.max_attempts:
                log.debug("%s %s -> %s, giving up after %d attempt(s)", method, path, outcome, attempt)
                raise failure
            if not self._budget.take():
                exhausted = self._where(
                    errors.RetryBudgetExceeded,
                    f"retry budget of {self._budget.total} spent; last failure: {failure.message}",
                    method,
                    path,
                )
                raise exhausted from failure
            delay = self.retry.delay(attempt, retry_after)
            self.stats.record_retry(delay)
            log.warning(
                "%s %s -> %s; retry %d/%d in %.2fs", method, path, outcome, attempt, self.retry.max_attempts - 1, delay
            )
            self.retry.sleep(delay)

    def _create_checked(self, post: Callable[[], T], find: Callable[[], T | None], path: str) -> T:
        """`post()` a create; when it fails with an unknown outcome, `find()` what it may have
        created, and only if nothing is found, POST again: with the usual backoff, attempts and
        retry budget. Under 10 % server errors this is what lets a sync create its devices and
        tags in one run instead of leaving one in ten for the next run."""
        attempt = 1
        while True:
            try:
                return post()
            except (errors.ServerError, errors.TransportError) as exc:
                if not self._outcome_unknown(exc) or attempt >= self.retry.max_attempts:
                    raise
                found = find()
                if found is not None:
                    return found
                if not self._budget.take():
                    exhausted = self._where(
                        errors.RetryBudgetExceeded,
                        f"retry budget of {self._budget.total} spent; last failure: {exc.message}",
                        "POST",
                        path,
                    )
                    raise exhausted from exc
                delay = self.retry.delay(attempt)
                self.stats.record_retry(delay)
                log.warning(
                    "POST %s failed (%s) and created nothing; retry %d/%d in %.2fs",
                    path,
                    exc.status or type(exc.__cause__).__name__,
                    attempt,
                    self.retry.max_attempts - 1,
                    delay,
                )
                self.retry.sleep(delay)
                attempt += 1

    def _outcome_unknown(self, exc: errors.GoliothError) -> bool:
        """A failure `_send` retries for idempotent calls but not for a POST: the server may
        have acted before it failed."""
        policy = self.retry
        if isinstance(exc, errors.TransportError):
            cause = exc.__cause__
            return isinstance(cause, BaseException) and (
                policy.retries_exception(cause, idempotent=True)
                and not policy.retries_exception(cause, idempotent=False)
            )
        return exc.status is not None and (
            policy.retries_status(exc.status, idempotent=True)
            and not policy.retries_status(exc.status, idempotent=False)
        )

    def _error_from(self, response: httpx.Response, method: str, path: str) -> errors.GoliothError:
        status = response.status_code
        code, message = None, None
        try:
            rpc = RPC_STATUS.validate_json(response.content)
            code, message = rpc.code or None, rpc.message or None
        except ValidationError:
            pass  # not grpc-gateway JSON (e.g. a proxy's HTML 502): fall back to the body text
        if message is None:
            message = response.text.strip()[:200] or response.reason_phrase
        if status in (401, 403):
            cls: type[errors.GoliothError] = errors.AuthenticationError
        elif status == 409 or code == 6:
            cls = errors.AlreadyExistsError
        elif status == 404:
            cls = errors.NotFoundError
        elif status == 400:
            cls = errors.InvalidArgumentError
        elif status == 429:
            cls = errors.RateLimitedError
        elif status >= 500:
            cls = errors.ServerError
        else:
            cls = errors.GoliothError
        error = self._where(cls, message, method, path, status=status, code=code)
        return error

    def _where(
        self, cls: type[errors.GoliothError], message: str, method: str, path: str, **extra: Any
    ) -> errors.GoliothError:
        if cls is errors.AuthenticationError:
            extra["key_env_var"] = self.key_env_var
        return cls(message, method=method, path=path, project_id=self.project_id, base_url=self.base_url, **extra)


def _check_per_page(per_page: int) -> None:
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise ValueError(f"per_page must be between 1 and {MAX_PER_PAGE}, got {per_page}")
