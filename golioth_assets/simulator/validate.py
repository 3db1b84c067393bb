"""Request-body field readers that fail the way grpc-gateway does (400 INVALID_ARGUMENT).

Unknown fields are ignored, as the gateway's default unmarshaler discards them.
"""

from __future__ import annotations

from typing import Any

from .errors import invalid

_ABSENT = object()


def require_object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise invalid("proto: syntax error: request body must be a JSON object")
    return body


def opt_str(body: dict, key: str) -> str | None:
    value = body.get(key, _ABSENT)
    if value is _ABSENT or value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"proto: invalid value for string field {key}: {value!r}")
    return value


def opt_str_list(body: dict, key: str) -> list[str] | None:
    value = body.get(key, _ABSENT)
    if value is _ABSENT or value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid(f"proto: invalid value for repeated string field {key}: {value!r}")
    return list(value)


def opt_bool(body: dict, key: str) -> bool | None:
    value = body.get(key, _ABSENT)
    if value is _ABSENT or value is None:
        return None
    if not isinstance(value, bool):
        raise invalid(f"proto: invalid value for bool field {key}: {value!r}")
    return value


def dedupe(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))
