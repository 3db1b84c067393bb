"""Errors an operator can cause: one line each, safe to print (no secrets, no input echoes)."""

from __future__ import annotations


class OperationError(Exception):
    """A refused operation. `str(error)` is one line meant for the operator."""

    def __init__(self, message: str) -> None:
        # One line, whatever the cause's formatting: CLI, console and Dagster show it as is.
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        return str(self)


class NotFound(OperationError, LookupError):
    """An unknown id or organization."""


class InvalidInput(OperationError, ValueError):
    """A value that does not validate (settings, JSON, choices)."""


class AlreadySettled(OperationError):
    """A conflict that is no longer pending (resolved, applied or superseded): nothing changed."""
