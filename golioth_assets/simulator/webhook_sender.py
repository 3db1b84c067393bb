"""Outgoing webhooks: pipeline data deliveries and signed device events.

Deliveries go through a queue drained by one background thread (so they arrive in the
order they happened and never slow the API path), with a small retry on connection
errors and 5xx. Best-effort, like Golioth, which documents no retry policy.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from .clock import format_ms
from .model import EventsTarget, WebhookTarget

log = logging.getLogger(__name__)

DATA_CE_TYPE = "io.golioth.data.v1/.s/{path}"


@dataclass(slots=True)
class Delivery:
    kind: str  # "data" or "event"
    url: str
    body: bytes
    headers: dict[str, str]


def data_delivery(
    target: WebhookTarget, project_id: str, device_id: str, path: str, data: Any, now_ns: int | None = None
) -> Delivery:
    """A pipeline webhook destination POST: the data message, or the inject-metadata envelope."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    if target.inject_metadata:
        seconds, nanos = divmod(now_ns, 1_000_000_000)
        payload: Any = {
            "data": data,
            "device_id": device_id,
            "project_id": project_id,
            "timestamp": {"seconds": seconds, "nanos": nanos},
        }
    else:
        payload = data
    headers = {
        "Content-Type": "application/json",
        "Ce-Specversion": "1.0",
        "Ce-Id": str(uuid.uuid4()),
        "Ce-Source": device_id,
        "Ce-Subject": project_id,
        "Ce-Type": DATA_CE_TYPE.format(path=path.strip("/")),
        "Ce-Time": format_ms(now_ns // 1_000_000),
        **target.headers,
    }
    return Delivery("data", target.url, json.dumps(payload, separators=(",", ":")).encode(), headers)


def event_delivery(
    target: EventsTarget, event_type: str, project_id: str, device_id: str, data: dict, now_ms: int | None = None
) -> Delivery:
    """A Standard Webhooks signed device event: HMAC-SHA256 over `{id}.{timestamp}.{body}`."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    body = json.dumps(
        {
            "type": event_type,
            "device_id": device_id,
            "project_id": project_id,
            "data": data,
            "timestamp": format_ms(now_ms),
        },
        separators=(",", ":"),
    )
    msg_id = f"msg_{uuid.uuid4().hex}"
    sent_at = datetime.fromtimestamp(now_ms // 1000, tz=UTC)
    headers = {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(now_ms // 1000),
        "webhook-signature": Webhook(target.secret).sign(msg_id, sent_at, body),
    }
    return Delivery("event", target.url, body.encode(), headers)


class WebhookSender:
    def __init__(self, attempts: int = 3, backoff_s: float = 0.2, timeout_s: float = 5.0) -> None:
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._queue: queue.Queue[Delivery | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.sent = 0
        self.failed = 0
        self.last_error: str | None = None

    def send(self, delivery: Delivery) -> None:
        self._ensure_thread()
        self._queue.put(delivery)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued delivery was attempted. True when drained in time."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            return {
                "pending": self._queue.unfinished_tasks,
                "sent": self.sent,
                "failed": self.failed,
                "lastError": self.last_error,
            }

    def reset_stats(self) -> None:
        with self._stats_lock:
            self.sent = self.failed = 0
            self.last_error = None

    def close(self) -> None:
        thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=self.timeout_s * self.attempts + 1)
            self._thread = None

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="sim-webhook-sender", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout_s) as client:
            while True:
                delivery = self._queue.get()
                try:
                    if delivery is None:
                        return
                    self._deliver(client, delivery)
                finally:
                    self._queue.task_done()

    def _deliver(self, client: httpx.Client, delivery: Delivery) -> None:
        error = "not attempted"
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff_s * (2 ** (attempt - 1)))
            try:
                response = client.post(delivery.url, content=delivery.body, headers=delivery.headers)
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code < 500:
                with self._stats_lock:
                    if response.status_code < 300:
                        self.sent += 1
                    else:
                        # A 4xx is the receiver's final answer (bad secret, bad payload): don't retry.
                        self.failed += 1
                        self.last_error = f"HTTP {response.status_code} from {delivery.url}"
                return
            error = f"HTTP {response.status_code} from {delivery.url}"
        log.warning("webhook delivery to %s failed: %s", delivery.url, error)
        with self._stats_lock:
            self.failed += 1
            self.last_error = error
