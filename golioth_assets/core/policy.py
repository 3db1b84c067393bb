"""Sync settings, and how a conflict is settled under each policy and direction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from golioth_assets.core.fields import ALL_GROUPS, enabled_fields
from golioth_assets.core.vocabulary import Direction, Policy, Side, values

DIRECTIONS = values(Direction)
POLICIES = values(Policy)


@dataclass(frozen=True)
class SyncSettings:
    direction: str = Direction.bidirectional
    policy: str = Policy.manual
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
        """Whether the direction lets this run write to `side` (Side.local or Side.remote)."""
        if side == Side.local:
            return self.direction in (Direction["import"], Direction.bidirectional)
        if side == Side.remote:
            return self.direction in (Direction.export, Direction.bidirectional)
        return True


def conflict_winner(policies: pd.Series, local_updated: pd.Series, remote_updated: pd.Series) -> pd.Series:
    """For conflicting cells, who wins: Side.local, Side.remote, or Policy.manual (store it for an operator).

    newest_wins compares the local row's updated_at with Golioth's updatedAt. Wall clocks on the two
    sides are not synchronized, so skew can pick the older edit: don't use it for fields that matter.
    A tie, or a missing timestamp, goes to Golioth.
    """
    local_ts = pd.to_datetime(local_updated, utc=True, errors="coerce")
    remote_ts = pd.to_datetime(remote_updated, utc=True, errors="coerce")
    local_newer = (local_ts > remote_ts).fillna(False).to_numpy(dtype=bool)
    policy = policies.to_numpy()
    winner = np.select(
        [
            policy == Policy.local_wins,
            policy == Policy.remote_wins,
            (policy == Policy.newest_wins) & local_newer,
            policy == Policy.newest_wins,
        ],
        [Side.local, Side.remote, Side.local, Side.remote],
        default=Policy.manual,
    )
    return pd.Series(winner, index=policies.index, dtype=object)
