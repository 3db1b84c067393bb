"""When and how long to retry a Golioth call.

Exponential backoff with full jitter (delay = random() * min(max_delay, base_delay * 2**n)) so that
16 threads hitting the same 503 do not come back in lockstep. A per-client budget caps the total
number of retries: when the API is down, one sync run should fail in seconds, not hammer it for
minutes with every one of its thousands of calls retrying.
"""

from __future__ import annotations

import random as _random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import httpx

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})

# A POST create is not idempotent: if it timed out after the server acted, a retry makes a second
# device (or fails 409 on the name). So creates retry only when the server cannot have acted: the
# connection never opened, or it answered 429/503 (refused before doing the work). Other failures
# surface; the sync engine re-finds half-done creates by hardware id on its next run, and handles
# AlreadyExistsError on the name.
CREATE_SAFE_STATUSES = frozenset({429, 503})
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
MAYBE_SENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    # Per request. Under rate limiting, 16 threads share one quota, so one page can meet several
    # 429s in a row before its turn: 8 attempts ride that out; the per-client budget still bounds
    # the total.
    max_attempts: int = 8
    base_delay: float = 0.5
    max_delay: float = 30.0
    budget: int = 200
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    random: Callable[[], float] = field(default=_random.random, repr=False)
    now: Callable[[], float] = field(default=time.time, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1 (1 means no retries)")
        if self.base_delay < 0 or self.max_delay < 0 or self.budget < 0:
            raise ValueError("delays and budget must be >= 0")

    def retries_status(self, status: int, *, idempotent: bool) -> bool:
        return status in (RETRYABLE_STATUSES if idempotent else CREATE_SAFE_STATUSES)

    def retries_exception(self, exc: BaseException, *, idempotent: bool) -> bool:
        return isinstance(exc, NEVER_SENT if not idempotent else NEVER_SENT + MAYBE_SENT)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if retry_after is not None:
            return min(self.max_delay, max(0.0, retry_after))
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return self.random() * ceiling

    def parse_retry_after(self, value: str | None) -> float | None:
        """`Retry-After` is either delta-seconds or an HTTP-date; anything else is ignored."""
        if not value:
            return None
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None or when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - self.now())


class RetryBudget:
    """Thread-safe count of retries left for one client instance."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._left = total
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True

    @property
    def left(self) -> int:
        return self._left
