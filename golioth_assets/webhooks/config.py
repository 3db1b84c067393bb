"""The receiver's knobs, read from the environment.

Environment (not arguments) because `uvicorn --workers N` builds the app in each worker process
from an import string: the CLI writes its options to these variables and every worker reads them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

ENV_PREFIX = "GOLIOTH_SYNC_WEBHOOK_"


@dataclass(frozen=True)
class ReceiverConfig:
    max_body_bytes: int = 1024 * 1024
    """Bodies above this are answered 413 (checked while reading, not only from Content-Length)."""
    service_cache_seconds: float = 5.0
    """How long a service's settings are reused before device_services is read again."""
    signature_tolerance_seconds: int = 300
    """Standard Webhooks: how far webhook-timestamp may be from our clock, either way."""
    max_queue: int = 1000
    """Events waiting for their group commit in this process; beyond it new requests get 503."""
    max_in_flight: int = 64
    """Requests being handled at once in this process; beyond it new requests get 503.

    Roughly one worker's rate times the latency budget (≈1,500/s × 50 ms ≈ 64 here): more than
    that waiting means the next one would be answered too late, so it is better refused now."""
    max_loop_lag_ms: float = 0.0
    """Shed (503) while the event loop runs this late; 0 turns lag-based shedding off."""
    max_batch: int = 500
    """Events per group-commit transaction."""
    writers: int = 2
    """Threads committing batches concurrently (each holds one database connection)."""
    overload_retry_after: int = 1
    database_retry_after: int = 5
    # Bounds on what a client may send before the app sees a request (webhooks/protocol.py).
    max_header_bytes: int = 16 * 1024
    """Request line and headers together; a longer head is answered 431 and the connection closed."""
    max_headers: int = 100
    """Header fields per request; more are answered 431."""
    max_url_bytes: int = 2048
    """The request target (path and query); longer is answered 414."""
    header_timeout_seconds: float = 10.0
    """From accepting a connection (or a later request's first byte) to the end of the headers; 408 after."""
    body_timeout_seconds: float = 30.0
    """From the end of the headers to the end of the body; the connection is closed after."""
    max_connections: int = 1000
    """Connections open at once in this process; more are closed as soon as they are accepted."""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ReceiverConfig:
        env = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw not in (None, ""):
                default: Any = f.default  # every field has an int or float default
                values[f.name] = type(default)(raw)  # int/float from the default's type
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        return {ENV_PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in fields(self)}
