"""Typed errors for the Golioth client.

Every error carries where it happened (method, path, project, base URL) so a failed Dagster run says
which project and environment to look at. None of them ever holds the API key, the request or the
response object: those carry headers, and a traceback or pickled error must not leak the key.
"""

from __future__ import annotations

from typing import Any

# gRPC status names: grpc-gateway puts the numeric code in the error body.
GRPC_CODES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


class GoliothError(Exception):
    """Base class. `status` is the HTTP status (None for transport errors), `code` the gRPC code."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        method: str | None = None,
        path: str | None = None,
        project_id: str | None = None,
        base_url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.method = method
        self.path = path
        self.project_id = project_id
        self.base_url = base_url

    @property
    def code_name(self) -> str | None:
        return GRPC_CODES.get(self.code) if self.code is not None else None

    def _where(self) -> str:
        request = f"{self.method} {self.path}" if self.method else "request"
        return f"{request}; project {self.project_id!r} at {self.base_url}"

    def _what(self) -> str:
        parts = [str(self.status) if self.status is not None else None, self.code_name]
        head = " ".join(p for p in parts if p)
        return f"{head}: {self.message}" if head else self.message

    def __str__(self) -> str:
        return f"{self._what()} [{self._where()}]"


class AuthenticationError(GoliothError):
    """401/403. Never retried: a wrong key or missing permission does not heal by waiting."""

    def __init__(self, message: str, *, key_env_var: str = "GOLIOTH_API_KEY", **where: Any) -> None:
        super().__init__(message, **where)
        self.key_env_var = key_env_var

    def __str__(self) -> str:
        return (
            f"Golioth rejected the API key for project {self.project_id!r} at {self.base_url} "
            f"({self._what()}; {self.method} {self.path}). Check that {self.key_env_var} holds a "
            "key for this project and that it has not been revoked."
        )


class NotFoundError(GoliothError):
    """404."""


class AlreadyExistsError(GoliothError):
    """409: the name is already in use in the project (device names, tag and blueprint names)."""


class InvalidArgumentError(GoliothError):
    """400: Golioth's `message` says what was wrong (e.g. "hex string is not a valid ObjectID")."""


class RateLimitedError(GoliothError):
    """429 that outlasted the retry policy."""


class ServerError(GoliothError):
    """5xx that outlasted the retry policy (or was not safe to retry)."""


class TransportError(GoliothError):
    """Connect error or timeout that outlasted the retry policy; the httpx error is __cause__."""


class RetryBudgetExceeded(GoliothError):
    """The client's total retry budget is spent: the API is unhealthy, stop rather than pile on."""


class InconsistentListingError(GoliothError):
    """The device list kept changing while it was paged, so a complete snapshot was not read."""


class InvalidResponseError(GoliothError):
    """A 2xx answer that is not what the API returns (not JSON, a wrong shape, an absurd `total`):
    a proxy's error page, a truncated body. Not retried: the same request gets the same answer."""


class ConfigurationError(GoliothError):
    """The client was not given what a call needs (e.g. organization_id for cohorts)."""


class BatchAborted(GoliothError):
    """A run_many item that was not attempted because the batch stopped (e.g. authentication)."""
