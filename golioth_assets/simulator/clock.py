"""Timestamps and ObjectIds.

Golioth ids are MongoDB ObjectIds (24 hex chars) and timestamps are RFC3339 with
milliseconds and a `Z`. The write clock never repeats a millisecond, so `updatedAt`
is guaranteed to move on every write even when two writes land in the same ms.
"""

from __future__ import annotations

import random
import re
import threading
import time
from datetime import UTC, datetime

from .errors import MSG_BAD_OBJECT_ID, invalid

_OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")


def is_object_id(value: str) -> bool:
    return isinstance(value, str) and _OBJECT_ID.match(value) is not None


def require_object_id(value: str) -> str:
    if not is_object_id(value):
        raise invalid(MSG_BAD_OBJECT_ID)
    return value


def format_ms(ms: int) -> str:
    """RFC3339 UTC with exactly three fractional digits, e.g. 2025-09-08T18:13:25.775Z."""
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def format_ns(ns: int) -> str:
    """RFC3339 with nanoseconds, the way the firmware update metadata carries `time`."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def parse_rfc3339_ms(value: str) -> int:
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC).timestamp() * 1000)


class WriteClock:
    """Strictly increasing wall-clock milliseconds."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        with self._lock:
            now = int(time.time() * 1000)
            if now <= self._last:
                now = self._last + 1
            self._last = now
            return now


class ObjectIdFactory:
    """ObjectIds: 4-byte seconds, 5 random bytes from a seeded rng, 3-byte counter.

    Seeded so that a project seeded twice with the same seed gets the same ids.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._prefix = rng.getrandbits(40)
        self._counter = rng.getrandbits(24)

    def make(self, seconds: int) -> str:
        self._counter = (self._counter + 1) & 0xFFFFFF
        return f"{seconds & 0xFFFFFFFF:08x}{self._prefix:010x}{self._counter:06x}"
