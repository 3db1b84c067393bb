"""Review and resolve conflicts (`device_conflicts`).

A resolution records the operator's choice (pending → resolved); the next sync of the device
writes it to both sides and marks the conflict applied, with the operator's name in the audit
trail (`golioth_sync_log_entries.changed_by`).

`store.conflicts.resolve` makes the check and the write one statement, so of two concurrent
resolutions of one conflict exactly one wins; the loser gets `AlreadySettled`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection, Engine

from golioth_assets.actions.errors import AlreadySettled, InvalidInput, NotFound
from golioth_assets.core.fields import DESIRED_PREFIX, FIELD_KIND
from golioth_assets.core.vocabulary import ConflictStatus, values
from golioth_assets.store import conflicts as store
from golioth_assets.store import services as services_store

CHOICES = ("local", "remote", "value")
STATUSES = values(ConflictStatus)
MAX_NAME = 100

# -- reading ------------------------------------------------------------------------------------------


def _check_org(conn: Connection, organization_id: str | None) -> None:
    if organization_id is None:
        return
    if not services_store.organization_exists(conn, organization_id):
        raise NotFound(f"unknown organization {organization_id!r}")


def list_conflicts(
    engine: Engine, organization_id: str | None = None, status: str | None = "pending", limit: int = 500
) -> list[dict]:
    """Conflicts, newest first, optionally of one organization and one status (None: all)."""
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"unknown status {status!r} (one of {', '.join(STATUSES)})")
    if limit < 1:
        raise InvalidInput("limit must be at least 1")
    with engine.connect() as conn:
        _check_org(conn, organization_id)
        return _with_local_columns(conn, store.list_named(conn, organization_id, status, limit))


def _with_local_columns(conn: Connection, rows: list[dict]) -> list[dict]:
    """Each conflict's field as its organization's local table names it (`local_column`): a product
    table's own column, e.g. `display_name` for Golioth's `name`."""
    mappings: dict[str, Any] = {}
    for row in rows:
        org = row["organization_id"]
        if org not in mappings:
            mappings[org] = services_store.local_mapping(conn, org)
        row["local_column"] = mappings[org].column_of(row["field"])
    return rows


def parse_id(value: Any) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) > 2**62:
        raise InvalidInput(f"conflict id must be a positive integer, got {text[:40]!r}")
    return int(text)


def get_conflict(engine: Engine, conflict_id: int | str, organization_id: str | None = None) -> dict:
    cid = parse_id(conflict_id)
    with engine.connect() as conn:
        _check_org(conn, organization_id)
        row = store.find_named(conn, cid)
        row = _with_local_columns(conn, [row])[0] if row else None
    return _checked(row, cid, organization_id)


def _checked(row: dict | None, conflict_id: int, organization_id: str | None) -> dict:
    if row is None:
        raise NotFound(f"no conflict with id {conflict_id}")
    if organization_id is not None and row["organization_id"] != organization_id:
        raise NotFound(
            f"conflict {conflict_id} belongs to organization {row['organization_id']!r}, not {organization_id!r}"
        )
    return row


def counts_by_status(engine: Engine, organization_id: str | None = None) -> dict[str, int]:
    with engine.connect() as conn:
        counts = store.count_by_status(conn, organization_id)
    return {**dict.fromkeys(STATUSES, 0), **counts}


# -- values -------------------------------------------------------------------------------------------


def parse_json(text: str) -> Any:
    """An operator's value (`--value`, value_json, the console's edit box): JSON, with a one-line error."""
    if not isinstance(text, str):
        raise InvalidInput("the value must be JSON text")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        hint = "; strings need quotes, e.g. '\"sensor-12\"'" if text.strip()[:1] not in ("[", "{", '"') else ""
        raise InvalidInput(f"the value is not valid JSON: {exc.msg} at position {exc.pos}{hint}") from None


def parse_value(field_name: str, text: str) -> Any:
    """An operator's `--value` (JSON) for a field, checked against the field's kind."""
    value = parse_json(text)
    check_value(field_name, value)
    return value


def check_value(field_name: str, value: Any) -> None:
    if field_name.startswith(DESIRED_PREFIX):
        return  # any JSON; null removes the key
    kind = FIELD_KIND.get(field_name)
    if kind == "text":
        if field_name == "name":
            if not isinstance(value, str) or not value.strip():
                raise InvalidInput("a device name must be a non-empty JSON string, e.g. '\"sensor-12\"'")
        elif value is not None and not isinstance(value, str):
            raise InvalidInput(f"{field_name} takes a JSON string or null")
    elif kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise InvalidInput(f'{field_name} takes a JSON list of non-empty strings, e.g. \'["a", "b"]\'')
        if field_name == "hardware_ids" and not value:
            raise InvalidInput("hardware_ids needs at least one id")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise InvalidInput(f"{field_name} takes true or false")
    elif kind == "json" and not isinstance(value, dict):
        raise InvalidInput(f"{field_name} takes a JSON object")


def check_resolved_by(name: Any) -> str:
    text = " ".join(str(name or "").split())
    if not text:
        raise InvalidInput("say who decides: --by NAME (recorded as resolved_by in the audit trail)")
    if len(text) > MAX_NAME:
        raise InvalidInput(f"--by is at most {MAX_NAME} characters")
    return text


# -- resolving ----------------------------------------------------------------------------------------


def describe_settled(row: dict) -> str:
    cid, status = row["id"], row["status"]
    if status == "resolved":
        return (
            f"conflict {cid} is already resolved ({row['resolution']}, by {row['resolved_by']}); "
            "the next sync applies it; nothing changed"
        )
    if status == "applied":
        return f"conflict {cid} is already applied ({row['resolution']}, by {row['resolved_by']}); nothing changed"
    if status == "superseded":
        return f"conflict {cid} was superseded (the two sides agreed, or it went away, on their own); nothing changed"
    return f"conflict {cid} is {status}; nothing changed"


def _resolve_one(conn: Connection, cid: int, use: str, value: Any, by: str, organization_id: str | None) -> dict:
    current = _checked(store.find_named(conn, cid), cid, organization_id)
    if current["status"] != "pending":
        raise AlreadySettled(describe_settled(current))
    if current["conflict_type"] == "identity":
        raise InvalidInput(
            f"conflict {cid} is an identity conflict: fix the hardware ids so each device matches exactly one "
            "device on the other side; the next sync links them and supersedes it"
        )
    if use == "value":
        if current["conflict_type"] != "field":
            raise InvalidInput(f"conflict {cid} is a delete-vs-modify conflict: choose local or remote, not a value")
        check_value(current["field"], value)
    try:
        store.resolve(conn, cid, use=use, value=value, resolved_by=by)
    except store.ConflictNotPending:
        # Someone else won the race: say what they chose.
        raise AlreadySettled(describe_settled(store.find_named(conn, cid) or current)) from None
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    return store.find_named(conn, cid)  # type: ignore[return-value]


def resolve(
    engine: Engine,
    conflict_ids: Iterable[int | str],
    *,
    use: str,
    resolved_by: str,
    value: Any = None,
    value_json: str | None = None,
    organization_id: str | None = None,
) -> list[dict]:
    """Resolve the named conflicts: all of them, or (on any refusal) none.

    use: "local" | "remote" | "value" (with `value`, or `value_json` to parse).
    """
    ids = sorted({parse_id(i) for i in conflict_ids})
    if not ids:
        raise InvalidInput("name at least one conflict id")
    if use not in CHOICES:
        raise InvalidInput(f"choose local, remote or value, not {str(use)[:20]!r}")
    by = check_resolved_by(resolved_by)
    if use != "value" and (value is not None or value_json is not None):
        raise InvalidInput("a value goes with use=value only")
    if use == "value" and value_json is not None:
        value = parse_json(value_json)  # checked against each conflict's field below
    with engine.begin() as conn:
        _check_org(conn, organization_id)
        return [_resolve_one(conn, cid, use, value, by, organization_id) for cid in ids]


@dataclass
class BulkResult:
    resolved: list[dict] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)


def resolve_all(engine: Engine, organization_id: str, *, use: str, resolved_by: str) -> BulkResult:
    """Resolve every pending conflict of an organization with local or remote.

    Identity conflicts cannot take a side and are skipped (with the reason), as are conflicts that
    another operator settles meanwhile.
    """
    if use not in ("local", "remote"):
        raise InvalidInput("a bulk resolution takes local or remote (a value fits one field, not all)")
    by = check_resolved_by(resolved_by)
    result = BulkResult()
    with engine.begin() as conn:
        _check_org(conn, organization_id)
        for cid in store.pending_ids(conn, organization_id):
            try:
                result.resolved.append(_resolve_one(conn, cid, use, None, by, organization_id))
            except (AlreadySettled, InvalidInput) as exc:
                result.skipped.append((cid, str(exc)))
    return result


def sync_targets(rows: Iterable[dict]) -> dict[str, list[str]]:
    """{organization: device ids} to sync now so these resolutions are applied."""
    out: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        device = row.get("device_id") or row.get("golioth_device_id")
        if device:
            out[row["organization_id"]].add(str(device))
    return {org: sorted(ids) for org, ids in sorted(out.items())}


def chosen_value(row: dict) -> Any:
    """What a resolved conflict writes to both sides."""
    return row.get("resolved_value")
