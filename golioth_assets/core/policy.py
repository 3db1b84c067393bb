"""Sync settings, and how a conflict is settled under each policy and direction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from golioth_assets.core.fields import ALL_GROUPS, enabled_fields
from golioth_assets.core.vocabulary import Direction, Policy, values

DIRECTIONS = values(Direction)
POLICIES = values(Policy)


@dataclass(frozen=True)
class SyncSettings:
    direction: str = "bidirectional"
    policy: str = "manual"
    policy_overrides: Mapping[str, str] = field(default_factory=dict)
    field_groups: frozenset[str] = frozenset(ALL_GROUPS)
    allow_deletes: bool = False
    unsynced_fields: frozenset[str] = frozenset()
    """Fields of enabled groups that the local table does not hold (a mapping may leave some out)."""

    @property
    def fields(self) -> tuple[str, ...]:
        """The synced fields of this run: the enabled groups' fields that the local table holds."""
        return tuple(f for f in enabled_fields(self.field_groups) if f not in self.unsynced_fields)

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}")
        for name in (self.policy, *self.policy_overrides.values()):
            if name not in POLICIES:
                raise ValueError(f"conflict policy must be one of {', '.join(POLICIES)}, got {name!r}")
        unknown = set(self.field_groups) - set(ALL_GROUPS)
        if unknown:
            raise ValueError(f"unknown field groups: {', '.join(sorted(unknown))}")

    def policy_for(self, group: str) -> str:
        return self.policy_overrides.get(group, self.policy)

    def writes(self, side: str) -> bool:
        """Whether the direction lets this run write to `side` ("local" or "remote")."""
        if side == "local":
            return self.direction in ("import", "bidirectional")
        if side == "remote":
            return self.direction in ("export", "bidirectional")
        return True


def conflict_winner(policies: pd.Series, local_updated: pd.Series, remote_updated: pd.Series) -> pd.Series:
    """For conflicting cells: "local", "remote", or "manual" (store it for an operator).

    newest_wins compares the local row's updated_at with Golioth's updatedAt. Wall clocks on the two
    sides are not synchronized, so skew can pick the older edit: don't use it for fields that matter.
    A tie, or a missing timestamp, goes to Golioth.
    """
    local_ts = pd.to_datetime(local_updated, utc=True, errors="coerce")
    remote_ts = pd.to_datetime(remote_updated, utc=True, errors="coerce")
    local_newer = (local_ts > remote_ts).fillna(False).to_numpy(dtype=bool)
    winner = np.select(
        [
            policies.to_numpy() == "local_wins",
            policies.to_numpy() == "remote_wins",
            (policies.to_numpy() == "newest_wins") & local_newer,
            policies.to_numpy() == "newest_wins",
        ],
        ["local", "remote", "local", "remote"],
        default="manual",
    )
    return pd.Series(winner, index=policies.index, dtype=object)
