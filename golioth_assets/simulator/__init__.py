"""A Golioth Management API simulator: a real HTTP server for tests, benchmarks and the demo.

    from golioth_assets.simulator import FaultConfig, ProjectSpec, SimulatorServer

    with SimulatorServer(
        projects=[ProjectSpec("acme", "acme-key", devices=10_000, seed=42)],
        faults=FaultConfig(error_rate=0.05, rate_limit_rps=200, latency_ms=20, seed=1),
    ) as sim:                       # thread mode; SimulatorServer(...).start_subprocess() for benchmarks
        sim.url                     # http://127.0.0.1:<port>, API under /v1, control API under /_sim
        sim.control.console_update("acme", device_id, name="edited")   # see control.py
        sim.state                   # the in-memory model (thread mode only)

Behaviour beyond the spec, where the spec is silent (see docs in project.py / model.py):
- list answers always carry list/page/perPage/total; device, tag, blueprint and cohort objects
  leave empty fields out (no `tagIds` when empty, no `metadata` for a device never seen);
- `statePath` fills `data` only when the value at that path is a non-empty object (the spec
  types `data` as an object);
- PATCH `cohortId: ""` removes the cohort; PATCH `blueprintId: ""` changes nothing (only PUT
  without `blueprintId` clears it); PUT keeps `enabled` and `hardwareIds` when not sent;
- LightDB State: PUT and POST replace the value at the path, PATCH merges objects one level
  deep; writes answer `{}`; state writes and device activity do not move the device's updatedAt;
- faults apply before authentication, per project override or simulator-wide, never to /_sim.
"""

from .control import SimulatorControl, SimulatorControlError
from .faults import FaultConfig
from .model import EventsTarget, WebhookTarget
from .server import SimulatorServer, run
from .state import ProjectFleet, ProjectSpec, SimState

__all__ = [
    "EventsTarget",
    "FaultConfig",
    "ProjectFleet",
    "ProjectSpec",
    "SimState",
    "SimulatorControl",
    "SimulatorControlError",
    "SimulatorServer",
    "WebhookTarget",
    "run",
]
