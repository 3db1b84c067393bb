"""`golioth_resolve_conflicts`: resolve conflicts from the Dagster launchpad.

The launchpad config names the conflicts (ids, or every pending one of an organization) and the
choice. The op records the resolution through golioth_assets.actions.conflicts, the function the CLI
and the web console use; the next sync of those devices (the schedule's, or a
`golioth_targeted_sync` run with the device ids the op lists) writes it to both sides.

    ops:
      resolve_conflicts:
        config:
          conflict_ids: [12, 13]
          choice: remote          # local | remote | value
          resolved_by: alice
          value_json: null        # with choice value: the JSON to write, e.g. '"sensor-7"'
"""

# No `from __future__ import annotations`: Dagster reads these annotations at runtime.

import dagster as dg
from pydantic import Field

from golioth_assets.actions import OperationError
from golioth_assets.actions import conflicts as actions
from golioth_assets.core.vocabulary import Resolution, RunTag, SyncKind
from golioth_assets.defs.config import SYNC_OP
from golioth_assets.defs.metadata import markdown_table
from golioth_assets.defs.resources import DeviceStore


class ResolveConfig(dg.Config):
    """Which conflicts, and which value wins."""

    conflict_ids: list[int] = Field(
        default_factory=list, description="Conflict ids (`golioth-sync conflicts list` or the device_conflicts asset)."
    )
    organization_id: str | None = Field(
        default=None,
        description="With conflict_ids: they must belong to it. With all_pending: whose pending conflicts to resolve.",
    )
    all_pending: bool = Field(
        default=False, description="Resolve every pending conflict of organization_id (choice local or remote)."
    )
    choice: Resolution = Field(
        description="local: keep this database's value; remote: keep Golioth's; value: value_json."
    )
    value_json: str | None = Field(
        default=None,
        description='With choice value: the JSON value written to both sides, e.g. "\\"sensor-7\\"" or true.',
    )
    resolved_by: str = Field(description="Who decides: recorded as resolved_by and in the audit trail (changed_by).")


@dg.op(
    description="Record an operator's choice for conflicts (pending → resolved). The next sync applies it.",
    tags={RunTag.kind: SyncKind.resolve.value},
    # Nothing is passed on: the result lives in device_conflicts, never in a pickle on local disk.
    out=dg.Out(dg.Nothing),
)
def resolve_conflicts(context: dg.OpExecutionContext, config: ResolveConfig, store: DeviceStore):
    store.require_schema()
    engine = store.engine
    skipped: list[tuple[int, str]] = []
    try:
        if config.all_pending:
            if config.conflict_ids:
                raise OperationError("give conflict_ids or all_pending, not both")
            if not config.organization_id:
                raise OperationError("all_pending needs organization_id")
            if config.choice == Resolution.value:
                raise OperationError("all_pending takes choice local or remote (a value fits one field, not all)")
            bulk = actions.resolve_all(
                engine, config.organization_id, use=config.choice.value, resolved_by=config.resolved_by
            )
            rows, skipped = bulk.resolved, bulk.skipped
        else:
            if config.choice != Resolution.value and config.value_json is not None:
                raise OperationError("value_json goes with choice value only")
            if config.choice == Resolution.value and config.value_json is None:
                raise OperationError("choice value needs value_json")
            rows = actions.resolve(
                engine,
                config.conflict_ids,
                use=config.choice.value,
                value_json=config.value_json,
                resolved_by=config.resolved_by,
                organization_id=config.organization_id,
            )
    except OperationError as exc:
        # A refused resolution changes nothing; the run fails with the one-line reason.
        raise dg.Failure(description=str(exc)) from None

    for cid, reason in skipped:
        context.log.warning(f"skipped conflict {cid}: {reason}")
    targets = actions.sync_targets(rows)
    summary = [
        {
            "id": r["id"],
            "organization_id": r["organization_id"],
            "device": r["device_name"] or r["device_id"] or r["golioth_device_id"],
            "field": r["field"],
            "resolution": r["resolution"],
            "resolved_value": r["resolved_value"],
            "resolved_by": r["resolved_by"],
        }
        for r in rows
    ]
    context.log.info(f"resolved {len(rows)} conflict(s); the next sync of those devices applies them")
    yield dg.Output(
        None,
        metadata={
            "resolved": dg.MetadataValue.int(len(rows)),
            "skipped": dg.MetadataValue.int(len(skipped)),
            "resolutions": dg.MetadataValue.md(
                markdown_table(
                    _frame(summary),
                    ["id", "organization_id", "device", "field", "resolution", "resolved_value", "resolved_by"],
                )
            ),
            "apply_now": dg.MetadataValue.md(_apply_hint(targets)),
            "conflict_ids": dg.MetadataValue.json([r["id"] for r in rows]),
            "device_ids": dg.MetadataValue.json(targets),
        },
    )


def _frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows)


def _apply_hint(targets: dict[str, list[str]]) -> str:
    if not targets:
        return "_nothing to apply_"
    lines = ["The schedule's next full sync applies these. To apply them now, launch `golioth_targeted_sync`:"]
    for org, device_ids in targets.items():
        ids = ", ".join(f'"{d}"' for d in device_ids[:50])
        lines.append(f"\n- partition `{org}`, config `ops.{SYNC_OP}.config.device_ids: [{ids}]`")
    return "\n".join(lines)


@dg.job(
    name="golioth_resolve_conflicts",
    description="Resolve conflicts from the launchpad: conflict ids (or all pending of an organization) and a "
    "choice (local, remote, or value with value_json), recorded with resolved_by. The next sync applies them.",
    tags={RunTag.kind: SyncKind.resolve.value},
)
def resolve_conflicts_job():
    resolve_conflicts()
