"""The simulator's projects saved to a JSON file and loaded back.

The demo (`golioth-sync dev`) keeps its simulated Golioth in GOLIOTH_SYNC_HOME this way: a restart
finds the devices as they were (console edits, writes of earlier syncs) instead of a freshly seeded
project, which the first sync would then "correct" by reverting those edits.

`Saver` writes the file every few seconds while something changed, and once more at shutdown; a
write goes to a temporary file first and replaces the old one, so a crash leaves the last good
copy. A file that cannot be read is ignored (the project is seeded) and says why in the log.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .clock import ObjectIdFactory, WriteClock
from .model import Blueprint, Cohort, Device, Tag
from .project import Project

log = logging.getLogger(__name__)
FORMAT = 1
DEVICE_FIELDS = (
    "id",
    "name",
    "hardware_ids",
    "tag_ids",
    "blueprint_id",
    "cohort_id",
    "enabled",
    "created_ms",
    "updated_ms",
    "metadata",
    "state",
)


def project_to_dict(project: Project) -> dict[str, Any]:
    """Devices (in list order), the catalog and the id generator; not webhooks or faults, which
    whoever starts the simulator sets again."""
    rng = project.ids._rng.getstate()
    return {
        "projectId": project.project_id,
        "organizationId": project.organization_id,
        "ids": {"rng": [rng[0], list(rng[1]), rng[2]], "prefix": project.ids._prefix, "counter": project.ids._counter},
        "tags": [asdict(t) for t in project.tags.values()],
        "blueprints": [asdict(b) for b in project.blueprints.values()],
        "cohorts": [{**asdict(c), "device_count": 0} for c in project.cohorts.values()],
        "devices": [{f: getattr(d, f) for f in DEVICE_FIELDS} for d in project.ordered_devices()],
    }


def project_from_dict(data: dict[str, Any], api_key: str, clock: WriteClock) -> Project:
    ids = ObjectIdFactory(random.Random())
    version, state, gauss = data["ids"]["rng"]
    ids._rng.setstate((version, tuple(state), gauss))
    ids._prefix, ids._counter = data["ids"]["prefix"], data["ids"]["counter"]
    project = Project(data["projectId"], api_key, data["organizationId"], ids, clock)
    project.tags = {t["id"]: Tag(**t) for t in data["tags"]}
    project.blueprints = {b["id"]: Blueprint(**b) for b in data["blueprints"]}
    project.cohorts = {c["cohort_id"]: Cohort(**c) for c in data["cohorts"]}
    for device in data["devices"]:
        project.add_device(Device(**device))  # rebuilds the name/hardware-id indexes and cohort counts
    return project


def save(state, path: Path) -> None:
    with state.lock:
        data = {"format": FORMAT, "projects": [project_to_dict(p) for p in state.projects.values()]}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(partial, path)


def restore(state, path: Path) -> list[str]:
    """Replace the seeded projects by their saved copies (matched by project id; the API key stays
    the one the simulator was started with). Returns the ids restored."""
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
        saved = {p["projectId"]: p for p in data["projects"]}
        with state.lock:
            restored = {
                pid: project_from_dict(saved[pid], project.api_key, state.clock)
                for pid, project in state.projects.items()
                if pid in saved
            }
            for pid, project in restored.items():
                project.deleted_mode = state.projects[pid].deleted_mode
                state.projects[pid] = project
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the simulator's saved state in %s: %s", path, exc)
        return []
    return sorted(restored)


def _fingerprint(state) -> tuple[int, int]:
    """Changes since the last save: device changes bump a project's version; LightDB and catalog
    writes come through the API as non-GET requests."""
    with state.lock:
        versions = sum(p.version for p in state.projects.values())
    by_method = state.stats.snapshot()["byMethod"]
    return versions, sum(n for method, n in by_method.items() if method != "GET")


class Saver:
    """Saves `state` to `path` every `interval_s` seconds while it changes, and at `stop()`."""

    def __init__(self, state, path: Path, interval_s: float = 5.0) -> None:
        self.state = state
        self.path = path
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._saved: tuple[int, int] | None = None
        self._thread = threading.Thread(target=self._run, name="simulator-saver", daemon=True)

    def start(self) -> Saver:
        self._saved = _fingerprint(self.state)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.save_if_changed()

    def save_if_changed(self) -> None:
        now = _fingerprint(self.state)
        if now != self._saved:
            try:
                save(self.state, self.path)
                self._saved = now
            except OSError as exc:
                log.warning("could not save the simulator's state to %s: %s", self.path, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        save(self.state, self.path)
