"""Apply a plan's Golioth side: creates, PATCHes with only the changed fields, LightDB State for the
desired state, deletes. Writes run with the client's bounded concurrency; one device's failure never
stops the others, and is reported so the next run retries it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any

import pandas as pd

from golioth_assets.core.fields import DESIRED_PREFIX, enabled_fields
from golioth_assets.core.normalize import canonicalize, decode, encode
from golioth_assets.core.vocabulary import Action, PlanStatus, Side
from golioth_assets.engine.golioth_frames import References
from golioth_assets.golioth import errors
from golioth_assets.golioth.client import GoliothClient
from golioth_assets.golioth.models import Device, DeviceCreate, DeviceUpdate
from golioth_assets.store.services import Service


@dataclass
class WriteAnswers:
    """What Golioth answered this run's writes: a POST, PATCH or PUT of a device answers with the
    device as Golioth stored it, so the convergence check reads a written device from here instead
    of asking again (engine/convergence.py). A device whose desired state was written is not here:
    a LightDB State PUT answers nothing, so its state is re-read."""

    devices: dict[str, Device] = field(default_factory=dict)  # golioth_device_id → the last answer
    gone: set[str] = field(default_factory=set)  # deleted (or found already gone) by this run
    state_written: set[str] = field(default_factory=set)

    def answered(self, golioth_device_ids: list[str]) -> tuple[list[Device], list[str]]:
        """(the devices as answered, the ones deleted) among `golioth_device_ids`; the rest need a read."""
        devices = [self.devices[g] for g in golioth_device_ids if g in self.devices and g not in self.state_written]
        return devices, [g for g in golioth_device_ids if g in self.gone]


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
    updated_devices: set[str] = field(default_factory=set)  # golioth ids with a field update applied
    answers: WriteAnswers = field(default_factory=WriteAnswers)

    def add(self, write: WriteResult) -> None:
        """Fold one write's result into the outcome."""
        kind, ident = write.key
        if write.auth_failed:
            self.auth_error = write.error
        self.plan_status += write.plan_status
        self.entries.append(write.entry)
        if write.status == PlanStatus.skipped:
            self.counts["skipped"] += 1
        elif write.status == PlanStatus.failed:
            self.counts["failures"] += 1
        elif kind == WriteKind.create:
            self.counts["created_remote"] += 1
            if write.new_link is not None:
                self.new_links.append(write.new_link)
        elif kind == WriteKind.delete:
            self.counts["deleted_remote"] += 1
        else:
            self.updated_devices.add(ident)
            self.counts["updated_remote"] = len(self.updated_devices)


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
        self.answers = WriteAnswers()  # filled by the writes, from several threads (one key each)

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
    # That shrinks the window in which a Golioth console edit can be overwritten from the whole sync (fetch
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
            answer = self.client.replace_device(golioth_device_id, self.replace_body(current, values))
        else:
            answer = self.client.update_device(golioth_device_id, self.patch_body(values))
        self.answers.devices[golioth_device_id] = answer

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
        self.answers.state_written.add(golioth_device_id)
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
            created = self.client.update_device(created.id, DeviceUpdate(enabled=False))
        self.answers.devices[created.id] = created
        desired = local["desired_state"] if isinstance(local["desired_state"], dict) else {}
        if "desired_state" in self.fields and desired:
            self.answers.state_written.add(created.id)
            self.client.put_state(created.id, self.service.desired_state_path, desired)
        return created.id


class WriteKind(StrEnum):
    """One Golioth write per device and kind; a device's field updates take up to two (PATCH, state)."""

    create = "create"
    patch = "patch"  # the device's own fields
    state = "state"  # desired-state keys, in LightDB State
    delete = "delete"


WRITE_ACTION = {
    WriteKind.create: Action.create,
    WriteKind.patch: Action.update,
    WriteKind.state: Action.update,
    WriteKind.delete: Action.delete,
}

WriteKey = tuple[WriteKind, str]  # (kind, device_id for a create, else golioth_device_id)


@dataclass(frozen=True)
class Write:
    call: Callable[[], Any]
    rows: list[dict[str, Any]]  # the plan rows this write carries out


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
    if plan.empty:
        return outcome
    writer = RemoteWriter(client, service, refs, fields)
    creates, updates, deletes = (
        plan[plan["action"] == action] for action in (Action.create, Action.update, Action.delete)
    )
    outcome.generated_hardware_ids = _assign_hardware_ids(creates, local, before_create)
    writer.ensure_references(*_references_needed(creates, updates, local, writer.fields))
    writes = {
        **_create_writes(writer, creates, local),
        **_update_writes(writer, updates),
        **_delete_writes(writer, deletes),
    }
    results = client.run_many({key: write.call for key, write in writes.items()})
    outcome.answers = writer.answers
    # The bases of the created devices, canonicalized in one vectorized pass (not a frame per device).
    bases = _bases_of(local.loc[list(dict.fromkeys(creates["device_id"]))], writer.fields)
    for key, result in results.items():
        outcome.add(_result_of(key, result, writes[key].rows, bases))
    return outcome


def _assign_hardware_ids(
    creates: pd.DataFrame, local: pd.DataFrame, before_create: Callable[[dict[str, str]], None] | None
) -> dict[str, str]:
    """Devices without hardware ids get one first, so a half-done create is found again next run.
    Sets them in `local` (the rows the creates are made from); returns device_id → hardware id."""
    need_hw = [d for d in creates["device_id"] if len(local.at[d, "hardware_ids"]) == 0]
    generated = {d: f"gs-{uuid.uuid4().hex[:20]}" for d in need_hw}
    if generated:
        if before_create is not None:
            before_create(generated)
        for d, hw in generated.items():
            local.at[d, "hardware_ids"] = [hw]
    return generated


def _references_needed(
    creates: pd.DataFrame, updates: pd.DataFrame, local: pd.DataFrame, fields: tuple[str, ...]
) -> tuple[set[str], set[str]]:
    """The tag and blueprint names the creates and updates refer to."""
    tags = {t for d in creates["device_id"] for t in local.at[d, "tags"]} if "tags" in fields else set()
    tags |= {t for v in updates.loc[updates["field"] == "tags", "new_value"] for t in (v or [])}
    blueprints = {_name(local.at[d, "blueprint"]) for d in creates["device_id"]} - {None}
    named = {b for b in blueprints if b is not None} if "blueprint" in fields else set()
    named |= {v for v in updates.loc[updates["field"] == "blueprint", "new_value"] if v}
    return tags, named


def _grouped(rows: pd.DataFrame, key: str) -> dict[Any, list[dict[str, Any]]]:
    """Plan rows as records, grouped by `key` in order of appearance: one conversion for the whole
    plan, where a groupby would make a small frame per device (slow to build and to read)."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for record in rows.to_dict("records"):
        groups.setdefault(record[key], []).append(record)
    return groups


def _create_writes(writer: RemoteWriter, creates: pd.DataFrame, local: pd.DataFrame) -> dict[WriteKey, Write]:
    return {
        (WriteKind.create, device_id): Write(partial(writer.create, local.loc[device_id]), rows)
        for device_id, rows in _grouped(creates, "device_id").items()
    }


def _update_writes(writer: RemoteWriter, updates: pd.DataFrame) -> dict[WriteKey, Write]:
    """Per device: one PATCH of its changed fields, one merge of its changed desired-state keys."""
    writes: dict[WriteKey, Write] = {}
    for gid, rows in _grouped(updates, "golioth_device_id").items():
        state_rows = [r for r in rows if r["field"].startswith(DESIRED_PREFIX)]
        patch_rows = [r for r in rows if not r["field"].startswith(DESIRED_PREFIX)]
        if patch_rows:
            values = {r["field"]: r["new_value"] for r in patch_rows}
            expected = {r["field"]: r["old_value"] for r in patch_rows}
            writes[(WriteKind.patch, gid)] = Write(partial(writer.update, gid, values, expected), patch_rows)
        if state_rows:
            keys = {r["field"][len(DESIRED_PREFIX) :]: r["new_value"] for r in state_rows}
            expected = {r["field"]: r["old_value"] for r in state_rows}
            writes[(WriteKind.state, gid)] = Write(partial(writer.update_state, gid, keys, expected), state_rows)
    return writes


def _delete_writes(writer: RemoteWriter, deletes: pd.DataFrame) -> dict[WriteKey, Write]:
    return {
        (WriteKind.delete, gid): Write(partial(_delete, writer, gid), rows)
        for gid, rows in _grouped(deletes, "golioth_device_id").items()
    }


@dataclass(frozen=True)
class WriteResult:
    """What one Golioth write did, for the plan rows, the audit log and the run's counts."""

    key: WriteKey
    status: PlanStatus
    error: str | None
    plan_status: list[dict[str, Any]]
    entry: dict[str, Any]
    new_link: dict[str, Any] | None  # a create's link, with the base it starts from
    auth_failed: bool


def _result_of(key: WriteKey, result: Any, rows: list[dict[str, Any]], bases: dict[str, dict[str, Any]]) -> WriteResult:
    kind, _ = key
    failed = isinstance(result, BaseException)
    error = _error_text(result) if failed else None
    status = (
        PlanStatus.skipped
        if isinstance(result, ChangedInGolioth)
        else PlanStatus.failed
        if failed
        else PlanStatus.applied
    )
    first = rows[0]
    device_id = first["device_id"]
    created = kind == WriteKind.create and not failed
    changes = {r["field"]: {"old": r["old_value"], "new": r["new_value"]} for r in rows}
    entry = {
        "device_id": device_id,
        "golioth_device_id": result if created else first["golioth_device_id"],
        "side": Side.remote,
        "action": WRITE_ACTION[kind],
        "status": status,
        "changes": {} if kind in (WriteKind.create, WriteKind.delete) else changes,
        "error": error,
        "changed_by": first.get("changed_by"),
    }
    new_link = (
        {"device_id": device_id, "golioth_device_id": result, "base_snapshot": bases[device_id]} if created else None
    )
    return WriteResult(
        key=key,
        status=status,
        error=error,
        plan_status=[{"id": int(r["id"]), "status": status, "error": error} for r in rows],
        entry=entry,
        new_link=new_link,
        auth_failed=isinstance(result, errors.AuthenticationError),
    )


def _name(value: Any) -> str | None:
    """A blueprint or cohort name from a local row; pandas hands a missing one out as NaN (truthy)."""
    return (value.strip() or None) if isinstance(value, str) else None


def _delete(writer: RemoteWriter, golioth_device_id: str) -> None:
    try:
        writer.client.delete_device(golioth_device_id)
    except errors.NotFoundError:
        pass  # already gone: the delete we wanted has happened
    writer.answers.gone.add(golioth_device_id)


def _bases_of(local: pd.DataFrame, fields: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """device_id → the base of a device created from its local values: exactly what was sent."""
    if local.empty:
        return {}
    scalar = tuple(f for f in fields if f != "desired_state")
    canonical = canonicalize(local, scalar)
    bases: dict[str, dict[str, Any]] = {
        device_id: {f: decode(f, v) for f, v in zip(scalar, values)}
        for device_id, values in zip(canonical.index, canonical.itertuples(index=False))
    }
    if "desired_state" in fields:
        for device_id, desired in zip(local.index, local["desired_state"]):
            desired = desired if isinstance(desired, dict) else {}
            bases[device_id]["desired_state"] = {k: v for k, v in desired.items() if v is not None}
    return bases


def _check_unchanged(expected: dict[str, Any], current: dict[str, Any]) -> None:
    moved = [f for f, old in expected.items() if encode(f, current.get(f)) != encode(f, old)]
    if moved:
        raise ChangedInGolioth(
            f"{', '.join(sorted(moved))} changed in Golioth during the sync; not overwritten, the next run settles it"
        )
