"""What scripts rely on: exit codes, `--json` output, and the run object that `sync --json` and
`history --json` share. docs/operators.md ("Scripting") documents all of it; change it only by
adding keys.

Every `--json` output is one JSON object on stdout (listings put their rows under a plural key).
Progress, notes and errors go to stderr; an error is one line, and the exit code says what kind.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from collections.abc import Callable, Mapping
from enum import IntEnum
from typing import Any

import click

from golioth_assets.core.vocabulary import Action, RunStatus, Side


class ExitCode(IntEnum):
    """The process's exit status. Ordered by severity: a sync reports the worst that applies."""

    ok = 0
    error = 1  # the command refused its input or failed a check (unknown id, bad value, test failed)
    usage = 2  # click: unknown option, missing argument
    conflicts = 3  # `sync --fail-on-conflicts`: the run finished, and found conflicts
    partial = 4  # the sync finished, but some device writes failed (the next run retries them)
    failed = 5  # the sync ran and failed
    not_started = 6  # could not start: bad configuration, unreachable database, missing API key


class CommandFailed(click.ClickException):
    """One line on stderr (`Error: …`) and a chosen exit code."""

    def __init__(self, message: str, code: ExitCode = ExitCode.error) -> None:
        super().__init__(message)
        # click declares exit_code per class, but reads it from the exception it caught: one
        # instance attribute spares a subclass per exit code.
        self.exit_code = int(code)  # type: ignore[misc]


def not_started(message: str) -> CommandFailed:
    return CommandFailed(message, ExitCode.not_started)


def verbose() -> bool:
    """Whether the root `golioth-sync -v` flag was given."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("verbose"))


def json_option(fn: Callable) -> Callable:
    """`--json`: the command's result as one JSON object on stdout (schema in docs/operators.md)."""
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object (see docs/operators.md).")(fn)


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if value.tzinfo else value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, frozenset | set):
        return sorted(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "item"):  # numpy scalars from pandas
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def to_json(value: Any) -> str:
    return json.dumps(value, default=_default, ensure_ascii=False, sort_keys=False)


def echo_json(value: Any) -> None:
    click.echo(to_json(value))


def rows_json(rows: list[Mapping], keys: tuple[str, ...] | None = None) -> list[dict]:
    """Rows as plain dicts (every column, or just `keys`), ready for `echo_json`."""
    return [dict(r) if keys is None else {k: r.get(k) for k in keys} for r in rows]


# -- a run, as `sync --json` and `history --json` show it ------------------------------------------------

_SIDE_COUNTS = {
    Side.local.value: {
        Action.create.value: "created_local",
        Action.update.value: "updated_local",
        Action.delete.value: "deleted_local",
        Action.observe.value: "observed_local",
    },
    Side.remote.value: {
        Action.create.value: "created_remote",
        Action.update.value: "updated_remote",
        Action.delete.value: "deleted_remote",
    },
}


def _by_side(counts: Mapping[str, Any]) -> dict[str, dict[str, int | None]]:
    """{"local": {"create": n, …}, "remote": {…}}; None where the source has no such counter."""
    return {
        side: {action: (int(counts[key]) if counts.get(key) is not None else None) for action, key in keys.items()}
        for side, keys in _SIDE_COUNTS.items()
    }


def requests_counted(run: Mapping[str, Any]) -> bool:
    """False when the run failed before its Golioth requests were added to the log: its 0 would be
    a guess, not a count."""
    return not (run.get("status") == RunStatus.failed and not run.get("api_requests") and not run.get("api_retries"))


def run_seconds(run: Mapping[str, Any]) -> float | None:
    started, finished = run.get("started_at"), run.get("finished_at")
    return round((finished - started).total_seconds(), 3) if started and finished else None


def run_json(run: Mapping[str, Any]) -> dict[str, Any]:
    """A golioth_sync_log row in the documented shape (docs/operators.md, "The run object")."""
    details = run.get("details") or {}
    planned = details.get("plan")
    counted = requests_counted(run)
    return {
        "id": run["id"],
        "organization_id": run["organization_id"],
        "dagster_run_id": run.get("dagster_run_id"),
        "status": run["status"],
        "error": run.get("error"),
        "trigger": run.get("trigger"),
        "kind": "targeted" if run.get("scope") is not None else "full",
        "dry_run": bool(run.get("dry_run")),
        "direction": run.get("direction"),
        "policy": run.get("policy"),
        "scope": run.get("scope"),
        "started_at": run.get("started_at"),
        "finished_at": run.get("finished_at"),
        "seconds": run_seconds(run),
        "fetched": {"local": run.get("fetched_local", 0), "remote": run.get("fetched_remote", 0)},
        "changes": _by_side(run),
        "planned": _by_side(planned) if planned is not None else None,
        "conflicts": run.get("conflicts", 0),
        "failures": run.get("failures", 0),
        "skipped": run.get("skipped", 0),
        "requests": run.get("api_requests", 0) if counted else None,
        "retries": run.get("api_retries", 0) if counted else None,
    }
