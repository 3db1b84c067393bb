"""Helpers for tests, benchmarks and the demo: a receiver on a real socket, and signed requests."""

from __future__ import annotations

import threading
import time
import uuid
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

from golioth_assets.webhooks.config import ReceiverConfig
from golioth_assets.webhooks.protocol import protocol_for
from golioth_assets.webhooks.verify import sign


def signed_headers(
    body: bytes, *secrets: str, msg_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    """Standard Webhooks headers signing `body` with every given secret (as a rotating sender does)."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(body, msg_id, timestamp, s) for s in secrets),
    }


class ServerThread:
    """Run an ASGI app under uvicorn in a background thread on a free loopback port, with the
    receiver's bounded HTTP protocol (`limits`: the bounds; ReceiverConfig's defaults if not given)."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, limits: ReceiverConfig | None = None):
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            http=protocol_for(limits or ReceiverConfig()),
            ws="none",
        )
        self.server = uvicorn.Server(self.config)
        self._thread = threading.Thread(target=self.server.run, name="receiver-under-test", daemon=True)
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the receiver did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.should_exit = True
        self._thread.join(15)


def make_webhook_service(
    engine,
    organization_id: str,
    *,
    pipeline_secret_env: str | None = None,
    signing_key_env: str | None = None,
    project_id: str = "proj-test",
) -> int:
    """A webhook-enabled service for `organization_id` taking Golioth pipeline deliveries (checked
    against the variable `pipeline_secret_env`) and/or signed events (`signing_key_env`); returns its id."""
    from golioth_assets.store.services import ServiceSettings, create_service

    settings = ServiceSettings(
        organization_id=organization_id,
        name=f"{organization_id} golioth",
        project_id=project_id,
        webhook_enabled=True,
        webhook_secret_env=pipeline_secret_env,
        webhook_signing_key_env=signing_key_env,
    )
    with engine.begin() as conn:
        return create_service(conn, settings).id
