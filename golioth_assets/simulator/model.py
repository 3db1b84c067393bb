"""In-memory resources and their JSON shape.

Shapes follow components/schemas in the spec (goliothDevice, comgoliothTag,
goliothBlueprint, goliothCohort) plus the live-API quirk that empty fields are left
out. Device JSON is cached as bytes because list pages are the hot path: a page of
100 devices is then a join of 100 cached strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .clock import format_ms
from .lightdb import _MISSING, get_at

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(value: Any) -> bytes:
    return _dumps(value).encode()


class Device:
    __slots__ = (
        "id",
        "name",
        "hardware_ids",
        "tag_ids",
        "blueprint_id",
        "cohort_id",
        "enabled",
        "created_ms",
        "updated_ms",
        "metadata",
        "state",
        "deleted",
        "_json",
    )

    def __init__(
        self,
        id: str,
        name: str,
        hardware_ids: list[str],
        tag_ids: list[str],
        blueprint_id: str,
        cohort_id: str,
        enabled: bool,
        created_ms: int,
        updated_ms: int,
        metadata: dict,
        state: dict | None = None,
    ) -> None:
        self.id = id
        self.name = name
        self.hardware_ids = hardware_ids
        self.tag_ids = tag_ids
        self.blueprint_id = blueprint_id
        self.cohort_id = cohort_id
        self.enabled = enabled
        self.created_ms = created_ms
        self.updated_ms = updated_ms
        self.metadata = metadata
        self.state = state
        self.deleted = False
        self._json: bytes | None = None

    def touch(self, now_ms: int) -> None:
        self.updated_ms = now_ms
        self._json = None

    def invalidate(self) -> None:
        self._json = None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"id": self.id}
        if self.hardware_ids:
            out["hardwareIds"] = list(self.hardware_ids)
        out["name"] = self.name
        out["createdAt"] = format_ms(self.created_ms)
        out["updatedAt"] = format_ms(self.updated_ms)
        if self.tag_ids:
            out["tagIds"] = list(self.tag_ids)
        if self.blueprint_id:
            out["blueprintId"] = self.blueprint_id
        last_report = self.metadata.get("lastReport")
        if last_report:
            out["lastReport"] = last_report  # deprecated mirror of metadata.lastReport
        out["status"] = "-"
        out["enabled"] = self.enabled
        if self.cohort_id:
            out["cohortId"] = self.cohort_id
        if self.metadata:
            out["metadata"] = self.metadata
        return out

    def json_bytes(self) -> bytes:
        cached = self._json
        if cached is None:
            cached = self._json = dumps(self.to_dict())
        return cached

    def json_with_state(self, state_path: str | None) -> bytes:
        """Device JSON, with `data` set to the LightDB value at state_path when that is an object.

        The spec types `data` as an object, so scalar values at the path are left out too.
        """
        base = self.json_bytes()
        if not state_path or self.state is None:
            return base
        value = get_at(self.state, state_path)
        if value is _MISSING or not isinstance(value, dict) or not value:
            return base
        return base[:-1] + b',"data":' + dumps(value) + b"}"


@dataclass(slots=True)
class Tag:
    id: str
    name: str
    created_ms: int
    updated_ms: int

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "createdAt": format_ms(self.created_ms),
            "updatedAt": format_ms(self.updated_ms),
        }


@dataclass(slots=True)
class Blueprint:
    id: str
    name: str
    created_ms: int
    updated_ms: int
    board_id: str = ""
    platform: str = ""

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"id": self.id, "name": self.name}
        if self.board_id:
            out["boardId"] = self.board_id
        if self.platform:
            out["platform"] = self.platform
        out["createdAt"] = format_ms(self.created_ms)
        out["updatedAt"] = format_ms(self.updated_ms)
        return out


@dataclass(slots=True)
class Cohort:
    # Cohort ids are slugs (the live example shows "nrf9151-cell-gateways"), not ObjectIds.
    cohort_id: str
    name: str
    created_ms: int
    updated_ms: int
    device_count: int = 0
    active_deployment_id: str = ""

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"cohortId": self.cohort_id, "name": self.name}
        if self.device_count:
            out["deviceCount"] = self.device_count
        if self.active_deployment_id:
            out["activeDeploymentId"] = self.active_deployment_id
        out["createdAt"] = format_ms(self.created_ms)
        out["updatedAt"] = format_ms(self.updated_ms)
        return out


@dataclass
class WebhookTarget:
    """A pipeline webhook destination: where device data messages are POSTed."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    inject_metadata: bool = True

    def to_dict(self) -> dict:
        return {"url": self.url, "headers": dict(self.headers), "injectMetadata": self.inject_metadata}


@dataclass
class EventsTarget:
    """Where Golioth console edits are sent as Standard Webhooks signed device events (a simulator extension)."""

    url: str
    secret: str  # whsec_<base64>

    def to_dict(self) -> dict:
        return {"url": self.url, "secret": self.secret}
