"""Golioth client unit tests over httpx.MockTransport: retry timing, classification, secrets.

Behaviour against a real HTTP server lives in test_golioth_client_sim.py.
"""

from __future__ import annotations

import json
import logging
import pickle
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from golioth_assets.golioth import (
    AlreadyExistsError,
    AuthenticationError,
    BatchAborted,
    ConfigurationError,
    Device,
    DeviceCreate,
    DeviceUpdate,
    GoliothClient,
    GoliothError,
    InconsistentListingError,
    InvalidArgumentError,
    NotFoundError,
    RateLimitedError,
    RetryBudgetExceeded,
    RetryPolicy,
    ServerError,
    TransportError,
)
from golioth_assets.golioth.models import COHORT_PAGE, DEVICE_PAGE

KEY = "sk-unit-test-secret-4f2a9c"
BASE = "https://golioth.test"


def err(status: int, code: int, message: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message, "details": []}, headers=headers)


class Recorder:
    """A MockTransport handler that answers from a script and records what it saw."""

    def __init__(self, *responses):
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        item = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(item, Exception):
            raise item
        return item(request) if callable(item) else item


class FakeSleep:
    def __init__(self):
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def make_client(handler, *, policy: RetryPolicy | None = None, **kwargs) -> GoliothClient:
    policy = policy or RetryPolicy(sleep=FakeSleep(), random=lambda: 0.5)
    return GoliothClient(KEY, "proj-1", base_url=BASE, retry=policy, transport=httpx.MockTransport(handler), **kwargs)


def device(i: int) -> dict:
    return {"id": f"d{i:05d}", "name": f"dev-{i}", "hardwareIds": [f"hw-{i}"], "enabled": True}


def pages_handler(n_devices: int, *, delay: float = 0.0, shift_after_first: int = 0):
    """Serve n_devices like Golioth's list; optionally insert devices at the front after page 0
    (the offset-pagination shift that concurrent creates cause)."""
    state = {"served": 0, "inflight": 0, "max_inflight": 0}
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        with lock:
            state["inflight"] += 1
            state["max_inflight"] = max(state["max_inflight"], state["inflight"])
        try:
            time.sleep(delay)
            page = int(request.url.params["page"])
            per_page = int(request.url.params["perPage"])
            devices = [device(i) for i in range(n_devices)]
            if shift_after_first and state["served"] > 0:
                devices = [device(100_000 + i) for i in range(shift_after_first)] + devices
            with lock:
                state["served"] += 1
            chunk = devices[page * per_page : (page + 1) * per_page]
            body = {"list": chunk, "page": page, "perPage": per_page, "total": str(len(devices))}
            return httpx.Response(200, json=body)
        finally:
            with lock:
                state["inflight"] -= 1

    return handler, state


# -- models ---------------------------------------------------------------------------------------

LIVE_DEVICE = {
    "id": "68bf1cc5425dd2ea93f248a3",
    "hardwareIds": ["20250908181325-c253700003"],
    "name": "C253700003",
    "createdAt": "2025-09-08T18:13:25.775Z",
    "updatedAt": "2025-09-08T18:13:25.775Z",
    "lastReport": "2025-11-09T23:35:06.957Z",
    "status": "-",
    "enabled": True,
    "cohortId": "nrf9151-cell-gateways",
    "metadata": {
        "lastSeenOnline": "2025-11-09T20:23:38.628Z",
        "lastSeenOffline": None,
        "update": {
            "main": {"package": "main", "version": "1.0.0", "state": "IDLE", "time": "2025-11-09T20:23:39.113864458Z"}
        },
    },
    "someFutureField": {"x": 1},
}


def test_device_parses_the_live_sample_with_missing_and_unknown_fields():
    d = Device.model_validate(LIVE_DEVICE)
    assert d.tag_ids == [] and d.blueprint_id is None and d.data is None
    assert d.cohort_id == "nrf9151-cell-gateways"
    assert d.metadata.last_seen_online == datetime(2025, 11, 9, 20, 23, 38, 628000, UTC)
    assert d.metadata.update["main"]["version"] == "1.0.0"


def test_omitted_enabled_means_disabled_and_blank_ids_mean_none():
    d = Device.model_validate({"id": "x", "blueprintId": "", "cohortId": ""})
    assert d.enabled is False and d.blueprint_id is None and d.cohort_id is None


def test_list_page_accepts_int64_as_strings_and_missing_counters():
    page = DEVICE_PAGE.validate_json(json.dumps({"list": [LIVE_DEVICE], "perPage": "100", "total": "250"}))
    assert (page.page, page.per_page, page.total, len(page.list)) == (0, 100, 250, 1)
    cohorts = COHORT_PAGE.validate_json(b'{"list":[{"cohortId":"c1","deviceCount":"7"}]}')
    assert cohorts.list[0].cohort_id == "c1" and cohorts.list[0].device_count == 7


def test_device_update_sends_only_fields_explicitly_set():
    assert DeviceUpdate(cohort_id="").to_body() == {"cohortId": ""}
    assert DeviceUpdate(enabled=False, add_tag_id=["t1"]).to_body() == {"enabled": False, "addTagId": ["t1"]}
    assert DeviceUpdate().to_body() == {}
    with pytest.raises(ValueError, match="cohort_id=None"):
        DeviceUpdate(cohort_id=None)
    with pytest.raises(ValueError):
        DeviceUpdate(cohortid="typo")


def test_device_create_omits_absent_optional_fields():
    assert DeviceCreate(name="n", hardware_ids=["h"]).to_body() == {"name": "n", "hardwareIds": ["h"]}


def test_parsing_100k_devices_from_raw_page_bytes_is_fast():
    raw = json.dumps({"list": [LIVE_DEVICE] * 1000, "page": 0, "perPage": 100, "total": 1000}).encode()
    started = time.process_time()  # CPU time: a busy machine slows the wall clock, not this
    for _ in range(100):
        DEVICE_PAGE.validate_json(raw)
    assert time.process_time() - started < 10  # ~2 s here; catches an accidental 10x


# -- retry policy ---------------------------------------------------------------------------------


def test_backoff_is_exponential_with_full_jitter_and_capped():
    policy = RetryPolicy(base_delay=0.5, max_delay=3.0, random=lambda: 1.0)
    assert [policy.delay(a) for a in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert RetryPolicy(base_delay=0.5, random=lambda: 0.25).delay(3) == 0.5
    assert RetryPolicy(random=lambda: 0.0).delay(4) == 0.0


def test_retry_after_seconds_and_http_date_are_honoured_and_capped():
    now = 1_700_000_000.0
    policy = RetryPolicy(max_delay=10.0, now=lambda: now)
    assert policy.parse_retry_after("3") == 3.0
    date = format_datetime(datetime.fromtimestamp(now, UTC) + timedelta(seconds=7), usegmt=True)
    assert policy.parse_retry_after(date) == pytest.approx(7.0)
    assert policy.parse_retry_after("soon") is None
    assert policy.delay(1, retry_after=120.0) == 10.0
    assert policy.delay(1, retry_after=2.0) == 2.0


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_idempotent_calls_retry_transient_statuses(status):
    sleep = FakeSleep()
    handler = Recorder(err(status, 14, "try later"), httpx.Response(200, json={"data": device(1)}))
    with make_client(handler, policy=RetryPolicy(sleep=sleep, random=lambda: 1.0)) as client:
        assert client.get_device("d00001").name == "dev-1"
    assert len(handler.requests) == 2 and sleep.calls == [0.5]
    assert client.stats.retries == 1 and client.stats.by_status[status] == 1
    assert client.stats.backoff_seconds == 0.5


@pytest.mark.parametrize(
    "status,cls",
    [
        (400, InvalidArgumentError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (409, AlreadyExistsError),
    ],
)
def test_client_errors_are_never_retried(status, cls):
    handler = Recorder(err(status, 3, "nope"))
    with make_client(handler) as client, pytest.raises(cls) as info:
        client.update_device("d1", DeviceUpdate(name="x"))
    assert len(handler.requests) == 1 and client.stats.retries == 0
    assert info.value.status == status and "nope" in str(info.value)


def test_invalid_argument_carries_goliaths_message():
    handler = Recorder(err(400, 3, "hex string is not a valid ObjectID"))
    with make_client(handler) as client, pytest.raises(InvalidArgumentError) as info:
        client.get_device("not-an-id")
    assert info.value.message == "hex string is not a valid ObjectID"
    assert info.value.code_name == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "failure",
    [
        err(500, 13, "boom"),
        err(502, 14, "bad gateway"),
        err(504, 4, "deadline"),
        httpx.ReadTimeout("read timed out"),
    ],
)
def test_create_is_not_retried_when_the_server_may_have_acted(failure):
    handler = Recorder(failure, httpx.Response(200, json={"data": device(1)}))
    with make_client(handler) as client, pytest.raises((ServerError, TransportError)):
        client.create_device(DeviceCreate(name="dev-1"))
    assert len(handler.requests) == 1


@pytest.mark.parametrize(
    "failure",
    [
        err(429, 8, "slow down"),
        err(503, 14, "unavailable"),
        httpx.ConnectError("refused"),
    ],
)
def test_create_is_retried_when_the_server_cannot_have_acted(failure):
    handler = Recorder(failure, httpx.Response(200, json={"data": device(1)}))
    with make_client(handler) as client:
        assert client.create_device(DeviceCreate(name="dev-1")).id == "d00001"
    assert len(handler.requests) == 2


def test_read_timeouts_on_reads_are_retried_then_surface_as_transport_error():
    handler = Recorder(httpx.ReadTimeout("read timed out"))
    policy = RetryPolicy(max_attempts=3, sleep=FakeSleep(), random=lambda: 0.0)
    with make_client(handler, policy=policy) as client, pytest.raises(TransportError) as info:
        client.get_device("d1")
    assert len(handler.requests) == 3 and client.stats.transport_errors == 3
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)


def test_exhausted_429_raises_rate_limited_and_honours_retry_after():
    sleep = FakeSleep()
    handler = Recorder(err(429, 8, "slow down", **{"Retry-After": "2"}))
    policy = RetryPolicy(max_attempts=3, max_delay=5, sleep=sleep)
    with make_client(handler, policy=policy) as client, pytest.raises(RateLimitedError):
        client.get_device("d1")
    assert sleep.calls == [2.0, 2.0] and client.stats.backoff_seconds == 4.0


def test_retry_budget_is_shared_across_calls_and_then_fails_fast():
    handler = Recorder(err(503, 14, "unavailable"))
    policy = RetryPolicy(max_attempts=4, budget=5, sleep=FakeSleep(), random=lambda: 0.0)
    with make_client(handler, policy=policy) as client:
        with pytest.raises(ServerError):
            client.get_device("a")  # 3 retries
        with pytest.raises(RetryBudgetExceeded) as info:
            client.get_device("b")  # 2 retries, then the budget is gone
        assert isinstance(info.value.__cause__, ServerError)
        with pytest.raises(RetryBudgetExceeded):
            client.get_device("c")  # no retries left at all
    assert client.stats.retries == 5 and len(handler.requests) == 4 + 3 + 1
    assert client.retry_budget_left == 0


def test_stats_as_metadata_is_flat():
    handler = Recorder(err(500, 13, "x"), httpx.Response(200, json={"data": device(1)}))
    with make_client(handler) as client:
        client.get_device("d1")
    assert client.stats.as_metadata() == {
        "golioth_requests": 2,
        "golioth_retries": 1,
        "golioth_pages": 0,
        "golioth_transport_errors": 0,
        "golioth_backoff_seconds": 0.25,
        "golioth_status_200": 1,
        "golioth_status_500": 1,
    }


# -- requests on the wire -------------------------------------------------------------------------


def test_key_goes_only_in_the_x_api_key_header():
    handler = Recorder(httpx.Response(200, json={"data": device(1)}))
    with make_client(handler) as client:
        client.update_device("d1", DeviceUpdate(cohort_id=""))
    request = handler.requests[0]
    assert request.headers["x-api-key"] == KEY
    assert KEY not in str(request.url) and KEY.encode() not in request.content
    assert request.method == "PATCH" and request.url.path == "/v1/projects/proj-1/devices/d1"
    assert json.loads(request.content) == {"cohortId": ""}
    assert "x-api-key" not in client._http.headers


def test_filters_and_state_path_become_spec_query_params():
    handler = Recorder(httpx.Response(200, json={"list": [], "total": 0}))
    with make_client(handler) as client:
        list(
            client.iter_device_pages(
                per_page=7, state_path="config", enabled=False, tags=["t1", "t2"], hardware_id="hw-1"
            )
        )
        with pytest.raises(TypeError, match="unknown device filter"):
            client.iter_device_pages(colour="red")
        with pytest.raises(ValueError):
            client.list_devices(per_page=101)
    params = handler.requests[0].url.params
    assert params["enabled"] == "false" and params.get_list("tags") == ["t1", "t2"]
    assert params["hardwareId"] == "hw-1" and params["statePath"] == "config"
    assert (params["page"], params["perPage"]) == ("0", "7")


def test_state_path_keeps_its_slashes_and_404_reads_as_none():
    handler = Recorder(err(404, 5, "not found"), httpx.Response(200, json={}))
    with make_client(handler) as client:
        assert client.get_state("d1", "sensors/temp") is None
        client.put_state("d1", "sensors/temp", {"c": 21.5})
    assert handler.requests[0].url.path == "/v1/projects/proj-1/devices/d1/data/sensors/temp"
    assert handler.requests[1].method == "PUT"
    assert json.loads(handler.requests[1].content) == {"c": 21.5}


def test_cohorts_need_an_organization_id():
    handler = Recorder(httpx.Response(200, json={"list": [{"cohortId": "c1", "name": "Gw"}], "total": 1}))
    with make_client(handler) as client, pytest.raises(ConfigurationError, match="organization"):
        client.list_cohorts()
    assert handler.requests == []
    with make_client(handler, organization_id="org-9") as client:
        assert client.cohort_maps().by_name == {"Gw": "c1"}
    assert handler.requests[0].url.path == "/v1/organizations/org-9/projects/proj-1/cohorts"


# -- pagination -----------------------------------------------------------------------------------


def test_iter_pages_stops_on_an_empty_page_even_if_total_says_more():
    handler = Recorder(
        httpx.Response(200, json={"list": [device(0)], "perPage": 1, "total": 5}),
        httpx.Response(200, json={"list": [], "page": 1, "perPage": 1, "total": 5}),
    )
    with make_client(handler) as client:
        pages = list(client.iter_device_pages(per_page=1))
    assert len(pages) == 2 and len(handler.requests) == 2


def test_list_devices_fetches_remaining_pages_concurrently_with_a_bound():
    handler, state = pages_handler(1000, delay=0.02)
    with make_client(handler, max_concurrency=4) as client:
        devices = client.list_devices(per_page=10)
    assert [d.id for d in devices] == [f"d{i:05d}" for i in range(1000)]
    assert state["served"] == 100 and client.stats.pages == 100
    assert state["max_inflight"] == 4


def test_list_devices_relists_when_pages_shift_under_it():
    # 3 devices appear at the front after page 0 was read: pages 1+ shift by 3 and disagree
    # with page 0 on `total`, so the first listing is discarded and redone.
    handler, state = pages_handler(25, shift_after_first=3)
    with make_client(handler) as client:
        devices = client.list_devices(per_page=10)
    ids = [d.id for d in devices]
    assert len(ids) == len(set(ids)) == 28
    assert {f"d{i:05d}" for i in range(25)} <= set(ids)
    assert state["served"] == 3 + 3


def test_list_devices_gives_up_when_the_list_never_settles():
    counter = iter(range(10_000))

    def handler(request):
        total = 30 + next(counter)  # every page sees a different total
        page = int(request.url.params["page"])
        return httpx.Response(
            200, json={"list": [device(page * 10 + i) for i in range(10)], "page": page, "perPage": 10, "total": total}
        )

    with make_client(handler) as client, pytest.raises(InconsistentListingError):
        client.list_devices(per_page=10, attempts=2)


# -- run_many -------------------------------------------------------------------------------------


def test_run_many_isolates_failures_and_keeps_keys():
    def handler(request):
        if request.url.path.endswith("/bad"):
            return err(404, 5, "device not found")
        return httpx.Response(200, json={"data": device(1)})

    with make_client(handler) as client:
        calls = {k: (lambda k=k: client.get_device(k)) for k in ["a", "bad", "c"]}
        results = client.run_many(calls)
    assert list(results) == ["a", "bad", "c"]
    assert isinstance(results["bad"], NotFoundError)
    assert results["a"].id == results["c"].id == "d00001"


def test_run_many_bounds_concurrency():
    inflight, peak, lock = [0], [0], threading.Lock()

    def handler(request):
        with lock:
            inflight[0] += 1
            peak[0] = max(peak[0], inflight[0])
        time.sleep(0.01)
        with lock:
            inflight[0] -= 1
        return httpx.Response(200, json={"data": device(1)})

    with make_client(handler, max_concurrency=3) as client:
        results = client.run_many(lambda: client.get_device("x") for _ in range(30))
    assert sorted(results) == list(range(30)) and peak[0] == 3


def test_run_many_stops_fast_on_authentication_error():
    handler = Recorder(err(401, 16, "error identifying user"))
    with make_client(handler, max_concurrency=2) as client:
        results = client.run_many(
            (i, lambda i=i: client.update_device(f"d{i}", DeviceUpdate(enabled=True))) for i in range(500)
        )
    assert len(results) == 500
    assert len(handler.requests) <= 2  # the in-flight ones; nothing retried, nothing queued ran
    aborted = [r for r in results.values() if isinstance(r, BatchAborted)]
    assert len(aborted) >= 498 and isinstance(aborted[0].__cause__, AuthenticationError)


# -- secrets --------------------------------------------------------------------------------------


def every_error(client: GoliothClient) -> list[GoliothError]:
    found = []
    for status in (400, 401, 403, 404, 409, 429, 500, 418):
        handler = Recorder(err(status, 2, "m"))
        with make_client(handler, policy=RetryPolicy(max_attempts=1)) as c:
            try:
                c.get_device("d1")
            except GoliothError as exc:
                found.append(exc)
    with make_client(Recorder(httpx.ConnectError("refused")), policy=RetryPolicy(max_attempts=1)) as c:
        with pytest.raises(TransportError) as info:
            c.get_device("d1")
        found.append(info.value)
    with make_client(Recorder(err(503, 14, "x")), policy=RetryPolicy(budget=0, sleep=FakeSleep())) as c:
        with pytest.raises(RetryBudgetExceeded) as info:
            c.get_device("d1")
        found.append(info.value)
    with pytest.raises(ConfigurationError) as info:
        client.list_cohorts()
    found.append(info.value)
    return found


def test_the_key_never_appears_in_repr_errors_or_logs(caplog):
    caplog.set_level(logging.DEBUG)
    handler = Recorder(err(503, 14, "x"), httpx.Response(200, json={"data": device(1)}))
    with make_client(handler) as client:
        client.get_device("d1")
        errors_seen = every_error(client)
        assert KEY not in repr(client) and KEY not in str(client)
        assert KEY not in repr(client._http.auth) and KEY not in repr(client._http.headers)
    assert len({type(e) for e in errors_seen}) == 10
    for error in errors_seen:
        for text in (str(error), repr(error), repr(error.__dict__), str(error.__cause__)):
            assert KEY not in text
        assert KEY.encode() not in pickle.dumps(error)
    assert "retry 1/7" in caplog.text  # logging did happen at DEBUG/WARNING
    assert KEY not in caplog.text


def test_authentication_error_names_project_base_url_and_env_var():
    handler = Recorder(err(401, 16, "error identifying user"))
    with make_client(handler, key_env_var="GOLIOTH_API_KEY_ACME") as client:
        with pytest.raises(AuthenticationError) as info:
            client.list_devices()
    text = str(info.value)
    assert "'proj-1'" in text and BASE in text and "GOLIOTH_API_KEY_ACME" in text
    assert len(handler.requests) == 1


def test_empty_key_fails_at_construction():
    with pytest.raises(ValueError, match="GOLIOTH_API_KEY"):
        GoliothClient("  ", "proj-1")


def test_run_many_stops_when_the_retry_budget_is_spent():
    handler = Recorder(err(503, 14, "unavailable"))
    policy = RetryPolicy(max_attempts=3, budget=2, sleep=FakeSleep(), random=lambda: 0.0)
    with make_client(handler, policy=policy, max_concurrency=1) as client:
        results = client.run_many(lambda: client.get_device("d") for _ in range(50))
    assert isinstance(results[0], ServerError)  # 3 attempts, 2 retries: budget now empty
    assert isinstance(results[1], RetryBudgetExceeded)
    assert all(isinstance(results[i], BatchAborted) for i in range(2, 50))
    assert len(handler.requests) == 4


def test_ensure_tag_returns_the_existing_tag_on_409():
    handler = Recorder(
        err(409, 6, "tag name already being used"),
        httpx.Response(200, json={"list": [{"id": "t1", "name": "other"}, {"id": "t2", "name": "prod"}], "total": 2}),
    )
    with make_client(handler) as client:
        assert client.ensure_tag("prod").id == "t2"
    assert [r.method for r in handler.requests] == ["POST", "GET"]


def test_gc_pause_is_reference_counted_across_overlapping_calls():
    import gc

    from golioth_assets.golioth.gcpause import gc_paused

    assert gc.isenabled()
    with gc_paused():
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer call is still building its result
    assert gc.isenabled()
