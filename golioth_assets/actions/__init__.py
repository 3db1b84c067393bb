"""Operator actions shared by every front end: the CLI (`golioth-sync services|conflicts|history`),
the Dagster resolve job and the web console all call these functions, so a setting, a resolution
or a replay is validated and written the same way whichever door an operator used.

Every function takes a SQLAlchemy Engine and owns its transaction. Errors an operator can cause
are `OperationError`s with a one-line message that never contains a secret.
"""

from golioth_assets.actions.errors import AlreadySettled, InvalidInput, NotFound, OperationError

__all__ = ["AlreadySettled", "InvalidInput", "NotFound", "OperationError"]
