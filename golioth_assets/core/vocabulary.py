"""The words golioth-sync is built from, each defined once.

Everything else derives from these: the schema's CHECK constraints (`sql_in`), the pydantic types
of a service's settings, the Dagster launchpad config, the CLI's choices and the console's forms.
Each is a `StrEnum`, so a member *is* its string: it compares equal to the text stored in
PostgreSQL and shown to operators, and needs no conversion on the way in or out.
"""

from __future__ import annotations

from enum import StrEnum

# The functional form lets a member be called `import` (a keyword). Dagster's launchpad shows
# member names, so every member's name is its value.
Direction = StrEnum("Direction", [("import", "import"), ("export", "export"), ("bidirectional", "bidirectional")])
"""Which sides a sync may write: import writes the local table, export writes Golioth."""


class Policy(StrEnum):
    """How a field edited on both sides since the base is settled."""

    manual = "manual"
    local_wins = "local_wins"
    remote_wins = "remote_wins"
    newest_wins = "newest_wins"


class FieldGroup(StrEnum):
    """Fields a service switches on and off together (core/fields.py lists each group's fields)."""

    identity = "identity"
    tags = "tags"
    blueprint = "blueprint"
    cohort = "cohort"
    enabled = "enabled"
    desired_state = "desired_state"
    observed = "observed"


class Side(StrEnum):
    """Where a plan row writes."""

    local = "local"
    remote = "remote"
    none = "none"  # bookkeeping only: links and base snapshots


class Action(StrEnum):
    """What a plan row does."""

    create = "create"
    update = "update"
    delete = "delete"
    observe = "observe"  # observed fields, Golioth → local
    link = "link"
    unlink = "unlink"
    agree = "agree"  # both sides hold the same value: record it as the new base


WRITE_ACTIONS: tuple[Action, ...] = (Action.create, Action.update, Action.delete, Action.observe)
BOOKKEEPING_ACTIONS: tuple[Action, ...] = (Action.link, Action.unlink, Action.agree)


class Reason(StrEnum):
    """Why a plan row exists: the structured kind that code decides on. The `reason` text shown to
    operators is made from it (plus who resolved, which policy settled)."""

    agreed = "agreed"
    changed_locally = "changed_locally"
    changed_in_golioth = "changed_in_golioth"
    settled_by_policy = "settled_by_policy"
    resolved_by_operator = "resolved_by_operator"
    gone_on_both_sides = "gone_on_both_sides"
    deleted_locally = "deleted_locally"
    deleted_in_golioth = "deleted_in_golioth"
    deletes_off = "deletes_off"
    observed_in_golioth = "observed_in_golioth"
    matched_by_hardware_id = "matched_by_hardware_id"
    matched_unfinished_create = "matched_unfinished_create"
    new_in_golioth = "new_in_golioth"
    new_locally = "new_locally"
    no_hardware_ids = "no_hardware_ids"  # new locally, held: the local table maps no hardware ids


class PlanStatus(StrEnum):
    planned = "planned"
    applied = "applied"
    failed = "failed"
    skipped = "skipped"  # changed concurrently: the next run sees it
    blocked = "blocked"  # the direction forbids the write


class ConflictType(StrEnum):
    field = "field"
    delete_vs_modify = "delete_vs_modify"
    identity = "identity"


class ConflictStatus(StrEnum):
    """pending → resolved → applied; or pending → superseded when both sides converge on their own."""

    pending = "pending"
    resolved = "resolved"
    applied = "applied"
    superseded = "superseded"


class Resolution(StrEnum):
    """An operator's choice for a conflict."""

    local = "local"
    remote = "remote"
    value = "value"


class RunStatus(StrEnum):
    """A sync's outcome in golioth_sync_log."""

    running = "running"
    success = "success"
    partial = "partial"  # some device writes failed; the next run retries them
    failed = "failed"


class BatchOutcome(StrEnum):
    """How an organization ended in a batched run: its sync's status, or busy (another sync held
    it, so this one never started: nothing failed, the next round syncs it)."""

    success = "success"
    partial = "partial"
    failed = "failed"
    busy = "busy"


class SyncKind(StrEnum):
    """What a Dagster run does: the whole organization, some devices, or apply resolutions."""

    full = "full"
    targeted = "targeted"
    resolve = "resolve"


class Trigger(StrEnum):
    """Who asked for a sync."""

    schedule = "schedule"
    webhook = "webhook"  # registry events from Golioth, through the webhook inbox
    local_change = "local_change"  # edits captured in the local table, through the same inbox
    live = "live"  # one batch holding both: webhook events and captured local changes
    manual = "manual"  # the Dagster UI's launchpad
    cli = "cli"
    console = "console"
    demo = "demo"
    failure = "failure"  # a row opened by the failure sensor for a run that never opened its own
    retry = "retry"  # the schedule's retry, on its own, of an organization whose last full sync failed
    backfill = "backfill"  # a backfill of the sync assets (Dagster UI, GraphQL): runs over ranges of partitions


class RunTag:
    """Dagster run tag keys: ours (golioth-sync/…) and Dagster's own that we read. Plain strings,
    not an enum: Dagster serializes tags and refuses enum members (use `.value` for tag values).

    The run list shows every tag outside Dagster's `dagster/` namespace on every row, so each one
    costs a line per run: only what operators filter by, or code reads, is a tag (docs/dagster.md)."""

    partition = "dagster/partition"  # every run of a partitioned job carries it
    org = partition  # the organization is the partition: one tag, on every sync run however started
    kind = "golioth-sync/kind"  # full | targeted | resolve: the job's own tag (the schedule reads it)
    trigger = "golioth-sync/trigger"  # who asked: schedule, webhook, cli, ... (the sync log reads it)
    claim = "golioth-sync/claim"  # inbox runs: the events a run owns (the op and the failure sensor)
    dry_run = "golioth-sync/dry-run"  # "true" on dry runs only
    process = "golioth-sync/process"  # runs the CLI executes in its own process: "<host>/<pid>"
    run_key = "dagster/run_key"  # what the daemon tags a sensor's or schedule's runs with
    backfill = "dagster/backfill"  # a backfill's runs: its id
    range_start = "dagster/asset_partition_range_start"  # a run over a range of partitions (a backfill's)
    range_end = "dagster/asset_partition_range_end"


def values(vocabulary: type[StrEnum]) -> tuple[str, ...]:
    """The members' strings, in definition order (for click.Choice, forms and messages)."""
    return tuple(member.value for member in vocabulary)


def sql_in(column: str, vocabulary: type[StrEnum]) -> str:
    """A CHECK constraint's text: `column IN ('a','b')`. Values are our own identifiers (no quotes)."""
    return f"{column} IN ({','.join(repr(v) for v in values(vocabulary))})"
