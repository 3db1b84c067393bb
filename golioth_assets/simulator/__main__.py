"""`python -m golioth_assets.simulator`: subprocess mode (--config-json) or the CLI options.

Here, not in server.py, so that the server does not import the CLI that starts it."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli import simulator_command
from .faults import FaultConfig
from .server import run
from .state import ProjectFleet, ProjectSpec


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m golioth_assets.simulator`: `--config-json` (subprocess mode) or the CLI options."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--config-json"]:
        config = json.loads(args[1])
        run(
            [ProjectSpec.from_dict(p) for p in config.get("projects", [])],
            FaultConfig.from_dict(config.get("faults")),
            config.get("host", "127.0.0.1"),
            int(config.get("port", 0)),
            webhook_attempts=int(config.get("webhookAttempts", 3)),
            webhook_backoff_s=float(config.get("webhookBackoffS", 0.2)),
            state_file=Path(config["stateFile"]) if config.get("stateFile") else None,
            fleets=[ProjectFleet.from_dict(f) for f in config.get("fleets", [])],
        )
        return 0
    return simulator_command.main(args=args, prog_name="golioth-simulator", standalone_mode=False) or 0


if __name__ == "__main__":
    sys.exit(main())
