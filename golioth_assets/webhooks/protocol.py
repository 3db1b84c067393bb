"""uvicorn's httptools protocol with the bounds a server on the internet needs, before any app code runs.

uvicorn's httptools protocol accepts a request line and headers of any size and number (a 32 MiB
header and 50,000 headers were accepted), and waits for ever for a request that arrives one byte at a
time (slowloris). This subclass bounds, per connection:

- the request head (request line and headers together) to `max_header_bytes`: 431, then close;
- the request target to `max_url_bytes` (414) and the number of headers to `max_headers` (431);
- the time from accepting a connection (or from the first byte of a later request) to the end of
  its headers to `header_timeout_seconds` (408, then close), and from there to the end of its body
  to `body_timeout_seconds` (close: the app sees the client leave);
- the connections open at once in this process to `max_connections` (more are closed on accept).

So the receiver is safe to expose without a proxy in front: a client can hold at most
max_header_bytes (plus one socket read) of head and max_body_bytes of body for a bounded time.
The bounds are ReceiverConfig fields: `protocol_for(config)` gives a class carrying them (tests,
ServerThread); the CLI names `BoundedHttpToolsProtocol`, which reads them from the environment like
the app does, so every uvicorn worker gets the same bounds.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from golioth_assets.webhooks.config import ReceiverConfig

log = logging.getLogger(__name__)

_REASONS = {408: b"Request Timeout", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


class _Refused(Exception):
    """Raised from a parser callback to stop parsing (httptools reports it as a parser error); the
    refusal itself is on the protocol."""


@functools.cache
def _limits_from_env() -> ReceiverConfig:
    return ReceiverConfig.from_env()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[ReceiverConfig | None] = None
    """The bounds; None reads them from the environment (GOLIOTH_SYNC_WEBHOOK_*), once per process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bounds = self.limits or _limits_from_env()
        self._in_head = True
        self._head_bytes = 0
        self._url_bytes = 0
        self._header_count = 0
        self._refusal: tuple[int, str] | None = None
        self._deadline: asyncio.TimerHandle | None = None

    # -- connection ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._bounds.max_connections:
            log.warning("refusing a connection: %d open (max_connections)", len(self.connections) - 1)
            transport.abort()
            return
        self._arm(self._bounds.header_timeout_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # While a head is being received, feed no more than the head may still grow: a head that
        # fills its allowance without ending is refused before the parser buffers any more of it.
        while data and not self.transport.is_closing():
            if self._in_head:
                room = self._bounds.max_header_bytes - self._head_bytes
                if room <= 0:
                    self._refuse(431, "request headers too large")
                    return
                chunk, data = data[:room], data[room:]
                self._head_bytes += len(chunk)
            else:
                chunk, data = data, b""
            self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        """uvicorn's data_received, except that a refusal raised from a callback is answered as such."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(chunk)
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(*self._refusal)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    # -- parser callbacks ------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url_bytes = 0
        self._header_count = 0
        if self._deadline is None:  # a later request on a kept-alive connection: its own head time
            self._arm(self._bounds.header_timeout_seconds)
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self._bounds.max_url_bytes:
            self._refusal = (414, "request target too long")
            raise _Refused
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self._bounds.max_headers:
            self._refusal = (431, "too many request headers")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._arm(self._bounds.body_timeout_seconds)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head = True
        super().on_message_complete()

    # -- refusals and deadlines ------------------------------------------------------------------------

    def _refuse(self, status: int, reason: str) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        log.debug("refusing a request from %s: %s", self.client, reason)
        if self.cycle is None or self.cycle.response_complete:  # never in the middle of another response
            body = reason.encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, _REASONS.get(status, b""), len(body), body)
            )
        self.transport.close()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self._in_head:
            self._refuse(408, "request not received in time")
        elif not self.transport.is_closing():
            log.debug("closing a connection from %s: body not received in time", self.client)
            self.transport.close()


def protocol_for(config: ReceiverConfig) -> type[BoundedHttpToolsProtocol]:
    """A protocol class carrying `config`'s bounds (for a receiver run in-process)."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": config})
