"""Apply a plan's Golioth side: creates, PATCHes with only the changed fields, LightDB State for the
desired state, deletes. Writes run with the client's bounded concurrency; one device's failure never
stops the others, and is reported so the next run retries it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from golioth_assets.core.fields import DESIRED_PREFIX, enabled_fields
from golioth_assets.engine.golioth_frames import References
from golioth_assets.golioth import errors
from golioth_assets.golioth.client import GoliothClient
from golioth_assets.golioth.models import Device, DeviceCreate, DeviceUpdate
from golioth_assets.store.services import Service


@dataclass
class RemoteOutcome:
    plan_status: list[dict] = field(default_factory=list)  # {id, status, error}
    new_links: list[dict] = field(default_factory=list)  # {device_id, golioth_device_id, base_snapshot}
    generated_hardware_ids: dict[str, str] = field(default_factory=dict)
    entries: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: {
            "created_remote": 0,
            "updated_remote": 0,
            "deleted_remote": 0,
            "failures": 0,
            "skipped": 0,
        }
    )
    auth_error: str | None = None


class _DeviceFailure(Exception):
    """A device cannot be written for a reason we know before calling Golioth."""


class ChangedInGolioth(Exception):
    """Golioth's copy of a field we are about to write changed after the inventory was read.
    Writing now would overwrite that edit silently, so the write is skipped; the next run sees both
    edits and settles them (a conflict, under the manual policy)."""


def _error_text(exc: BaseException) -> str:
    return (
        str(exc)
        if isinstance(exc, errors.GoliothError | _DeviceFailure | ChangedInGolioth)
        else f"{type(exc).__name__}: {exc}"
    )


class RemoteWriter:
    def __init__(
        self, client: GoliothClient, service: Service, refs: References, fields: tuple[str, ...] | None = None
    ) -> None:
        self.client = client
        self.service = service
        self.refs = refs
        # The run's synced fields: the enabled groups' fields that the local table holds.
        self.fields = fields if fields is not None else enabled_fields(frozenset(service.field_groups))

    # -- references: tags and blueprints are created on demand, cohorts must exist ---------------

    def ensure_references(self, tag_names: set[str], blueprint_names: set[str]) -> dict[str, str]:
        """Create missing tags/blueprints. Returns name → error for those that could not be created."""
        failed: dict[str, str] = {}
        have_tags = self.refs.ids_by_name("tags")
        have_bps = self.refs.ids_by_name("blueprints")
        calls: dict[tuple[str, str], Callable] = {}
        for name in sorted(tag_names - set(have_tags)):
            calls[("tags", name)] = lambda n=name: self.client.ensure_tag(n)
        for name in sorted(blueprint_names - set(have_bps)):
            calls[("blueprints", name)] = lambda n=name: self.client.ensure_blueprint(n)
        for (kind, name), result in self.client.run_many(calls).items():
            if isinstance(result, BaseException):
                failed[name] = _error_text(result)
            else:
                getattr(self.refs, kind)[result.id] = result.name
        return failed

    def _tag_ids(self, names: list[str]) -> list[str]:
        ids = self.refs.ids_by_name("tags")
        missing = [n for n in names if n not in ids]
        if missing:
            raise _DeviceFailure(f"tag(s) {', '.join(missing)} could not be created in Golioth")
        return [ids[n] for n in names]

    def _ref_id(self, kind: str, name: str | None) -> str:
        if not name:
            return ""  # Golioth clears blueprint/cohort with an empty id
        ids = self.refs.ids_by_name(kind)
        if name in ids:
            return ids[name]
        if kind == "cohorts" and (not self.service.golioth_organization_id or name in self.refs.cohorts):
            return name  # without the cohort list, local cohorts hold Golioth cohort ids
        raise _DeviceFailure(f"{kind[:-1]} {name!r} does not exist in Golioth")

    # -- device bodies ------------------------------------------------------------------------------

    def patch_body(self, values: dict[str, Any]) -> DeviceUpdate:
        body: dict[str, Any] = {}
        for name, value in values.items():
            if name == "name":
                body["name"] = value
            elif name == "hardware_ids":
                body["hardware_ids"] = value or []
            elif name == "tags":
                body["tag_ids"] = self._tag_ids(value or [])
            elif name == "blueprint":
                body["blueprint_id"] = self._ref_id("blueprints", value)
            elif name == "cohort":
                body["cohort_id"] = self._ref_id("cohorts", value)
            elif name == "enabled":
                body["enabled"] = bool(value)
        return DeviceUpdate(**body)

    def replace_body(self, current: Device, values: dict[str, Any]) -> DeviceUpdate:
        """A full PUT body: Golioth's current device with our changes, and no blueprint."""
        body = self.patch_body({k: v for k, v in values.items() if k != "blueprint"}).model_dump(exclude_unset=True)
        body.setdefault("name", current.name)
        body.setdefault("hardware_ids", list(current.hardware_ids))
        body.setdefault("tag_ids", list(current.tag_ids))
        body.setdefault("enabled", bool(current.enabled))
        if current.cohort_id:
            body.setdefault("cohort_id", current.cohort_id)
        return DeviceUpdate(**body)

    # -- writes that check first ----------------------------------------------------------------------
    # Golioth has no ETag or conditional write. So each update first re-reads the device and checks
    # that the fields it is about to change still hold what the plan read; only then does it write.
    # That shrinks the window in which a console edit can be overwritten from the whole sync (fetch
    # to PATCH) to one round trip, for one extra GET per changed device.

    def _current_fields(self, device: Device) -> dict[str, Any]:
        return {
            "name": device.name,
            "hardware_ids": list(device.hardware_ids),
            "tags": [self.refs.tags.get(t, t) for t in device.tag_ids],
            "blueprint": self.refs.blueprints.get(device.blueprint_id, device.blueprint_id)
            if device.blueprint_id
            else None,
            "cohort": self.refs.cohorts.get(device.cohort_id, device.cohort_id) if device.cohort_id else None,
            "enabled": device.enabled,
        }

    def update(self, golioth_device_id: str, values: dict[str, Any], expected: dict[str, Any]) -> None:
        current = self.client.get_device(golioth_device_id)
        _check_unchanged(expected, self._current_fields(current))
        if "blueprint" in values and not values["blueprint"]:
            self.client.replace_device(golioth_device_id, self.replace_body(current, values))
        else:
            self.client.update_device(golioth_device_id, self.patch_body(values))

    def update_state(self, golioth_device_id: str, keys: dict[str, Any], expected: dict[str, Any]) -> None:
        """Merge changed desired-state keys into Golioth's current object (PUT replaces the object,
        so keys edited meanwhile by someone else are kept as they are now)."""
        current = self.client.get_state(golioth_device_id, self.service.desired_state_path)
        current = current if isinstance(current, dict) else {}
        _check_unchanged(expected, {DESIRED_PREFIX + k: v for k, v in current.items()})
        merged = dict(current)
        for key, value in keys.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        self.client.put_state(golioth_device_id, self.service.desired_state_path, merged)

    def create_body(self, local: pd.Series) -> DeviceCreate:
        body: dict[str, Any] = {"name": local["name"], "hardware_ids": list(local["hardware_ids"])}
        if "tags" in self.fields and len(local["tags"]):
            body["tag_ids"] = self._tag_ids(list(local["tags"]))
        if "blueprint" in self.fields and _name(local["blueprint"]):
            body["blueprint_id"] = self._ref_id("blueprints", _name(local["blueprint"]))
        if "cohort" in self.fields and _name(local["cohort"]):
            body["cohort_id"] = self._ref_id("cohorts", _name(local["cohort"]))
        return DeviceCreate(**body)

    def create(self, local: pd.Series) -> str:
        """Create a device; a name already in use by the same hardware is adopted, not duplicated."""
        body = self.create_body(local)
        try:
            created = self.client.create_device(body)
        except errors.AlreadyExistsError:
            # A previous run may have created it and crashed before linking: find it again.
            found = self.client.list_devices(deviceName=local["name"])
            same = [d for d in found if set(d.hardware_ids) & set(body.hardware_ids or [])]
            if len(same) != 1:
                raise _DeviceFailure(f"the name {local['name']!r} is already used by another Golioth device") from None
            created = same[0]
        if "enabled" in self.fields and not bool(local["enabled"]):
            self.client.update_device(created.id, DeviceUpdate(enabled=False))
        desired = local["desired_state"] if isinstance(local["desired_state"], dict) else {}
        if "desired_state" in self.fields and desired:
            self.client.put_state(created.id, self.service.desired_state_path, desired)
        return created.id


def apply_remote(
    client: GoliothClient,
    service: Service,
    refs: References,
    plan: pd.DataFrame,
    local: pd.DataFrame,
    remote: pd.DataFrame,
    *,
    before_create: Callable[[dict[str, str]], None] | None = None,
    fields: tuple[str, ...] | None = None,
) -> RemoteOutcome:
    """plan: decoded rows with side == "remote" and status == "planned" (columns of sync_plan).
    local / remote: raw frames indexed by device_id / golioth_device_id.
    before_create: persists generated hardware ids locally before any create is sent."""
    outcome = RemoteOutcome()
    writer = RemoteWriter(client, service, refs, fields)
    if plan.empty:
        return outcome

    creates = plan[plan["action"] == "create"]
    updates = plan[plan["action"] == "update"]
    deletes = plan[plan["action"] == "delete"]

    # Devices without hardware ids get one first, so a half-done create is found again next run.
    need_hw = [d for d in creates["device_id"] if len(local.at[d, "hardware_ids"]) == 0]
    outcome.generated_hardware_ids = {d: f"gs-{uuid.uuid4().hex[:20]}" for d in need_hw}
    if outcome.generated_hardware_ids:
        if before_create is not None:
            before_create(outcome.generated_hardware_ids)
        for d, hw in outcome.generated_hardware_ids.items():
            local.at[d, "hardware_ids"] = [hw]

    tag_names = {t for d in creates["device_id"] for t in local.at[d, "tags"]} if "tags" in writer.fields else set()
    tag_names |= {t for v in updates.loc[updates["field"] == "tags", "new_value"] for t in (v or [])}
    bp_names = {_name(local.at[d, "blueprint"]) for d in creates["device_id"]} - {None}
    bp_names = bp_names if "blueprint" in writer.fields else set()
    bp_names |= {v for v in updates.loc[updates["field"] == "blueprint", "new_value"] if v}
    writer.ensure_references(tag_names, bp_names)

    calls: dict[tuple[str, str], Callable] = {}
    rows_of: dict[tuple[str, str], pd.DataFrame] = {}
    for device_id, rows in creates.groupby("device_id", sort=False):
        calls[("create", device_id)] = lambda d=device_id: writer.create(local.loc[d])
        rows_of[("create", device_id)] = rows
    for gid, rows in updates.groupby("golioth_device_id", sort=False):
        is_desired = rows["field"].str.startswith(DESIRED_PREFIX)
        patch_rows, state_rows = rows[~is_desired], rows[is_desired]
        if not patch_rows.empty:
            values = dict(zip(patch_rows["field"], patch_rows["new_value"]))
            expected = dict(zip(patch_rows["field"], patch_rows["old_value"]))
            calls[("patch", gid)] = lambda g=gid, v=values, e=expected: writer.update(g, v, e)
            rows_of[("patch", gid)] = patch_rows
        if not state_rows.empty:
            keys = {f[len(DESIRED_PREFIX) :]: v for f, v in zip(state_rows["field"], state_rows["new_value"])}
            expected = dict(zip(state_rows["field"], state_rows["old_value"]))
            calls[("state", gid)] = lambda g=gid, k=keys, e=expected: writer.update_state(g, k, e)
            rows_of[("state", gid)] = state_rows
    for gid, rows in deletes.groupby("golioth_device_id", sort=False):
        calls[("delete", gid)] = lambda g=gid: _delete(client, g)
        rows_of[("delete", gid)] = rows

    results = client.run_many(calls)
    for key, result in results.items():
        kind, ident = key
        rows = rows_of[key]
        failed = isinstance(result, BaseException)
        error = _error_text(result) if failed else None
        if isinstance(result, errors.AuthenticationError):
            outcome.auth_error = error
        skipped = isinstance(result, ChangedInGolioth)
        status = "skipped" if skipped else "failed" if failed else "applied"
        outcome.plan_status += [{"id": int(i), "status": status, "error": error} for i in rows["id"]]
        first = rows.iloc[0]
        device_id = first["device_id"]
        gid = result if (kind == "create" and not failed) else first["golioth_device_id"]
        action = {"create": "create", "patch": "update", "state": "update", "delete": "delete"}[kind]
        changes = {f: {"old": o, "new": n} for f, o, n in zip(rows["field"], rows["old_value"], rows["new_value"])}
        outcome.entries.append(
            {
                "device_id": device_id,
                "golioth_device_id": gid,
                "side": "remote",
                "action": action,
                "status": status,
                "changes": {} if kind in ("create", "delete") else changes,
                "error": error,
                "changed_by": first.get("changed_by"),
            }
        )
        if failed:
            outcome.counts["skipped" if skipped else "failures"] += 1
            continue
        if kind == "create":
            outcome.counts["created_remote"] += 1
            outcome.new_links.append(
                {
                    "device_id": device_id,
                    "golioth_device_id": result,
                    "base_snapshot": _base_of(local.loc[device_id], writer.fields),
                }
            )
        elif kind == "delete":
            outcome.counts["deleted_remote"] += 1
    updated = {
        ident for (kind, ident), r in results.items() if kind in ("patch", "state") and not isinstance(r, BaseException)
    }
    outcome.counts["updated_remote"] = len(updated)
    return outcome


def _name(value: Any) -> str | None:
    """A blueprint or cohort name from a local row; pandas hands a missing one out as NaN (truthy)."""
    return (value.strip() or None) if isinstance(value, str) else None


def _delete(client: GoliothClient, golioth_device_id: str) -> None:
    try:
        client.delete_device(golioth_device_id)
    except errors.NotFoundError:
        pass  # already gone: the delete we wanted has happened


def _base_of(local: pd.Series, fields: tuple[str, ...]) -> dict[str, Any]:
    """The base of a device just created from local values: exactly what was sent."""
    from golioth_assets.core.normalize import canonicalize, decode

    canonical = canonicalize(local.to_frame().T, fields).iloc[0]
    base = {f: decode(f, canonical[f]) for f in fields if f != "desired_state"}
    if "desired_state" in fields:
        desired = local["desired_state"] if isinstance(local["desired_state"], dict) else {}
        base["desired_state"] = {k: v for k, v in desired.items() if v is not None}
    return base


def _check_unchanged(expected: dict[str, Any], current: dict[str, Any]) -> None:
    from golioth_assets.core.normalize import encode

    moved = [f for f, old in expected.items() if encode(f, current.get(f)) != encode(f, old)]
    if moved:
        raise ChangedInGolioth(
            f"{', '.join(sorted(moved))} changed in Golioth during the sync; not overwritten, the next run settles it"
        )
