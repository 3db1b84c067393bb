"""One Golioth project: devices, tags, blueprints, cohorts and LightDB State.

All methods assume the caller holds the simulator lock. Devices keep insertion order
in `_order` so a list page is a slice; deletions leave tombstones that are compacted
on the next list, so deleting many devices stays O(1) each.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .churn import Churn
from .clock import ObjectIdFactory, WriteClock, format_ms, format_ns, require_object_id
from .errors import already_exists, invalid, not_found
from .lightdb import _MISSING, delete_at, get_at, set_at, split_path
from .model import Blueprint, Cohort, Device, EventsTarget, Tag, WebhookTarget, dumps
from .validate import dedupe, opt_bool, opt_str, opt_str_list, require_object

MAX_PER_PAGE = 100


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    device_name: str | None = None
    hardware_id: str | None = None
    tags: tuple[str, ...] = ()
    blueprint_id: str | None = None
    cohort_id: str | None = None
    enabled: bool | None = None
    term: str | None = None

    def is_empty(self) -> bool:
        return self == _NO_FILTER

    def matches(self, device: Device) -> bool:
        """Whether the device meets every condition this filter sets."""
        if self.device_name is not None and device.name != self.device_name:
            return False
        if self.hardware_id is not None and self.hardware_id not in device.hardware_ids:
            return False
        if self.tags and not set(self.tags).issubset(device.tag_ids):
            return False
        if self.blueprint_id is not None and device.blueprint_id != self.blueprint_id:
            return False
        if self.cohort_id is not None and device.cohort_id != self.cohort_id:
            return False
        if self.enabled is not None and device.enabled != self.enabled:
            return False
        return not self.term or _has_term(device, self.term.lower())


def _has_term(device: Device, term: str) -> bool:
    return term in device.name.lower() or any(term in h.lower() for h in device.hardware_ids)


_NO_FILTER = DeviceFilter()


@dataclass(frozen=True, slots=True)
class _DeviceChange:
    """A device's editable fields after an update body is applied to them (not yet checked)."""

    name: str
    hardware_ids: list[str]
    tag_ids: list[str]
    blueprint_id: str
    cohort_id: str
    enabled: bool | None
    removed_tag_ids: list[str]  # each must still be a well-formed id

    @classmethod
    def of(cls, device: Device, body: dict[str, Any], *, replace: bool) -> _DeviceChange:
        name = opt_str(body, "name")
        hardware_ids = opt_str_list(body, "hardwareIds")
        tag_ids = opt_str_list(body, "tagIds")
        blueprint_id = opt_str(body, "blueprintId")
        cohort_id = opt_str(body, "cohortId")
        enabled = opt_bool(body, "enabled")
        added_tags, removed_tags = opt_str_list(body, "addTagId"), opt_str_list(body, "removeTagId")
        added_hw, removed_hw = opt_str_list(body, "addHardwareId"), opt_str_list(body, "removeHardwareId")
        if replace:
            if not name:
                raise invalid("device name cannot be empty")
            tag_ids, blueprint_id, cohort_id = tag_ids or [], blueprint_id or "", cohort_id or ""
        if blueprint_id is None or (blueprint_id == "" and not replace):
            blueprint_id = device.blueprint_id
        return cls(
            name=device.name if name is None else name,
            hardware_ids=_edited(device.hardware_ids, hardware_ids, added_hw, removed_hw),
            tag_ids=_edited(device.tag_ids, tag_ids, added_tags, removed_tags),
            blueprint_id=blueprint_id,
            cohort_id=device.cohort_id if cohort_id is None else cohort_id,
            enabled=enabled,
            removed_tag_ids=removed_tags or [],
        )


def _edited(
    current: list[str], replaced: list[str] | None, added: list[str] | None, removed: list[str] | None
) -> list[str]:
    """A list field after an update: replaced if sent, then `added` appended and `removed` dropped."""
    base = list(current) if replaced is None else dedupe(replaced)
    dropped = set(removed or [])
    return dedupe([v for v in base + (added or []) if v not in dropped])


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cohort"


def page_envelope(items: list[bytes], page: int, per_page: int, total: int) -> bytes:
    return b'{"list":[' + b",".join(items) + b'],"page":%d,"perPage":%d,"total":%d}' % (page, per_page, total)


def paginate(seq: list, page: int, per_page: int) -> list:
    start = page * per_page
    return seq[start : start + per_page]


class Project:
    def __init__(
        self,
        project_id: str,
        api_key: str,
        organization_id: str,
        ids: ObjectIdFactory,
        clock: WriteClock,
    ) -> None:
        self.project_id = project_id
        self.api_key = api_key
        self.organization_id = organization_id
        self.ids = ids
        self.clock = clock
        self.devices: dict[str, Device] = {}
        self._order: list[Device] = []
        self._tombstones = 0
        self.by_name: dict[str, Device] = {}
        self.by_hwid: dict[str, Device] = {}
        self.tags: dict[str, Tag] = {}
        self.blueprints: dict[str, Blueprint] = {}
        self.cohorts: dict[str, Cohort] = {}
        # Bumped on every device change; keys the filtered-list cache.
        self.version = 0
        self._filter_cache: dict[DeviceFilter, tuple[int, list[Device]]] = {}
        # None, or how a "deleted" project answers: "unauthenticated" (its keys died with it) or "not_found".
        self.deleted_mode: str | None = None
        self.webhook: WebhookTarget | None = None
        self.events: EventsTarget | None = None
        self.churn: Churn | None = None  # deterministic churn while a listing pages (churn.py)

    # ---- helpers -------------------------------------------------------------------

    def _new_id(self, now_ms: int) -> str:
        return self.ids.make(now_ms // 1000)

    def _changed(self) -> None:
        self.version += 1

    def ordered_devices(self) -> list[Device]:
        if self._tombstones:
            self._order = [d for d in self._order if not d.deleted]
            self._tombstones = 0
        return self._order

    def get_device(self, device_id: str) -> Device:
        require_object_id(device_id)
        device = self.devices.get(device_id)
        if device is None:
            raise not_found("device not found")
        return device

    def _check_tags(self, tag_ids: Iterable[str]) -> None:
        for tag_id in tag_ids:
            require_object_id(tag_id)
            if tag_id not in self.tags:
                raise invalid(f"tag {tag_id} not found")

    def _check_blueprint(self, blueprint_id: str) -> None:
        require_object_id(blueprint_id)
        if blueprint_id not in self.blueprints:
            raise invalid(f"blueprint {blueprint_id} not found")

    def _check_cohort(self, cohort_id: str) -> None:
        if cohort_id not in self.cohorts:
            raise invalid(f"cohort {cohort_id} not found")

    def _check_hardware_ids(self, hardware_ids: list[str], owner: Device | None) -> None:
        for hwid in hardware_ids:
            if not hwid:
                raise invalid("hardware id cannot be empty")
            other = self.by_hwid.get(hwid)
            if other is not None and other is not owner:
                raise already_exists("hardware id already being used")

    def _check_name(self, name: str, owner: Device | None) -> None:
        if not name:
            raise invalid("device name cannot be empty")
        other = self.by_name.get(name)
        if other is not None and other is not owner:
            raise already_exists("device name already being used")

    def _generated_hardware_id(self, name: str, now_ms: int) -> str:
        # Live example: "20250908181325-c253700003" for a device named "C253700003".
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now_ms // 1000))
        base = f"{stamp}-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-') or 'device'}"
        candidate, n = base, 1
        while candidate in self.by_hwid:
            n += 1
            candidate = f"{base}-{n}"
        return candidate

    # ---- devices -------------------------------------------------------------------

    def add_device(self, device: Device) -> Device:
        """Insert an already-validated device (seeding and creates)."""
        self.devices[device.id] = device
        self._order.append(device)
        self.by_name[device.name] = device
        for hwid in device.hardware_ids:
            self.by_hwid[hwid] = device
        if device.cohort_id:
            self.cohorts[device.cohort_id].device_count += 1
        self._changed()
        return device

    def create_device(self, body: Any, *, console: bool = False) -> Device:
        """POST /devices. The API's create body has no `enabled` (it is ignored); console creates may set it."""
        body = require_object(body)
        name = opt_str(body, "name") or ""
        hardware_ids = dedupe(opt_str_list(body, "hardwareIds") or [])
        tag_ids = dedupe(opt_str_list(body, "tagIds") or [])
        blueprint_id = opt_str(body, "blueprintId") or ""
        cohort_id = opt_str(body, "cohortId") or ""
        self._check_name(name, None)
        self._check_hardware_ids(hardware_ids, None)
        self._check_tags(tag_ids)
        if blueprint_id:
            self._check_blueprint(blueprint_id)
        if cohort_id:
            self._check_cohort(cohort_id)
        now = self.clock.now_ms()
        if not hardware_ids:
            hardware_ids = [self._generated_hardware_id(name, now)]
        enabled = opt_bool(body, "enabled") if console else None
        device = Device(
            id=self._new_id(now),
            name=name,
            hardware_ids=hardware_ids,
            tag_ids=tag_ids,
            blueprint_id=blueprint_id,
            cohort_id=cohort_id,
            enabled=True if enabled is None else enabled,
            created_ms=now,
            updated_ms=now,
            metadata={},
        )
        return self.add_device(device)

    def update_device(self, device_id: str, body: Any, *, replace: bool) -> Device:
        """PATCH (replace=False) changes only the fields sent; PUT (replace=True) replaces the editable set.

        PUT leaves `enabled` and `hardwareIds` alone when they are not sent, because a
        device without hardware ids cannot connect and a missing bool must not disable it.
        PATCH `blueprintId: ""` does not clear the blueprint: the spec documents the
        empty-string clear only for `cohortId`. PUT without `blueprintId` clears it.
        """
        device = self.get_device(device_id)
        body = require_object(body)
        change = _DeviceChange.of(device, body, replace=replace)
        # Validate everything before changing anything, so a rejected update is a no-op.
        self._check_change(device, change)
        self._apply_change(device, change)
        device.touch(self.clock.now_ms())
        self._changed()
        return device

    def _check_change(self, device: Device, change: _DeviceChange) -> None:
        self._check_name(change.name, device)
        self._check_hardware_ids(change.hardware_ids, device)
        for tag_id in change.removed_tag_ids:
            require_object_id(tag_id)
        self._check_tags(change.tag_ids)
        if change.blueprint_id and change.blueprint_id != device.blueprint_id:
            self._check_blueprint(change.blueprint_id)
        if change.cohort_id and change.cohort_id != device.cohort_id:
            self._check_cohort(change.cohort_id)

    def _apply_change(self, device: Device, change: _DeviceChange) -> None:
        if change.name != device.name:
            del self.by_name[device.name]
            self.by_name[change.name] = device
            device.name = change.name
        if change.hardware_ids != device.hardware_ids:
            for hwid in device.hardware_ids:
                self.by_hwid.pop(hwid, None)
            for hwid in change.hardware_ids:
                self.by_hwid[hwid] = device
            device.hardware_ids = change.hardware_ids
        device.tag_ids = change.tag_ids
        device.blueprint_id = change.blueprint_id
        if change.cohort_id != device.cohort_id:
            if device.cohort_id in self.cohorts:
                self.cohorts[device.cohort_id].device_count -= 1
            if change.cohort_id:
                self.cohorts[change.cohort_id].device_count += 1
            device.cohort_id = change.cohort_id
        if change.enabled is not None:
            device.enabled = change.enabled

    def delete_device(self, device_id: str) -> Device:
        device = self.get_device(device_id)
        del self.devices[device.id]
        self.by_name.pop(device.name, None)
        for hwid in device.hardware_ids:
            if self.by_hwid.get(hwid) is device:
                del self.by_hwid[hwid]
        if device.cohort_id in self.cohorts:
            self.cohorts[device.cohort_id].device_count -= 1
        device.deleted = True
        self._tombstones += 1
        self._changed()
        return device

    def _filtered(self, flt: DeviceFilter) -> list[Device]:
        if flt.is_empty():
            return self.ordered_devices()
        cached = self._filter_cache.get(flt)
        if cached is not None and cached[0] == self.version:
            return cached[1]
        result = [d for d in self._candidates(flt) if flt.matches(d)]
        if len(self._filter_cache) > 32:
            self._filter_cache.clear()
        self._filter_cache[flt] = (self.version, result)
        return result

    def _candidates(self, flt: DeviceFilter) -> Iterable[Device]:
        """The devices a filter can match: a name or hardware id is one index lookup; else all."""
        if flt.device_name is not None:
            hit = self.by_name.get(flt.device_name)
        elif flt.hardware_id is not None:
            hit = self.by_hwid.get(flt.hardware_id)
        else:
            return self.ordered_devices()
        return [hit] if hit else []

    def move_device(self, device: Device, position: int) -> None:
        """Put a device at `position` in the list order (churn: a device created on an earlier page)."""
        order = self.ordered_devices()
        order.remove(device)
        order.insert(position, device)
        self._changed()

    def list_devices(self, flt: DeviceFilter, page: int, per_page: int, state_path: str | None) -> bytes:
        if self.churn is not None and flt.is_empty():
            served = self.churn.serve(self, page, per_page, state_path)
            if served is not None:
                return page_envelope(served[0], page, per_page, served[1])
        matching = self._filtered(flt)
        items = [d.json_with_state(state_path) for d in paginate(matching, page, per_page)]
        return page_envelope(items, page, per_page, len(matching))

    # ---- LightDB State -------------------------------------------------------------

    def get_state(self, device_id: str, path: str) -> Any:
        device = self.get_device(device_id)
        value = _MISSING if device.state is None else get_at(device.state, path)
        if value is _MISSING:
            raise not_found("path not found")
        return value

    def write_state(self, device_id: str, path: str, value: Any, *, merge: bool) -> None:
        device = self.get_device(device_id)
        if not split_path(path) and not isinstance(value, dict):
            raise invalid("the root of LightDB State must be an object")
        device.state = set_at(device.state, path, value, merge=merge)

    def delete_state(self, device_id: str, path: str) -> None:
        device = self.get_device(device_id)
        device.state = delete_at(device.state, path)

    # ---- tags ----------------------------------------------------------------------

    def create_tag(self, body: Any) -> Tag:
        name = opt_str(require_object(body), "name") or ""
        if not name:
            raise invalid("tag name cannot be empty")
        if any(t.name == name for t in self.tags.values()):
            raise already_exists("tag name already being used")
        now = self.clock.now_ms()
        tag = Tag(id=self._new_id(now), name=name, created_ms=now, updated_ms=now)
        self.tags[tag.id] = tag
        return tag

    def get_tag(self, tag_id: str) -> Tag:
        require_object_id(tag_id)
        tag = self.tags.get(tag_id)
        if tag is None:
            raise not_found("tag not found")
        return tag

    def update_tag(self, tag_id: str, body: Any) -> Tag:
        tag = self.get_tag(tag_id)
        name = opt_str(require_object(body), "name")
        if name is not None:
            if not name:
                raise invalid("tag name cannot be empty")
            if any(t.name == name and t is not tag for t in self.tags.values()):
                raise already_exists("tag name already being used")
            tag.name = name
        tag.updated_ms = self.clock.now_ms()
        return tag

    def delete_tag(self, tag_id: str) -> None:
        """Deleting a tag detaches it from devices without moving their updatedAt (a cascade, not an edit)."""
        self.get_tag(tag_id)
        del self.tags[tag_id]
        for d in self.devices.values():
            if tag_id in d.tag_ids:
                d.tag_ids = [t for t in d.tag_ids if t != tag_id]
                d.invalidate()
        self._changed()

    def list_tags(self, page: int, per_page: int, name: str | None, ids: list[str]) -> bytes:
        tags = [t for t in self.tags.values() if (name is None or t.name == name) and (not ids or t.id in ids)]
        return page_envelope([dumps(t.to_dict()) for t in paginate(tags, page, per_page)], page, per_page, len(tags))

    # ---- blueprints ----------------------------------------------------------------

    def create_blueprint(self, body: Any) -> Blueprint:
        body = require_object(body)
        name = opt_str(body, "name") or ""
        if not name:
            raise invalid("blueprint name cannot be empty")
        if any(b.name == name for b in self.blueprints.values()):
            raise already_exists("blueprint name already being used")
        now = self.clock.now_ms()
        blueprint = Blueprint(
            id=self._new_id(now),
            name=name,
            created_ms=now,
            updated_ms=now,
            board_id=opt_str(body, "boardId") or "",
            platform=opt_str(body, "platform") or "",
        )
        self.blueprints[blueprint.id] = blueprint
        return blueprint

    def get_blueprint(self, blueprint_id: str) -> Blueprint:
        require_object_id(blueprint_id)
        blueprint = self.blueprints.get(blueprint_id)
        if blueprint is None:
            raise not_found("blueprint not found")
        return blueprint

    def update_blueprint(self, blueprint_id: str, body: Any) -> Blueprint:
        blueprint = self.get_blueprint(blueprint_id)
        body = require_object(body)
        name = opt_str(body, "name")
        if name is not None:
            if not name:
                raise invalid("blueprint name cannot be empty")
            if any(b.name == name and b is not blueprint for b in self.blueprints.values()):
                raise already_exists("blueprint name already being used")
            blueprint.name = name
        for key, attr in (("boardId", "board_id"), ("platform", "platform")):
            value = opt_str(body, key)
            if value is not None:
                setattr(blueprint, attr, value)
        blueprint.updated_ms = self.clock.now_ms()
        return blueprint

    def delete_blueprint(self, blueprint_id: str) -> None:
        self.get_blueprint(blueprint_id)
        del self.blueprints[blueprint_id]
        for d in self.devices.values():
            if d.blueprint_id == blueprint_id:
                d.blueprint_id = ""
                d.invalidate()
        self._changed()

    def list_blueprints(self, page: int, per_page: int, name: str | None, ids: list[str]) -> bytes:
        items = [b for b in self.blueprints.values() if (name is None or b.name == name) and (not ids or b.id in ids)]
        return page_envelope([dumps(b.to_dict()) for b in paginate(items, page, per_page)], page, per_page, len(items))

    # ---- cohorts -------------------------------------------------------------------

    def create_cohort(self, body: Any) -> Cohort:
        name = opt_str(require_object(body), "name") or ""
        if not name:
            raise invalid("cohort name cannot be empty")
        if any(c.name == name for c in self.cohorts.values()):
            raise already_exists("cohort name already being used")
        base = slugify(name)
        cohort_id, n = base, 1
        while cohort_id in self.cohorts:
            n += 1
            cohort_id = f"{base}-{n}"
        now = self.clock.now_ms()
        cohort = Cohort(cohort_id=cohort_id, name=name, created_ms=now, updated_ms=now)
        self.cohorts[cohort_id] = cohort
        return cohort

    def get_cohort(self, cohort_id: str) -> Cohort:
        cohort = self.cohorts.get(cohort_id)
        if cohort is None:
            raise not_found("cohort not found")
        return cohort

    def update_cohort(self, cohort_id: str, body: Any) -> Cohort:
        cohort = self.get_cohort(cohort_id)
        name = opt_str(require_object(body), "name")
        if name:
            cohort.name = name
        cohort.updated_ms = self.clock.now_ms()
        return cohort

    def delete_cohort(self, cohort_id: str) -> None:
        self.get_cohort(cohort_id)
        del self.cohorts[cohort_id]
        for d in self.devices.values():
            if d.cohort_id == cohort_id:
                d.cohort_id = ""
                d.invalidate()
        self._changed()

    def list_cohorts(self, page: int, per_page: int) -> bytes:
        items = list(self.cohorts.values())
        return page_envelope([dumps(c.to_dict()) for c in paginate(items, page, per_page)], page, per_page, len(items))

    # ---- device activity -----------------------------------------------------------

    def record_activity(self, device_id: str, now_ms: int, firmware_version: str | None = None) -> Device:
        """A device talked to Golioth: observed metadata changes, updatedAt does not (it is not an edit)."""
        device = self.get_device(device_id)
        stamp = format_ms(now_ms)
        metadata = dict(device.metadata)
        metadata["lastSeenOnline"] = stamp
        metadata["lastReport"] = stamp
        if firmware_version:
            main = dict(metadata.get("update", {}).get("main", {}))
            main.update(
                package="main",
                version=firmware_version,
                state="IDLE",
                stateCode="0",
                reason="ready state",
                reasonCode="0",
                time=format_ns(now_ms * 1_000_000),
            )
            main.setdefault("target", "")
            metadata["update"] = {**metadata.get("update", {}), "main": main}
        device.metadata = metadata
        device.invalidate()
        self._changed()
        return device

    def summary(self) -> dict:
        return {
            "projectId": self.project_id,
            "apiKey": self.api_key,
            "organizationId": self.organization_id,
            "devices": len(self.devices),
            "tags": len(self.tags),
            "blueprints": len(self.blueprints),
            "cohorts": len(self.cohorts),
            "deleted": self.deleted_mode,
            "webhook": self.webhook.to_dict() if self.webhook else None,
            "events": self.events.to_dict() if self.events else None,
        }
