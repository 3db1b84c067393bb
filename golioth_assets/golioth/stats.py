"""Counters one client accumulates, for logs and Dagster run metadata."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class ClientStats:
    requests: int = 0  # HTTP attempts, retries included
    retries: int = 0
    pages: int = 0  # list pages fetched (devices, tags, blueprints, cohorts)
    transport_errors: int = 0  # attempts that got no HTTP response (connect error, timeout)
    backoff_seconds: float = 0.0  # total time slept between retries, across all threads
    by_status: Counter[int] = field(default_factory=Counter)  # HTTP status -> count
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record_response(self, status: int) -> None:
        with self._lock:
            self.requests += 1
            self.by_status[status] += 1

    def record_transport_error(self) -> None:
        with self._lock:
            self.requests += 1
            self.transport_errors += 1

    def record_retry(self, delay: float) -> None:
        with self._lock:
            self.retries += 1
            self.backoff_seconds += delay

    def record_page(self) -> None:
        with self._lock:
            self.pages += 1

    def snapshot(self) -> ClientStats:
        with self._lock:
            return ClientStats(
                self.requests,
                self.retries,
                self.pages,
                self.transport_errors,
                self.backoff_seconds,
                Counter(self.by_status),
            )

    def since(self, before: ClientStats) -> ClientStats:
        """What was counted after `before` (an earlier snapshot of these stats): one step's share."""
        now = self.snapshot()
        return ClientStats(
            now.requests - before.requests,
            now.retries - before.retries,
            now.pages - before.pages,
            now.transport_errors - before.transport_errors,
            now.backoff_seconds - before.backoff_seconds,
            now.by_status - before.by_status,
        )

    def as_metadata(self) -> dict[str, int | float]:
        """Flat, JSON-friendly values, ready for `context.add_output_metadata`."""
        s = self.snapshot()
        out: dict[str, int | float] = {
            "golioth_requests": s.requests,
            "golioth_retries": s.retries,
            "golioth_pages": s.pages,
            "golioth_transport_errors": s.transport_errors,
            "golioth_backoff_seconds": round(s.backoff_seconds, 3),
        }
        out.update({f"golioth_status_{k}": v for k, v in sorted(s.by_status.items())})
        return out
