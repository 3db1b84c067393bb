"""Issue 7, fault 6: hostile input, fuzzed with hypothesis.

1. The webhook endpoint over real HTTP: random bodies (bytes, JSON of any shape, near-valid events
   with hostile fields, number literals JSON allows but PostgreSQL does not), content types,
   header sets, sizes around the limit, signatures right and wrong, service ids. Every answer is
   a 4xx or a clean 2xx: never a 5xx, never a hang (the client times out after 10 s), never a
   half-written row (a refused request changes neither the inbox nor the device row; an
   acknowledged one is stored). Valid signed events are always acknowledged and stored as sent.
2. The Golioth client over httpx.MockTransport: list pages, device bodies, LightDB values and error
   bodies of random shapes. Every call returns a parsed model or raises a GoliothError subclass:
   never a ValidationError, KeyError, TypeError or JSONDecodeError escaping from the client, and
   no hang on an absurd `total`.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from golioth_assets.engine.golioth_frames import References, records_to_frame
from golioth_assets.golioth import DeviceCreate, DeviceUpdate, GoliothClient, GoliothError, RetryPolicy
from golioth_assets.golioth.models import Device, Tag
from golioth_assets.store.inventory import REMOTE_COLUMNS
from golioth_assets.webhooks.app import create_app
from golioth_assets.webhooks.config import ReceiverConfig
from golioth_assets.webhooks.ingest import EVENT_TYPES
from golioth_assets.webhooks.testing import ServerThread, make_webhook_service, signed_headers
from tests.fixtures.webhooks import make_linked_device

SECRET = "whsec_" + base64.b64encode(b"fuzzing-secret-of-32-bytes-long!").decode()
SECRET_ENV = f"GOLIOTH_FAULTS_FUZZ_{uuid.uuid4().hex[:8].upper()}"
PIPELINE_SECRET = "fuzzing-pipeline-secret-0123456789abcdef"
PIPELINE_SECRET_ENV = SECRET_ENV + "_PIPELINE"
STATIC_HEADER = "x-golioth-sync-secret"
MAX_BODY = 4096
FUZZ = settings(
    max_examples=int(os.environ.get("GS_FUZZ_EXAMPLES", "250")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- 1. the webhook endpoint -------------------------------------------------------------------------


class Target:
    def __init__(self, engine, url: str, service_id: int, golioth_id: str, device_id: str):
        self.engine, self.url, self.service_id = engine, url, service_id
        self.golioth_id, self.device_id = golioth_id, device_id
        self.client = httpx.Client(base_url=url, timeout=10)

    def state(self) -> tuple:
        """What a request may write: the inbox of this service, and the device row."""
        with self.engine.connect() as conn:
            events = conn.execute(
                sa.text("SELECT count(*) FROM webhook_events WHERE service_id = :s"), {"s": self.service_id}
            ).scalar_one()
            device = conn.execute(
                sa.text("SELECT observed_at, reported_state, status, version FROM devices WHERE id = :d"),
                {"d": self.device_id},
            ).one()
        return events, tuple(device)

    def stored(self, event_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    sa.text("SELECT payload, status FROM webhook_events WHERE service_id = :s AND event_id = :e"),
                    {"s": self.service_id, "e": event_id},
                )
                .mappings()
                .first()
            )
        return dict(row) if row else None


@pytest.fixture(scope="module")
def target(engine) -> Iterator[Target]:
    org = f"fuzz-{uuid.uuid4().hex[:10]}"
    os.environ[SECRET_ENV] = SECRET
    os.environ[PIPELINE_SECRET_ENV] = PIPELINE_SECRET
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO organizations (id, name) VALUES (:o, :o)"), {"o": org})
    service_id = make_webhook_service(engine, org, pipeline_secret_env=PIPELINE_SECRET_ENV, signing_key_env=SECRET_ENV)
    golioth_id = f"fuzzdev{uuid.uuid4().hex[:12]}"
    device_id = make_linked_device(engine, org, service_id, golioth_id)
    config = ReceiverConfig(max_body_bytes=MAX_BODY, service_cache_seconds=60)
    app = create_app(config, engine=engine)
    try:
        with ServerThread(app, limits=config) as server:
            t = Target(engine, server.url, service_id, golioth_id, device_id)
            yield t
            t.client.close()
    finally:
        os.environ.pop(SECRET_ENV, None)
        os.environ.pop(PIPELINE_SECRET_ENV, None)


json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
hostile_text = st.one_of(
    st.text(max_size=40),  # any code point but surrogates, NUL and control characters included
    st.sampled_from(["", " ", "\x00", "a\x00b", "\t", "\ud800", "x" * 201, "x" * 5000, "../../etc", "🙂", "NaN"]),
)
# Number literals JSON's grammar allows but Python reads as inf (and PostgreSQL refuses), and
# integers beyond Python's int parsing limit.
nasty_numbers = st.sampled_from(
    ["1e999", "-1e999", "1E400", "9" * 5000, "-0", "1.5e-400", "123456789012345678901234567890"]
)
timestamps = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(["2025-01-01T00:00:00Z", "2999-12-31T23:59:59+14:00", "0001-01-01", "yesterday"]),
    st.fixed_dictionaries({"seconds": json_scalars, "nanos": json_scalars}),
    st.dictionaries(st.text(max_size=8), json_scalars, max_size=3),
)


@st.composite
def event_dicts(draw, golioth_id: str) -> dict:
    body = {
        "type": draw(st.sampled_from(EVENT_TYPES) | hostile_text),
        "device_id": draw(st.sampled_from([golioth_id, "unknown-device"]) | hostile_text),
        "data": draw(json_values),
    }
    if draw(st.booleans()):
        body["timestamp"] = draw(timestamps)
    if draw(st.booleans()):
        body["project_id"] = draw(st.sampled_from(["proj-test", "another-project"]) | hostile_text)
    if draw(st.booleans()):
        body.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3)))
    return body


@st.composite
def bodies(draw, golioth_id: str) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "event", "event-with-nasty-number", "pipeline", "size"]))
    if kind == "bytes":
        return draw(st.binary(max_size=512))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "event":
        text = json.dumps(draw(event_dicts(golioth_id)), ensure_ascii=draw(st.booleans()))
        # Lone surrogates can't be UTF-8 encoded: send them escaped, as a hostile sender would.
        return (
            text.encode("utf-8", "surrogatepass") if draw(st.booleans()) else text.encode("utf-8", "backslashreplace")
        )
    if kind == "event-with-nasty-number":
        number = draw(nasty_numbers)
        where = draw(st.sampled_from(['"data": {"v": %s}', '"timestamp": %s', '"data": [%s]']))
        return (f'{{"type": "device.data", "device_id": "{golioth_id}", {where % number}}}').encode()
    if kind == "pipeline":
        return json.dumps(
            {
                "data": draw(json_values),
                "device_id": draw(st.sampled_from([golioth_id]) | hostile_text),
                "timestamp": draw(timestamps),
            }
        ).encode("utf-8", "surrogatepass")
    size = draw(st.sampled_from([MAX_BODY - 1, MAX_BODY, MAX_BODY + 1, 3 * MAX_BODY]))
    prefix = b'{"type": "device.data", "device_id": "%s", "data": {"pad": "' % golioth_id.encode()
    return prefix + b"a" * max(0, size - len(prefix) - 3) + b'"}}'


# Printable ASCII; h11 (the client's HTTP library) refuses values with surrounding whitespace.
header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(str.strip)


@st.composite
def requests(draw, target: Target) -> tuple[str, bytes, dict[str, str]]:
    body = draw(bodies(target.golioth_id))
    content_types = st.sampled_from(
        ["application/json"] * 6
        + [
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
            "text/plain",
            "application/cbor",
            "",
            "application/jsonx",
        ]
    )
    headers = {"content-type": draw(content_types if draw(st.integers(0, 4)) else header_values)}
    # Weighted towards requests that get past authentication, where the parsing and storing are.
    auth = draw(
        st.sampled_from(["signed"] * 4 + ["static"] * 3 + ["signed-bad", "signed-partial", "static-bad", "none"])
    )
    msg_id = draw(st.sampled_from([f"msg_{uuid.uuid4().hex}"]) | header_values)
    if auth == "signed" and msg_id.strip() == msg_id and msg_id:
        try:
            headers.update(signed_headers(body, SECRET, msg_id=msg_id))
        except UnicodeDecodeError:  # a signer signs text; bytes that aren't UTF-8 can't be signed
            headers.update(signed_headers(b"{}", SECRET, msg_id=msg_id))
        headers["content-type"] = draw(st.sampled_from(["application/json", headers["content-type"]]))
    elif auth == "signed-bad":
        headers.update(
            {
                "webhook-id": msg_id,
                "webhook-timestamp": draw(header_values | st.just(str(int(time.time())))),
                "webhook-signature": draw(header_values | st.just("v1," + base64.b64encode(os.urandom(32)).decode())),
            }
        )
    elif auth == "signed-partial":
        headers[draw(st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature"]))] = draw(header_values)
    elif auth == "static":
        headers[STATIC_HEADER] = PIPELINE_SECRET
    elif auth == "static-bad":
        headers[STATIC_HEADER] = draw(header_values)
    for name in draw(st.lists(st.sampled_from(["ce-source", "ce-id", "ce-type", "ce-subject", "ce-time"]), max_size=4)):
        headers[name] = draw(st.sampled_from([target.golioth_id, "proj-test"]) | header_values)
    service = draw(st.sampled_from([str(target.service_id)] * 20 + ["0", "-1", "99999999999999999999", "abc", "%00"]))
    return f"/webhooks/golioth/{service}", body, headers


def _check_answer(target: Target, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    before = target.state()
    response = target.client.post(path, content=body, headers=headers)  # a hang fails with a timeout
    assert response.status_code < 500, (response.status_code, response.text, body[:300], headers)
    if currently_in_test_context():
        event(f"status {response.status_code}")  # `--hypothesis-show-statistics` shows what was reached
    answer = response.json()
    if response.status_code in (200, 202):
        assert answer["status"] == ("accepted" if response.status_code == 202 else "duplicate")
        stored = target.stored(answer["event_id"])
        assert stored is not None, "acknowledged but not stored"
    else:
        assert 400 <= response.status_code < 500 and answer["error"], response.text
        assert target.state() == before, "a refused request wrote something"
    return response


@FUZZ
@given(data=st.data())
def test_webhook_endpoint_answers_4xx_or_a_clean_2xx_to_anything(target, data):
    path, body, headers = data.draw(requests(target))
    _check_answer(target, path, body, headers)


@pytest.mark.parametrize("number", ["1e999", "-1e999", "1E400"])
@pytest.mark.parametrize("where", ['"data": {"v": %s}', '"timestamp": %s'])
def test_numbers_beyond_float_range_are_refused_with_400_not_500(target, number, where):
    """Found by the fuzzer: valid JSON, read by Python as inf, refused by jsonb inside the group
    commit, answered 500. Now a 400 at parse time."""
    body = (f'{{"type": "device.data", "device_id": "{target.golioth_id}", {where % number}}}').encode()
    for headers in (
        signed_headers(body, SECRET),
        {"content-type": "application/json", STATIC_HEADER: PIPELINE_SECRET, "ce-source": target.golioth_id},
    ):
        response = _check_answer(target, f"/webhooks/golioth/{target.service_id}", body, headers)
        assert response.status_code == 400 and response.json()["error"] in ("number out of range", "malformed JSON")


valid_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
valid_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | valid_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(valid_text, inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(event_type=st.sampled_from(EVENT_TYPES), data=valid_json, ensure_ascii=st.booleans())
def test_valid_signed_events_are_always_acknowledged_and_stored_as_sent(target, event_type, data, ensure_ascii):
    body = json.dumps(
        {"type": event_type, "device_id": target.golioth_id, "data": data}, ensure_ascii=ensure_ascii
    ).encode()
    msg_id = f"msg_{uuid.uuid4().hex}"
    response = target.client.post(
        f"/webhooks/golioth/{target.service_id}", content=body, headers=signed_headers(body, SECRET, msg_id=msg_id)
    )
    assert response.status_code == 202, response.text
    with target.engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT payload::text FROM webhook_events WHERE service_id = :s AND event_id = :e"),
            {"s": target.service_id, "e": msg_id},
        ).scalar_one()
    # JSON numbers are decimals, and jsonb keeps them as such: compare as decimals, not floats.
    exact = {"parse_float": Decimal, "parse_int": Decimal}
    assert json.loads(stored, **exact)["data"] == json.loads(body, **exact)["data"]
    assert json.loads(stored)["device_id"] == target.golioth_id


# -- 2. the client's parsing of Golioth's answers ------------------------------------------------------


any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=15,
)
device_like = st.fixed_dictionaries(
    {},
    optional={
        "id": any_json | st.text(min_size=1, max_size=24),
        "name": any_json,
        "hardwareIds": any_json | st.lists(st.text(max_size=8), max_size=3),
        "tagIds": any_json,
        "enabled": any_json,
        "blueprintId": any_json,
        "cohortId": any_json,
        "createdAt": any_json | st.sampled_from(["2025-01-01T00:00:00Z", "not a date"]),
        "metadata": any_json
        | st.fixed_dictionaries(
            {},
            optional={
                "lastSeenOnline": any_json,
                "status": any_json,
                "update": any_json,
                "lastSettingsStatus": any_json,
            },
        ),
        "data": any_json,
    },
)
page_like = st.fixed_dictionaries(
    {},
    optional={
        "list": any_json | st.lists(device_like, max_size=4),
        "page": any_json,
        "perPage": st.integers(min_value=-5, max_value=300) | any_json,
        "total": st.integers(min_value=-5, max_value=500)
        | st.sampled_from([10**6 + 1, 10**7, 2**63, "12", "x"])
        | any_json,
    },
)
answers = st.one_of(
    st.tuples(st.just(200), page_like.map(json.dumps)),
    st.tuples(st.just(200), st.fixed_dictionaries({"data": device_like | any_json}).map(json.dumps)),
    st.tuples(st.just(200), any_json.map(json.dumps)),
    st.tuples(st.just(200), st.binary(max_size=64).map(lambda b: b.decode("latin-1"))),
    st.tuples(
        st.sampled_from([400, 401, 403, 404, 409, 418, 429, 500, 502, 503]),
        (st.fixed_dictionaries({"code": any_json, "message": any_json}) | any_json).map(json.dumps)
        | st.text(max_size=40),
    ),
)

CALLS = {
    "list_devices": lambda c: c.list_devices(),
    "list_devices_with_state": lambda c: c.list_devices(state_path="desired"),
    # A full sync's path: the listing's records straight into the inventory frame.
    "device_frame": lambda c: records_to_frame(c.list_devices_counted(state_path="desired").records, References()),
    "get_device": lambda c: c.get_device("d1"),
    "create_device": lambda c: c.create_device(DeviceCreate(name="n", hardware_ids=["hw"])),
    "update_device": lambda c: c.update_device("d1", DeviceUpdate(name="n")),
    "get_state": lambda c: c.get_state("d1", "desired"),
    "list_tags": lambda c: c.list_tags(),
    "ensure_tag": lambda c: c.ensure_tag("t"),
    "list_cohorts": lambda c: c.list_cohorts(),
}


@FUZZ
@given(call=st.sampled_from(sorted(CALLS)), script=st.lists(answers, min_size=1, max_size=6))
def test_client_turns_any_answer_into_a_model_or_a_golioth_error(call, script):
    served = []

    def handler(request: httpx.Request) -> httpx.Response:
        status, text = script[min(len(served), len(script) - 1)]
        served.append(request)
        assert len(served) < 2_000, "the client keeps asking: an absurd total or page size was trusted"
        return httpx.Response(
            status,
            content=text.encode("utf-8", "surrogatepass"),
            headers={"content-type": "application/json", "retry-after": "0"},
        )

    policy = RetryPolicy(max_attempts=2, sleep=lambda s: None, random=lambda: 0.0)
    client = GoliothClient(
        "k" * 30,
        "p1",
        base_url="https://golioth.test",
        organization_id="o1",
        retry=policy,
        transport=httpx.MockTransport(handler),
    )
    started = time.monotonic()
    with client:
        try:
            result = CALLS[call](client)
        except GoliothError:
            pass
        else:
            _assert_parsed(call, result)
    assert time.monotonic() - started < 10


def _assert_parsed(call: str, result) -> None:
    if call.startswith("list_devices"):
        assert all(isinstance(d, Device) for d in result)
    elif call == "device_frame":
        assert list(result.columns) == REMOTE_COLUMNS and result["golioth_device_id"].map(type).eq(str).all()
    elif call in ("get_device", "create_device", "update_device"):
        assert isinstance(result, Device)
    elif call == "list_tags":
        assert all(isinstance(t, Tag) for t in result)
    elif call == "ensure_tag":
        assert isinstance(result, Tag)
    # get_state hands back whatever JSON value is stored there (or None), by design.
