"""Running the simulator: in a background thread, in a subprocess, or in the foreground.

    with SimulatorServer(projects=[ProjectSpec("p1", "key-1", devices=1000, seed=42)]) as sim:
        httpx.get(f"{sim.url}/v1/projects/p1/devices", headers={"x-api-key": "key-1"})

Thread mode shares the GIL with the caller; benchmarks use `start_subprocess()` so the
client and the server each get a core. Uvicorn runs with warning logs and no access log.
"""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from . import persist
from .app import build_app
from .control import SimulatorControl
from .faults import FaultConfig
from .state import ProjectFleet, ProjectSpec, SimState
from .webhook_sender import WebhookSender

READY_PREFIX = "SIMULATOR_READY "


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(app: Any) -> uvicorn.Server:
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30)
    return uvicorn.Server(config)


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class SimulatorServer:
    def __init__(
        self,
        projects: Sequence[ProjectSpec] = (),
        faults: FaultConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        webhook_attempts: int = 3,
        webhook_backoff_s: float = 0.2,
        state_file: str | Path | None = None,
        fleets: Sequence[ProjectFleet] = (),
    ) -> None:
        self.projects = list(projects)
        self.fleets = list(fleets)  # many alike projects, seeded on first use (state.ProjectFleet)
        self.state_file = Path(state_file) if state_file else None  # persist.py: kept across restarts
        self.faults = faults or FaultConfig()
        self.host = host
        self.port = port
        self.webhook_attempts = webhook_attempts
        self.webhook_backoff_s = webhook_backoff_s
        self.url: str | None = None
        self._state: SimState | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None
        self._control: SimulatorControl | None = None
        self._sock: socket.socket | None = None
        self._saver: persist.Saver | None = None

    # ---- thread mode ----------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> SimulatorServer:
        """Serve from a daemon thread of this process; `state` is then directly accessible."""
        self._ensure_stopped()
        sender = WebhookSender(attempts=self.webhook_attempts, backoff_s=self.webhook_backoff_s)
        self._state = SimState(self.projects, self.faults, sender, fleets=self.fleets)
        if self.state_file:
            persist.restore(self._state, self.state_file)
            self._saver = persist.Saver(self._state, self.state_file).start()
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._server = _uvicorn_server(build_app(self._state))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="golioth-simulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("simulator did not start")
            time.sleep(0.005)
        self._sock = sock
        self.url = _url(self.host, self.port)
        return self

    @property
    def state(self) -> SimState:
        if self._state is None:
            raise RuntimeError("state is only available in thread mode, after start()")
        return self._state

    # ---- subprocess mode ------------------------------------------------------------

    def start_subprocess(self, timeout_s: float = 120.0) -> SimulatorServer:
        """Serve from a child Python process (its own GIL); drive it through `control`."""
        self._ensure_stopped()
        config = {
            "projects": [p.to_dict() for p in self.projects],
            "fleets": [f.to_dict() for f in self.fleets],
            "faults": self.faults.to_dict(),
            "host": self.host,
            "port": self.port,
            "webhookAttempts": self.webhook_attempts,
            "webhookBackoffS": self.webhook_backoff_s,
            "stateFile": str(self.state_file) if self.state_file else None,
        }
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "golioth_assets.simulator", "--config-json", json.dumps(config)],
            stdout=subprocess.PIPE,
            text=True,
            # Its own session: a Ctrl-C in the terminal reaches the parent, which stops us in turn.
            start_new_session=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_drain, args=(self._proc.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("simulator subprocess did not start") from None
                continue
            if line.startswith(READY_PREFIX):
                self.url = line[len(READY_PREFIX) :].strip()
                self.port = int(self.url.rsplit(":", 1)[1])
                return self

    # ---- common ---------------------------------------------------------------------

    @property
    def control(self) -> SimulatorControl:
        if self.url is None:
            raise RuntimeError("simulator is not running")
        if self._control is None:
            self._control = SimulatorControl(self.url)
        return self._control

    def stop(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._server is not None:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._server = None
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._saver is not None:
            self._saver.stop()
            self._saver = None
        if self._state is not None:
            self._state.close()
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None

    def _ensure_stopped(self) -> None:
        if self._server is not None or self._proc is not None:
            raise RuntimeError("simulator already started")

    def __enter__(self) -> SimulatorServer:
        if self._server is None and self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _drain(stream: Any, lines: queue.Queue[str]) -> None:
    # Keep reading so a chatty child never blocks on a full pipe.
    for line in stream:
        lines.put(line)


def run(
    projects: Sequence[ProjectSpec],
    faults: FaultConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    webhook_attempts: int = 3,
    webhook_backoff_s: float = 0.2,
    announce: Callable[[str], None] | None = None,
    state_file: Path | None = None,
    fleets: Sequence[ProjectFleet] = (),
) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (the CLI and subprocess mode call this). With
    `state_file`, projects saved there replace their seeded copies, and are saved back (persist.py)."""
    sender = WebhookSender(attempts=webhook_attempts, backoff_s=webhook_backoff_s)
    state = SimState(list(projects), faults, sender, fleets=list(fleets))
    saver = None
    if state_file is not None:
        persist.restore(state, state_file)
        saver = persist.Saver(state, state_file).start()
    sock = _bind(host, port)
    url = _url(host, sock.getsockname()[1])
    server = _uvicorn_server(build_app(state))
    original_startup = server.startup

    async def startup_then_announce(sockets: Any = None) -> None:
        await original_startup(sockets=sockets)
        (announce or _print_ready)(url)

    server.startup = startup_then_announce  # type: ignore[method-assign]
    # uvicorn shuts down on SIGTERM, then raises it again for the handler that was there before:
    # Python's default would end the process before the `finally` below saves the state.
    signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        server.run(sockets=[sock])
    finally:
        if saver is not None:
            saver.stop()
        state.close()
        sock.close()


def _exit_quietly(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def _print_ready(url: str) -> None:
    print(READY_PREFIX + url, flush=True)
