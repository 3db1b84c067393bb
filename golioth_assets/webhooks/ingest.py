"""From an authenticated body to a `NewEvent`: parse, validate, derive the observed fields.

Everything that PostgreSQL would refuse later (NUL characters, unpaired surrogates, NaN, huge
identifiers) is refused here with a 400, because a row that fails inside a group commit would
otherwise fail its whole batch. So is every shape that would make a later step recurse deeply:
JSON nested more than MAX_JSON_DEPTH levels, object keys over MAX_KEY_CHARS, and Ce-Type paths of
more than MAX_PATH_SEGMENTS segments or segments over MAX_SEGMENT_CHARS (the path nests the data
once more in reported_state). Without these bounds an event 900 levels deep passed parsing and
failed with RecursionError inside the commit: a 500 that a sender retries for ever.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from golioth_assets.store.webhook_events import NewEvent, ObservedUpdate

EVENT_TYPES = ("device.created", "device.updated", "device.deleted", "device.online", "device.offline", "device.data")
# Identifiers land in a unique btree index and in text columns: bounded, no control characters.
_IDENTIFIER = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")
# A NUL escape in json.dumps output: `\u0000` after an even number of backslashes.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_PIPELINE_PATH = re.compile(r"^\.[A-Za-z]+/?")
_METADATA_KEYS = {"data", "device_id", "project_id", "timestamp"}
MAX_JSON_DEPTH = 32
MAX_KEY_CHARS = 200
MAX_PATH_SEGMENTS = 16
MAX_SEGMENT_CHARS = 100
# The whole Ce-Type: the type and the `.s` marker, then a path as long as the two bounds above allow
# (a fixed 500 used to refuse paths those bounds accept).
MAX_CE_TYPE_CHARS = 64 + MAX_PATH_SEGMENTS * (MAX_SEGMENT_CHARS + 1)


class BadRequest(Exception):
    """A short, safe reason for a 400."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        # "1e999" is valid JSON, but Python reads it as inf, which jsonb refuses: without this
        # check the event failed inside its group commit and was answered 500.
        raise BadRequest("number out of range")
    return value


def parse_json(body: bytes) -> Any:
    try:
        value = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadRequest("malformed JSON") from None
    check_json_shape(value)
    return value


def check_json_shape(value: Any) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH and keys longer than MAX_KEY_CHARS. Iterative, so no
    depth of input can make this check itself recurse."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if not isinstance(node, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        children: Iterable[Any] = node
        if isinstance(node, dict):
            if any(len(key) > MAX_KEY_CHARS for key in node):
                raise BadRequest(f"JSON object keys must be at most {MAX_KEY_CHARS} characters")
            children = node.values()
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def to_storable_json(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise BadRequest("NUL characters are not accepted")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("invalid Unicode (unpaired surrogate)") from None
    return text


def _identifier(value: str | None, what: str) -> str:
    if value is None or not _IDENTIFIER.match(value):
        raise BadRequest(f"{what} must be 1-200 printable characters")
    return value


def _parse_time(value: Any) -> datetime | None:
    """ISO 8601, epoch seconds, or Golioth's `{seconds, nanos}`; naive times are UTC."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        seconds = value.get("seconds")
        nanos = value.get("nanos", 0) or 0
        # Golioth sends 64-bit integers as strings sometimes. Anything else is a ValueError, which
        # pydantic reports as a bad field (a TypeError would escape it).
        if not isinstance(seconds, (int, float, str)) or not isinstance(nanos, (int, float, str)):
            raise ValueError("a {seconds, nanos} time takes numbers")
        value = int(seconds) + int(nanos) / 1e9
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise ValueError("unsupported time format")


class _EventTime(BaseModel):
    timestamp: datetime | None = None

    @field_validator("timestamp", mode="before")
    @classmethod
    def _time(cls, value: Any) -> datetime | None:
        try:
            return _parse_time(value)
        except (ValueError, TypeError, OverflowError, OSError):
            raise ValueError("timestamp must be ISO 8601, epoch seconds or {seconds, nanos}") from None


class SignedEvent(_EventTime):
    """The body of a Standard Webhooks signed device event."""

    model_config = ConfigDict(extra="ignore")

    type: Literal[EVENT_TYPES]  # type: ignore[valid-type]
    device_id: str = Field(pattern=_IDENTIFIER.pattern)
    project_id: str | None = None
    data: Any = None


class InjectedMetadata(_EventTime):
    """A Golioth pipeline body after the `inject-metadata` transformer."""

    model_config = ConfigDict(extra="forbid")

    data: Any = None
    device_id: str = Field(pattern=_IDENTIFIER.pattern)
    project_id: str | None = None


def _short_reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"[:200]


def _firmware(data: Any) -> dict[str, Any] | None:
    """Firmware versions as `{package: version}`, from either shape a device event may carry."""
    if not isinstance(data, Mapping):
        return None
    versions = data.get("firmware_versions")
    if isinstance(versions, Mapping):
        return {str(k): v for k, v in versions.items()}
    update = data.get("metadata", {}).get("update") if isinstance(data.get("metadata"), Mapping) else None
    if isinstance(update, Mapping):
        found = {str(k): v["version"] for k, v in update.items() if isinstance(v, Mapping) and "version" in v}
        return found or None
    return None


def _nest(path: list[str], data: Any) -> dict[str, Any] | None:
    if not path:
        return dict(data) if isinstance(data, Mapping) else None
    for segment in reversed(path):
        data = {segment: data}
    return data


def observed_fields(event_type: str, data: Any, at: datetime, path: list[str] | None = None) -> ObservedUpdate | None:
    """What a Golioth-owned observation tells us about the device row; None for registry events."""
    if event_type == "device.online":
        return ObservedUpdate(at=at, status="online", last_seen_online=at, firmware=_firmware(data))
    if event_type == "device.offline":
        return ObservedUpdate(at=at, status="offline", last_seen_offline=at, firmware=_firmware(data))
    if event_type == "device.data":
        # A device that reports is online; the store only applies that if nothing newer says otherwise.
        return ObservedUpdate(
            at=at, status="online", last_report=at, reported=_nest(path or [], data), firmware=_firmware(data)
        )
    return None


def _event_time(parsed: datetime | None, received_at: datetime) -> datetime:
    # A device clock ahead of ours must not pin last_report in the future and freeze later updates.
    return received_at if parsed is None or parsed > received_at else parsed


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def signed_event(
    *,
    service_id: int,
    organization_id: str,
    webhook_id: str,
    body: bytes,
    received_at: datetime,
    project_id: str | None = None,
) -> NewEvent:
    event_id = _identifier(webhook_id, "webhook-id")
    raw = parse_json(body)
    if not isinstance(raw, dict):
        raise BadRequest("body must be a JSON object")
    try:
        event = SignedEvent.model_validate(raw)
    except ValidationError as exc:
        raise BadRequest(_short_reason(exc)) from None
    if project_id and event.project_id and event.project_id != project_id:
        raise BadRequest("project id does not match this service")
    at = _event_time(event.timestamp, received_at)
    payload = {"type": event.type, "device_id": event.device_id, "data": event.data, "timestamp": _iso(at)}
    if event.project_id:
        payload["project_id"] = event.project_id
    return NewEvent(
        service_id=service_id,
        organization_id=organization_id,
        event_id=event_id,
        source="signed",
        event_type=event.type,
        golioth_device_id=event.device_id,
        payload_json=to_storable_json(payload),
        observed=observed_fields(event.type, event.data, at),
    )


def pipeline_path(ce_type: str) -> list[str]:
    """`io.golioth.data.v1/.s/env/temp` → ['env', 'temp']: where the message sits in the device's data."""
    _, _, rest = ce_type.partition("/")
    rest = _PIPELINE_PATH.sub("", rest)
    path = [segment for segment in rest.split("/") if segment]
    if len(path) > MAX_PATH_SEGMENTS or any(len(segment) > MAX_SEGMENT_CHARS for segment in path):
        raise BadRequest(
            f"Ce-Type path must have at most {MAX_PATH_SEGMENTS} segments of at most {MAX_SEGMENT_CHARS} characters"
        )
    return path


def pipeline_event(
    *,
    service_id: int,
    organization_id: str,
    project_id: str,
    headers: Mapping[str, str],
    body: bytes,
    received_at: datetime,
) -> NewEvent:
    raw = parse_json(body)
    device_id = headers.get("ce-source")
    subject = headers.get("ce-subject")
    timestamp = None
    data = raw
    if isinstance(raw, dict) and "device_id" in raw and set(raw) <= _METADATA_KEYS:
        try:
            meta = InjectedMetadata.model_validate(raw)
        except ValidationError as exc:
            raise BadRequest(_short_reason(exc)) from None
        if device_id and device_id != meta.device_id:
            raise BadRequest("Ce-Source and device_id disagree")
        device_id, data, timestamp = meta.device_id, meta.data, meta.timestamp
        subject = subject or meta.project_id
    device_id = _identifier(device_id, "Ce-Source (device id)")
    # A pipeline of another project pointed at this service would write foreign devices' data.
    if subject and subject != project_id:
        raise BadRequest("project id does not match this service")
    ce_type = headers.get("ce-type") or "io.golioth.data.v1"
    if len(ce_type) > MAX_CE_TYPE_CHARS:
        raise BadRequest("Ce-Type too long")
    ce_id = headers.get("ce-id")
    if ce_id:
        event_id = _identifier(ce_id, "Ce-Id")
    else:
        digest = hashlib.sha256(f"{service_id}\x1f{device_id}\x1f{ce_type}\x1f".encode())
        digest.update(body)
        event_id = "sha256:" + digest.hexdigest()
    at = _event_time(timestamp, received_at)
    path = pipeline_path(ce_type)
    payload = {
        "type": "device.data",
        "device_id": device_id,
        "data": data,
        "timestamp": _iso(at),
        "project_id": subject or project_id,
        "ce_type": ce_type,
    }
    return NewEvent(
        service_id=service_id,
        organization_id=organization_id,
        event_id=event_id,
        source="golioth_pipeline",
        event_type="device.data",
        golioth_device_id=device_id,
        payload_json=to_storable_json(payload),
        observed=observed_fields("device.data", data, at, path),
    )
