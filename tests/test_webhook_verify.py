"""Signature and secret checks against known-good vectors, with an injected clock (no I/O)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from golioth_assets.webhooks.ingest import BadRequest, observed_fields, pipeline_path, signed_event
from golioth_assets.webhooks.verify import Unauthorized, check_static_secret, sign, verify_signature

# The Standard Webhooks reference vector (also used by the svix libraries' own tests).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
OTHER_SECRET = "whsec_" + base64.b64encode(b"another-secret-of-32-bytes-long!").decode()


def headers(signature: str = VECTOR_SIG, ts: int = VECTOR_TS, msg_id: str = VECTOR_ID) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def verify(body=VECTOR_BODY, hdrs=None, secrets=(VECTOR_SECRET,), now=VECTOR_TS) -> str:
    return verify_signature(body, hdrs or headers(), list(secrets), now=now)


def test_known_good_vector():
    assert verify() == VECTOR_ID
    assert sign(VECTOR_BODY, VECTOR_ID, VECTOR_TS, VECTOR_SECRET) == VECTOR_SIG


def test_rotation_any_of_several_signatures_may_match():
    other = sign(VECTOR_BODY, VECTOR_ID, VECTOR_TS, OTHER_SECRET)
    assert verify(hdrs=headers(f"{other} {VECTOR_SIG}")) == VECTOR_ID
    assert verify(hdrs=headers(f"v2,abc {VECTOR_SIG} {other}")) == VECTOR_ID
    # ...and the receiver may hold several secrets during its own rotation.
    assert verify(hdrs=headers(other), secrets=(VECTOR_SECRET, OTHER_SECRET)) == VECTOR_ID


@pytest.mark.parametrize("offset", [-300, -299, 0, 299, 300])
def test_tolerance_accepts_up_to_five_minutes_either_way(offset):
    assert verify(now=VECTOR_TS + offset) == VECTOR_ID


@pytest.mark.parametrize("offset", [-301, 301, -86400])
def test_tolerance_rejects_beyond_five_minutes(offset):
    with pytest.raises(Unauthorized):
        verify(now=VECTOR_TS + offset)


def test_every_single_byte_tampering_is_detected():
    for i in range(len(VECTOR_BODY)):
        tampered = bytearray(VECTOR_BODY)
        tampered[i] ^= 0x01
        with pytest.raises(Unauthorized):
            verify(body=bytes(tampered))


@pytest.mark.parametrize(
    "bad",
    [
        {"secrets": (OTHER_SECRET,)},
        {"secrets": ()},
        {"hdrs": headers(msg_id="msg_other")},
        {"hdrs": headers(ts=VECTOR_TS + 1)},
        {"hdrs": headers(signature="v1,")},
        {"hdrs": headers(signature="v1")},
        {"hdrs": headers(signature="v1,not base64!")},
        {"hdrs": headers(signature=VECTOR_SIG.replace("v1", "v2"))},
        {"hdrs": {k: v for k, v in headers().items() if k != "webhook-signature"}},
        {"hdrs": {k: v for k, v in headers().items() if k != "webhook-id"}},
        {"hdrs": {k: v for k, v in headers().items() if k != "webhook-timestamp"}},
        {"hdrs": headers() | {"webhook-timestamp": "1614265330.0"}},
        {"body": b"\xff" + VECTOR_BODY},
    ],
    ids=[
        "wrong secret",
        "no secret configured",
        "other id",
        "other timestamp",
        "empty signature",
        "no comma",
        "not base64",
        "unknown version",
        "missing signature",
        "missing id",
        "missing timestamp",
        "fractional timestamp",
        "not UTF-8",
    ],
)
def test_anything_else_is_unauthorized(bad):
    with pytest.raises(Unauthorized):
        verify(**bad)


def test_static_secret_constant_time_check():
    check_static_secret("s3cret", ["old", "s3cret"])
    for presented in ("s3cre", "s3cret ", "S3CRET", "", None):
        with pytest.raises(Unauthorized):
            check_static_secret(presented, ["old", "s3cret"])
    with pytest.raises(Unauthorized):
        check_static_secret("anything", [])


def test_unauthorized_carries_no_detail():
    with pytest.raises(Unauthorized) as info:
        verify(secrets=(OTHER_SECRET,))
    assert str(info.value) == ""


# --- ingest details that don't need a server ---------------------------------------------------


@pytest.mark.parametrize(
    ("ce_type", "path"),
    [
        ("io.golioth.data.v1/.s/env", ["env"]),
        ("io.golioth.data.v1/.s/env/temp", ["env", "temp"]),
        ("io.golioth.data.v1/.s/", []),
        ("io.golioth.data.v1", []),
    ],
)
def test_pipeline_path(ce_type, path):
    assert pipeline_path(ce_type) == path


NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "stamp", ["2025-06-01T11:00:00Z", "2025-06-01T11:00:00+00:00", 1748775600, {"seconds": "1748775600", "nanos": 0}]
)
def test_signed_event_timestamps_in_every_accepted_shape(stamp):
    body = {"type": "device.online", "device_id": "d", "timestamp": stamp}
    import json

    event = signed_event(
        service_id=1, organization_id="o", webhook_id="m", body=json.dumps(body).encode(), received_at=NOW
    )
    assert event.observed.last_seen_online == datetime(2025, 6, 1, 11, 0, tzinfo=UTC)


def test_future_device_clock_is_clamped_to_arrival():
    body = b'{"type": "device.data", "device_id": "d", "timestamp": "2099-01-01T00:00:00Z", "data": {"a": 1}}'
    event = signed_event(service_id=1, organization_id="o", webhook_id="m", body=body, received_at=NOW)
    assert event.observed.last_report == NOW


def test_firmware_versions_are_read_from_golioth_metadata():
    data = {"metadata": {"update": {"main": {"version": "1.2.3"}, "modem": {"version": "2.0"}}}}
    assert observed_fields("device.online", data, NOW).firmware == {"main": "1.2.3", "modem": "2.0"}
    assert observed_fields("device.data", {"firmware_versions": {"main": "9"}}, NOW).firmware == {"main": "9"}
    assert observed_fields("device.updated", data, NOW) is None


def test_overlong_webhook_id_is_refused():
    with pytest.raises(BadRequest):
        signed_event(
            service_id=1,
            organization_id="o",
            webhook_id="m" * 201,
            body=b'{"type": "device.online", "device_id": "d"}',
            received_at=NOW,
        )
