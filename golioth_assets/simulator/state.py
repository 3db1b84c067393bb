"""The simulator's whole in-memory world: projects, keys, faults, stats, outgoing webhooks.

`SimState` is shared by the HTTP app and by direct Python callers (tests running the
server in a thread), so every operation takes `lock`. Handlers never await while
holding it.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .churn import Churn, ChurnStep
from .clock import WriteClock
from .errors import (
    MSG_PERMISSION_DENIED,
    MSG_UNAUTHENTICATED,
    PERMISSION_DENIED,
    UNAUTHENTICATED,
    ApiError,
    already_exists,
    invalid,
    not_found,
)
from .faults import FaultConfig, FaultRegistry, RequestStats
from .model import Device, EventsTarget, WebhookTarget
from .project import Project
from .seed import new_project
from .webhook_sender import WebhookSender, data_delivery, event_delivery

DELETED_MODES = ("unauthenticated", "not_found")


@dataclass
class ProjectSpec:
    """A project to create at start (and re-create on reset)."""

    project_id: str
    api_key: str
    devices: int = 0
    seed: int = 0
    organization_id: str = "sim-org"
    catalog: bool = True  # seed tags, blueprints and cohorts
    webhook: WebhookTarget | None = None
    events: EventsTarget | None = None
    faults: FaultConfig | None = None  # overrides the simulator-wide faults for this project

    def to_dict(self) -> dict[str, Any]:
        return {
            "projectId": self.project_id,
            "apiKey": self.api_key,
            "devices": self.devices,
            "seed": self.seed,
            "organizationId": self.organization_id,
            "catalog": self.catalog,
            "webhook": self.webhook.to_dict() if self.webhook else None,
            "events": self.events.to_dict() if self.events else None,
            "faults": self.faults.to_dict() if self.faults else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProjectSpec:
        webhook = data.get("webhook")
        events = data.get("events")
        faults = data.get("faults")
        return cls(
            project_id=data.get("projectId") or f"sim-{uuid.uuid4().hex[:12]}",
            api_key=data.get("apiKey") or f"sim-key-{secrets.token_hex(12)}",
            devices=int(data.get("devices", 0)),
            seed=int(data.get("seed", 0)),
            organization_id=data.get("organizationId") or "sim-org",
            catalog=bool(data.get("catalog", True)),
            webhook=webhook_from_dict(webhook) if webhook else None,
            events=EventsTarget(url=events["url"], secret=events["secret"]) if events else None,
            faults=FaultConfig.from_dict(faults) if faults else None,
        )


@dataclass(frozen=True)
class ProjectFleet:
    """Many alike projects, seeded only when first used: `count` projects of `devices` devices each,
    `<project_prefix><i>` with the key `<key_prefix><i>` (i zero-padded to 5 digits, seed = i).
    A thousand tenants then cost the simulator nothing until a sync touches them, and each project's
    first request seeds it (about 15 ms for 1,000 devices), so the benchmark measures the sync."""

    count: int
    devices: int
    project_prefix: str = "fleet-"
    key_prefix: str = "fleet-key-"
    organization_id: str = "sim-org"

    def project_id(self, index: int) -> str:
        return f"{self.project_prefix}{index:05d}"

    def api_key(self, index: int) -> str:
        return f"{self.key_prefix}{index:05d}"

    def index_of(self, value: str, prefix: str) -> int | None:
        tail = value[len(prefix) :] if value.startswith(prefix) else ""
        if len(tail) == 5 and tail.isdigit() and int(tail) < self.count:
            return int(tail)
        return None

    def spec(self, index: int) -> ProjectSpec:
        return ProjectSpec(
            self.project_id(index), self.api_key(index), self.devices, seed=index, organization_id=self.organization_id
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "devices": self.devices,
            "projectPrefix": self.project_prefix,
            "keyPrefix": self.key_prefix,
            "organizationId": self.organization_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProjectFleet:
        return cls(
            count=int(data["count"]),
            devices=int(data["devices"]),
            project_prefix=data.get("projectPrefix", "fleet-"),
            key_prefix=data.get("keyPrefix", "fleet-key-"),
            organization_id=data.get("organizationId", "sim-org"),
        )


def webhook_from_dict(data: dict[str, Any]) -> WebhookTarget:
    return WebhookTarget(
        url=data["url"], headers=dict(data.get("headers") or {}), inject_metadata=bool(data.get("injectMetadata", True))
    )


class SimState:
    def __init__(
        self,
        projects: list[ProjectSpec] | tuple[ProjectSpec, ...] = (),
        faults: FaultConfig | None = None,
        sender: WebhookSender | None = None,
        fleets: list[ProjectFleet] | tuple[ProjectFleet, ...] = (),
    ) -> None:
        self.lock = threading.RLock()
        self.fleets = list(fleets)  # their projects join `projects` on first use (_from_fleet)
        self.clock = WriteClock()
        self.stats = RequestStats()
        self.sender = sender or WebhookSender()
        self._initial_specs = list(projects)
        self._initial_faults = faults or FaultConfig()
        self.faults = FaultRegistry(self._initial_faults)
        self.projects: dict[str, Project] = {}
        self.keys: dict[str, str] = {}
        for spec in self._initial_specs:
            self.add_project(spec)

    # ---- projects ------------------------------------------------------------------

    def add_project(self, spec: ProjectSpec) -> Project:
        with self.lock:
            if spec.project_id in self.projects:
                raise already_exists(f"project {spec.project_id} already exists")
            if spec.api_key in self.keys:
                raise already_exists("api key already in use")
        # Seeding runs outside the lock: it touches only the new, not yet visible project.
        project = new_project(
            spec.project_id,
            spec.api_key,
            spec.organization_id,
            self.clock,
            devices=spec.devices,
            seed=spec.seed,
            catalog=spec.catalog,
        )
        project.webhook = spec.webhook
        project.events = spec.events
        with self.lock:
            if spec.project_id in self.projects or spec.api_key in self.keys:
                raise already_exists(f"project {spec.project_id} already exists")
            self.projects[spec.project_id] = project
            self.keys[spec.api_key] = spec.project_id
            self.faults.set_project(spec.project_id, spec.faults)
        return project

    def remove_project(self, project_id: str) -> None:
        with self.lock:
            project = self._project(project_id)
            del self.projects[project_id]
            self.keys.pop(project.api_key, None)
            self.faults.set_project(project_id, None)

    def set_deleted(self, project_id: str, deleted: bool, mode: str = "unauthenticated") -> None:
        """Make a project answer as if it was deleted in the console.

        "unauthenticated": its API keys died with it (401); "not_found": 404 on every call.
        """
        if mode not in DELETED_MODES:
            raise invalid(f"mode must be one of {DELETED_MODES}")
        with self.lock:
            self._project(project_id).deleted_mode = mode if deleted else None

    def reset(self) -> None:
        """Back to the start configuration: projects re-seeded, faults and stats cleared."""
        with self.lock:
            self.projects.clear()
            self.keys.clear()
            self.faults = FaultRegistry(self._initial_faults)
            self.stats.reset()
            self.sender.reset_stats()
            for spec in self._initial_specs:
                self.add_project(spec)

    def _project(self, project_id: str) -> Project:
        project = self.projects.get(project_id) or self._from_fleet(project_id=project_id)
        if project is None:
            raise not_found(f"project {project_id} not found")
        return project

    def _from_fleet(self, *, project_id: str | None = None, api_key: str | None = None) -> Project | None:
        """A fleet's project, seeded now if this is its first use (under the lock: once)."""
        for fleet in self.fleets:
            index = (
                fleet.index_of(project_id, fleet.project_prefix)
                if project_id is not None
                else fleet.index_of(api_key or "", fleet.key_prefix)
            )
            if index is None:
                continue
            with self.lock:
                existing = self.projects.get(fleet.project_id(index))
                if existing is not None:
                    return existing
                if fleet.api_key(index) in self.keys:
                    return None  # its key is taken by an explicit project
                return self.add_project(fleet.spec(index))
        return None

    def project(self, project_id: str) -> Project:
        with self.lock:
            return self._project(project_id)

    def authorize(self, api_key: str | None, project_id: str) -> Project:
        """Project-scoped keys: unknown key 401, another project's key 403."""
        own_id = self.keys.get(api_key) if api_key else None
        own = self.projects.get(own_id) if own_id else None
        if own is None and api_key and own_id is None:
            own = self._from_fleet(api_key=api_key)
            own_id = own.project_id if own is not None else None
        if own is None or own.deleted_mode == "unauthenticated":
            raise ApiError(UNAUTHENTICATED, MSG_UNAUTHENTICATED)
        if own_id != project_id:
            raise ApiError(PERMISSION_DENIED, MSG_PERMISSION_DENIED)
        if own.deleted_mode == "not_found":
            raise not_found("project not found")
        return own

    # ---- console edits ("as if from the Golioth console") ---------------------------

    def console_create(self, project_id: str, body: Any) -> dict:
        with self.lock:
            project = self._project(project_id)
            device = project.create_device(body, console=True)
            return self._emit(project, "device.created", device)

    def console_update(self, project_id: str, device_id: str, body: Any, *, replace: bool = False) -> dict:
        with self.lock:
            project = self._project(project_id)
            device = project.update_device(device_id, body, replace=replace)
            return self._emit(project, "device.updated", device)

    def console_delete(self, project_id: str, device_id: str) -> dict:
        with self.lock:
            project = self._project(project_id)
            device = project.delete_device(device_id)
            return self._emit(project, "device.deleted", device)

    def _emit(self, project: Project, event_type: str, device: Device) -> dict:
        data = device.to_dict()
        if project.events is not None:
            self.sender.send(event_delivery(project.events, event_type, project.project_id, device.id, data))
        return data

    def mutate(self, project_id: str, count: int, seed: int = 0) -> list[str]:
        """Console-edit `count` random devices (tags, enabled, cohort): drift for benchmarks."""
        with self.lock:
            project = self._project(project_id)
            rng = random.Random(seed)
            devices = project.ordered_devices()
            chosen = rng.sample(devices, min(count, len(devices)))
            tag_ids = list(project.tags)
            cohort_ids = list(project.cohorts)
            changed = []
            for device in chosen:
                kind = rng.randrange(3)
                tags = rng.sample(tag_ids, rng.randrange(1, min(3, len(tag_ids)) + 1)) if tag_ids else []
                # A mutation must change something: the same tag set again falls back to `enabled`.
                if kind == 0 and tags and set(tags) != set(device.tag_ids):
                    body: dict[str, Any] = {"tagIds": tags}
                elif kind in (0, 1) or not cohort_ids:
                    body = {"enabled": not device.enabled}
                else:
                    body = {"cohortId": "" if device.cohort_id else rng.choice(cohort_ids)}
                project.update_device(device.id, body, replace=False)
                self._emit(project, "device.updated", device)
                changed.append(device.id)
            return changed

    # ---- device activity -------------------------------------------------------------

    def device_activity(
        self,
        project_id: str,
        device_id: str,
        data: Any = None,
        path: str = "data",
        firmware_version: str | None = None,
    ) -> dict:
        """A device sent a data message: metadata moves, and the pipeline webhook (if any) fires."""
        now_ns = time.time_ns()
        with self.lock:
            project = self._project(project_id)
            device = project.record_activity(device_id, now_ns // 1_000_000, firmware_version)
            webhook = project.webhook
            result = {"device": device.to_dict(), "webhook": webhook is not None}
        if webhook is not None:
            message = {} if data is None else data
            self.sender.send(data_delivery(webhook, project_id, device_id, path, message, now_ns))
        return result

    def set_churn(self, project_id: str, steps: list[ChurnStep] | None) -> dict:
        """Arm churn steps for the project's next listings (None: disarm). Returns the report."""
        with self.lock:
            project = self._project(project_id)
            project.churn = Churn(steps) if steps else None
            return project.churn.report() if project.churn else {"steps": [], "listings": 0, "done": []}

    def churn_report(self, project_id: str) -> dict:
        with self.lock:
            churn = self._project(project_id).churn
            return churn.report() if churn else {"steps": [], "listings": 0, "done": []}

    def set_webhook(self, project_id: str, target: WebhookTarget | None) -> None:
        with self.lock:
            self._project(project_id).webhook = target

    def set_events(self, project_id: str, target: EventsTarget | None) -> None:
        with self.lock:
            self._project(project_id).events = target

    def close(self) -> None:
        self.sender.close()


__all__ = ["ProjectFleet", "ProjectSpec", "SimState"]
