"""Launchpad configuration for a sync run (a pydantic `dagster.Config`), and the one place that
builds a sync's run config: the sensors, the CLI and the resolve job's hint all go through
`sync_run_config`, so the op's name is written once."""

from collections.abc import Mapping
from typing import Any

import dagster as dg
from pydantic import Field

from golioth_assets.core.vocabulary import Direction, Policy, RunTag, Trigger
from golioth_assets.engine.sync import SyncRequest

SYNC_OP = "golioth_sync"  # the sync's one op: the multi-asset in defs/assets.py


class SyncRunConfig(dg.Config):
    """How this run syncs. Everything is optional: an empty config is a full sync with the
    service's own settings."""

    direction: Direction | None = Field(default=None, description="Override the service's direction for this run.")
    dry_run: bool = Field(default=False, description="Plan only: show the plan in the metadata, write nothing.")
    policy: Policy | None = Field(default=None, description="Override the conflict policy (all field groups).")
    device_ids: list[str] = Field(
        default_factory=list, description="Local or Golioth device ids: a targeted sync of just these devices."
    )

    def to_request(self, organization_id: str, run_id: str, tags: Mapping[str, str]) -> SyncRequest:
        return SyncRequest(
            organization_id,
            direction=self.direction.value if self.direction else None,
            policy=self.policy.value if self.policy else None,
            dry_run=self.dry_run,
            device_ids=list(self.device_ids) or None,
            trigger=tags.get(RunTag.trigger, Trigger.manual),
            dagster_run_id=run_id,
        )


def sync_run_config(**config: Any) -> dict:
    """A sync's run config (`ops: golioth_sync: config: ...`), for SyncRunConfig's fields (checked here)."""
    SyncRunConfig(**config)  # fail here, at the caller, on a field the launchpad would refuse
    return {"ops": {SYNC_OP: {"config": config}}}
