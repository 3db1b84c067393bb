"""Fault injection (errors, rate limiting, latency) and request statistics.

Faults are drawn from a `random.Random(seed)` per scope (the simulator-wide scope, or a
project's own override), so a sequential run with the same seed sees the same faults.
They are never applied to the control API.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import INTERNAL, RESOURCE_EXHAUSTED, UNAVAILABLE, ApiError


@dataclass
class FaultConfig:
    error_rate: float = 0.0  # share of requests answered 500 INTERNAL
    unavailable_rate: float = 0.0  # share answered 503 UNAVAILABLE
    rate_limit_rps: int | None = None  # above this many requests in one second: 429
    rate_limit_share: float = 0.0  # share answered 429 whatever the rate
    retry_after_s: int = 1  # Retry-After header on 429s
    # Retry-After header on the injected 500s and 503s (None: none, as Golioth sends). Tests of what a
    # failing step records set 0, so the client's retries come at once instead of after its backoff.
    error_retry_after_s: float | None = None
    latency_ms: float = 0.0  # added to every request
    spike_ms: float = 0.0  # extra latency on a spike...
    spike_probability: float = 0.0  # ...which happens with this probability
    methods: list[str] = field(default_factory=list)  # only these HTTP methods (empty: all)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> FaultConfig:
        data = data or {}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        config = cls(**data)
        config.methods = [m.upper() for m in config.methods]
        return config

    @property
    def active(self) -> bool:
        return bool(
            self.error_rate
            or self.unavailable_rate
            or self.rate_limit_rps is not None
            or self.rate_limit_share
            or self.latency_ms
            or (self.spike_ms and self.spike_probability)
        )


@dataclass(slots=True)
class FaultDecision:
    delay_s: float = 0.0
    error: ApiError | None = None


_NO_FAULT = FaultDecision()


class FaultScope:
    """One fault configuration with its own rng and rate-limit window."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self._window = -1
        self._count = 0

    def decide(self, method: str, now: float) -> FaultDecision:
        c = self.config
        if not c.active or (c.methods and method not in c.methods):
            return _NO_FAULT
        delay_ms = c.latency_ms
        if c.spike_probability and self.rng.random() < c.spike_probability:
            delay_ms += c.spike_ms
        error = None
        if c.rate_limit_rps is not None:
            window = int(now)
            if window != self._window:
                self._window, self._count = window, 0
            self._count += 1
            if self._count > c.rate_limit_rps:
                error = self._too_many()
        if error is None and (c.rate_limit_share or c.error_rate or c.unavailable_rate):
            r = self.rng.random()
            if r < c.rate_limit_share:
                error = self._too_many()
            elif r < c.rate_limit_share + c.error_rate:
                error = ApiError(INTERNAL, "internal error", headers=self._error_headers())
            elif r < c.rate_limit_share + c.error_rate + c.unavailable_rate:
                error = ApiError(UNAVAILABLE, "service unavailable", headers=self._error_headers())
        if not delay_ms and error is None:
            return _NO_FAULT
        return FaultDecision(delay_s=delay_ms / 1000.0, error=error)

    def _error_headers(self) -> dict[str, str] | None:
        after = self.config.error_retry_after_s
        return None if after is None else {"Retry-After": f"{max(0.0, after):g}"}

    def _too_many(self) -> ApiError:
        retry_after = max(1, math.ceil(self.config.retry_after_s))
        return ApiError(RESOURCE_EXHAUSTED, "rate limit exceeded", headers={"Retry-After": str(retry_after)})


class FaultRegistry:
    """The simulator-wide fault scope plus per-project overrides (so tenants in one server don't interfere)."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        self._lock = threading.Lock()
        self.global_scope = FaultScope(config or FaultConfig())
        self.project_scopes: dict[str, FaultScope] = {}

    def set_global(self, config: FaultConfig) -> None:
        with self._lock:
            self.global_scope = FaultScope(config)

    def set_project(self, project_id: str, config: FaultConfig | None) -> None:
        with self._lock:
            if config is None:
                self.project_scopes.pop(project_id, None)
            else:
                self.project_scopes[project_id] = FaultScope(config)

    def get_project(self, project_id: str) -> FaultConfig | None:
        scope = self.project_scopes.get(project_id)
        return scope.config if scope else None

    def decide(self, project_id: str | None, method: str) -> FaultDecision:
        with self._lock:
            scope = self.project_scopes.get(project_id) if project_id else None
            return (scope or self.global_scope).decide(method, time.monotonic())


class RequestStats:
    """HTTP request counts by project, method, route template and status, and how many requests
    are in flight (received, not yet answered and counted: e.g. sleeping out injected latency)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str, str, int]] = Counter()
        self._in_flight: Counter[str] = Counter()

    def started(self, project_id: str | None) -> None:
        with self._lock:
            self._in_flight[project_id or ""] += 1

    def finished(self, project_id: str | None) -> None:
        """After `record` (if the request got that far): at inFlight 0, every request is counted."""
        with self._lock:
            key = project_id or ""
            self._in_flight[key] -= 1
            if self._in_flight[key] <= 0:
                del self._in_flight[key]

    def record(self, project_id: str | None, method: str, route: str, status: int) -> None:
        key = (project_id or "", method, route, status)
        with self._lock:
            self._counts[key] += 1

    def snapshot(self, project_id: str | None = None) -> dict[str, Any]:
        with self._lock:
            items = [(k, n) for k, n in self._counts.items() if project_id is None or k[0] == project_id]
            in_flight = sum(n for p, n in self._in_flight.items() if project_id is None or p == project_id)
        by_method: Counter[str] = Counter()
        by_status: Counter[str] = Counter()
        rows = []
        for (pid, method, route, status), n in sorted(items):
            by_method[method] += n
            by_status[str(status)] += n
            rows.append({"projectId": pid, "method": method, "route": route, "status": status, "count": n})
        return {
            "total": sum(n for _, n in items),
            "byMethod": dict(by_method),
            "byStatus": dict(by_status),
            "byRoute": rows,
            "inFlight": in_flight,
        }

    def reset(self, project_id: str | None = None) -> None:
        """Forget the counts (requests in flight stay in flight, and are counted when answered)."""
        with self._lock:
            if project_id is None:
                self._counts.clear()
            else:
                for key in [k for k in self._counts if k[0] == project_id]:
                    del self._counts[key]
