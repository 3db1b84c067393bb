"""Pydantic models for the parts of the Golioth Management API we use.

Field names follow the Golioth OpenAPI spec exactly (as camelCase aliases); Python code uses
snake_case. Responses are parsed leniently: Golioth leaves empty fields out and adds fields over time,
so every field has a default and unknown fields are ignored. Request bodies are strict (extra fields
forbidden) so a typo fails here instead of being silently dropped by the server.
"""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any, Generic, Required, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator
from pydantic.alias_generators import to_camel
from typing_extensions import TypedDict

T = TypeVar("T")


class _Response(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class _Request(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


def _blank_to_none(value: Any) -> Any:
    # proto3 has no null string: "" and "absent" both mean "not assigned".
    return None if value == "" else value


class SettingsStatus(_Response):
    status: str | None = None
    reported_version: str | None = None
    status_detail: str | None = None
    sync_time: datetime | None = None
    errors: list[dict[str, Any]] = Field(default_factory=list)


class DeviceMetadata(_Response):
    last_seen_online: datetime | None = None
    last_seen_offline: datetime | None = None
    last_report: datetime | None = None
    status: str | None = None
    update: dict[str, Any] = Field(default_factory=dict)
    last_settings_status: SettingsStatus | None = None


class Device(_Response):
    id: str
    name: str = ""
    hardware_ids: list[str] = Field(default_factory=list)
    tag_ids: list[str] = Field(default_factory=list)
    blueprint_id: str | None = None
    cohort_id: str | None = None
    certificate_id: str | None = None
    # grpc-gateway omits false booleans ("empty fields are left out"), so absent means disabled.
    enabled: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
    metadata: DeviceMetadata = Field(default_factory=DeviceMetadata)
    # Filled only when listing with statePath. Typed Any, not dict: a statePath pointing at a leaf
    # yields a scalar, and a dict-only type would fail the whole page.
    data: Any = None

    @field_validator("blueprint_id", "cohort_id", "certificate_id", mode="before")
    @classmethod
    def _blank_ids(cls, value: Any) -> Any:
        return _blank_to_none(value)


# The records hold every field of the models below (so `Device.model_validate(record)` loses nothing).
class SettingsStatusRecord(TypedDict, total=False):
    status: str | None
    reportedVersion: str | None
    statusDetail: str | None
    syncTime: str | None
    errors: list[dict[str, Any]]


class DeviceMetadataRecord(TypedDict, total=False):
    lastSeenOnline: str | None
    lastSeenOffline: str | None
    lastReport: str | None
    status: str | None
    update: dict[str, Any]
    lastSettingsStatus: SettingsStatusRecord | None


class DeviceRecord(TypedDict, total=False):
    """A device of a list page as Golioth sends it, under the API's own names, checked for the
    shape of every field a sync reads; timestamps stay text. The bulk path: a full sync lists every
    device of a project, and building a `Device` model for each costs about three times the JSON
    parse, when the engine turns the whole listing into columns anyway (engine/golioth_frames.py
    parses the timestamps a column at a time). `Device.model_validate(record)` gives the model."""

    id: Required[str]
    name: str
    hardwareIds: list[str]
    tagIds: list[str]
    blueprintId: str | None
    cohortId: str | None
    certificateId: str | None
    enabled: bool
    createdAt: str | None
    updatedAt: str | None
    metadata: DeviceMetadataRecord
    data: Any


def device_record(device: Device) -> DeviceRecord:
    """A parsed device back in the listing's form (the bulk path's one input type)."""
    return device.model_dump(by_alias=True, mode="json", exclude_none=True)  # type: ignore[return-value]


class Tag(_Response):
    id: str
    name: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Blueprint(_Response):
    id: str
    name: str = ""
    board_id: str | None = None
    platform: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Cohort(_Response):
    # Cohorts are keyed by `cohortId`, not `id`, in the spec.
    cohort_id: str
    name: str = ""
    active_deployment_id: str | None = None
    device_count: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ListPage(_Response, Generic[T]):
    # builtins.list: inside this class body the name `list` is the field itself.
    list: builtins.list[T] = Field(default_factory=builtins.list)
    page: int = 0
    per_page: int = 0
    total: int = 0


class RpcStatus(_Response):
    code: int = 0
    message: str = ""
    details: list[dict[str, Any]] = Field(default_factory=list)


class DeviceCreate(_Request):
    name: str
    hardware_ids: list[str] | None = None
    tag_ids: list[str] | None = None
    blueprint_id: str | None = None
    cohort_id: str | None = None

    def to_body(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class DeviceUpdate(_Request):
    """A PATCH body: only fields explicitly set are sent, so unset fields keep their Golioth value.

    `cohort_id=""` removes the device from its cohort. Setting a field to None is rejected, because
    JSON null means nothing to Golioth and would silently not clear anything.
    """

    name: str | None = None
    enabled: bool | None = None
    blueprint_id: str | None = None
    cohort_id: str | None = None
    hardware_ids: list[str] | None = None
    tag_ids: list[str] | None = None
    add_hardware_id: list[str] | None = None
    remove_hardware_id: list[str] | None = None
    add_tag_id: list[str] | None = None
    remove_tag_id: list[str] | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _no_explicit_none(cls, value: Any, info: Any) -> Any:
        if value is None:
            raise ValueError(
                f"{info.field_name}=None would not clear anything; leave it unset, or use '' "
                "for cohort_id/blueprint_id and [] for lists"
            )
        return value

    def to_body(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_unset=True, mode="json")


# Built once: TypeAdapter construction is the expensive part, validate_json on raw bytes is fast.
DEVICE_PAGE = TypeAdapter(ListPage[Device])
DEVICE_RECORD_PAGE = TypeAdapter(ListPage[DeviceRecord])
TAG_PAGE = TypeAdapter(ListPage[Tag])
BLUEPRINT_PAGE = TypeAdapter(ListPage[Blueprint])
COHORT_PAGE = TypeAdapter(ListPage[Cohort])
RPC_STATUS = TypeAdapter(RpcStatus)


class _Data(_Response, Generic[T]):
    data: T


DEVICE_DATA = TypeAdapter(_Data[Device])
TAG_DATA = TypeAdapter(_Data[Tag])
BLUEPRINT_DATA = TypeAdapter(_Data[Blueprint])


class _StateValue(_Response):
    data: Any = None  # LightDB State: any JSON value, absent when nothing is stored


STATE_DATA = TypeAdapter(_StateValue)
