"""Deterministic churn under offset pagination: devices created, deleted, renamed or re-provisioned
while a client pages through the device list, as on a fleet with provisioning lines or test rigs.

A churn step is armed through the control API (PUT /_sim/projects/{p}/churn) and fires during the
`listing`-th listing of the project's devices that starts after arming (a listing starts with a
request for page 0 of the unfiltered list), when the first page at or after `page` is requested.
It acts relative to the pages already read, [0, page × perPage), and the pages not yet read:

    deleteRead / deleteUnread   delete that many devices, spread evenly over the range
    createRead                  create devices at positions spread over the pages already read
    createEnd                   create devices after the last page
    renameRead                  rename devices on the pages already read
    recreateRead                delete devices on the pages already read, and create each again
                                (same name and hardware ids, a new id) after the last page

The listing is served as a reader paging in order would see it, whatever order its requests come
in (our client fetches pages 1..n concurrently): pages before `page` from a snapshot taken when
page 0 was served, pages from `page` on from the live list after the churn. So the same step always
hides, repeats or moves the same devices.

Order: the list is in creation order (a device's place never depends on its name), which is what
Golioth's device ids (MongoDB ObjectIds, time-ordered) and the absence of a sort parameter suggest
(docs/golioth/notes.md). So a rename never moves a device between pages; `renameRead` shows that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .errors import invalid

if TYPE_CHECKING:
    from .model import Device


class Project(Protocol):
    """What churn does to a project (project.py's Project, which owns its Churn): named here, so
    that churn does not import the project back."""

    def ordered_devices(self) -> Sequence[Device]: ...
    def create_device(self, body: Any, *, console: bool = False) -> Device: ...
    def update_device(self, device_id: str, body: Any, *, replace: bool) -> Device: ...
    def delete_device(self, device_id: str) -> Device: ...
    def move_device(self, device: Device, position: int) -> None: ...


_FIELDS = {
    "page": "page",
    "listing": "listing",
    "deleteRead": "delete_read",
    "deleteUnread": "delete_unread",
    "createRead": "create_read",
    "createEnd": "create_end",
    "renameRead": "rename_read",
    "recreateRead": "recreate_read",
}


@dataclass(frozen=True)
class ChurnStep:
    page: int
    listing: int = 1
    delete_read: int = 0
    delete_unread: int = 0
    create_read: int = 0
    create_end: int = 0
    rename_read: int = 0
    recreate_read: int = 0

    @classmethod
    def from_dict(cls, data: Any) -> ChurnStep:
        if not isinstance(data, dict) or "page" not in data:
            raise invalid("a churn step is an object with at least `page`")
        unknown = set(data) - set(_FIELDS)
        if unknown:
            raise invalid(f"unknown churn step fields: {sorted(unknown)}; known: {sorted(_FIELDS)}")
        values = {_FIELDS[k]: v for k, v in data.items()}
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values.values()):
            raise invalid("churn step fields are whole numbers >= 0")
        if values.get("listing", 1) < 1:
            raise invalid("listing counts from 1")
        return cls(**values)

    def to_dict(self) -> dict[str, int]:
        own = asdict(self)
        return {k: own[v] for k, v in _FIELDS.items()}


@dataclass
class ChurnDone:
    """What a step did, by device id: for tests to assert on."""

    listing: int
    page: int
    deleted: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    renamed: list[str] = field(default_factory=list)
    recreated: list[list[str]] = field(default_factory=list)  # [old id, new id]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _spread(count: int, start: int, stop: int) -> list[int]:
    """`count` distinct positions spread evenly over [start, stop)."""
    span = stop - start
    if count > span:
        raise invalid(f"cannot pick {count} devices among {span}")
    return [start + (i * span) // count for i in range(count)]


class Churn:
    """The armed steps of one project, the listings seen since arming, and the current listing's
    snapshot. Called with the simulator lock held (Project.list_devices)."""

    def __init__(self, steps: list[ChurnStep]) -> None:
        self.steps = steps
        self.listings = 0
        self.done: list[ChurnDone] = []
        self._snapshot: tuple[list[bytes], int] | None = None
        self._serial = 0

    def report(self) -> dict[str, Any]:
        return {
            "steps": [s.to_dict() for s in self.steps],
            "listings": self.listings,
            "done": [d.to_dict() for d in self.done],
        }

    def serve(
        self, project: Project, page: int, per_page: int, state_path: str | None
    ) -> tuple[list[bytes], int] | None:
        """(items, total) for this page of an unfiltered listing, or None to serve the live list."""
        if page == 0:
            self.listings += 1
            self._snapshot = None
        step = next((s for s in self.steps if s.listing == self.listings), None)
        fired = any(d.listing == self.listings for d in self.done)
        if step is None:
            return None
        if page == 0:
            devices = project.ordered_devices()
            self._snapshot = ([d.json_with_state(state_path) for d in devices], len(devices))
        if page < step.page and self._snapshot is not None:
            items, total = self._snapshot
            return items[page * per_page : (page + 1) * per_page], total
        if not fired:
            self.done.append(self._fire(project, step, per_page))
        return None

    def _fire(self, project: Project, step: ChurnStep, per_page: int) -> ChurnDone:
        order = list(project.ordered_devices())
        read = min(step.page * per_page, len(order))
        done = ChurnDone(step.listing, step.page)
        victims = _spread(step.delete_read + step.rename_read + step.recreate_read, 0, read)
        to_delete = [order[p] for p in victims[: step.delete_read]]
        to_rename = [order[p] for p in victims[step.delete_read : step.delete_read + step.rename_read]]
        to_recreate = [order[p] for p in victims[step.delete_read + step.rename_read :]]
        to_delete += [order[p] for p in _spread(step.delete_unread, read, len(order))]
        for device in to_delete:
            project.delete_device(device.id)
            done.deleted.append(device.id)
        for device in to_rename:
            project.update_device(device.id, {"name": f"{device.name}-renamed"}, replace=False)
            done.renamed.append(device.id)
        for device in to_recreate:
            done.recreated.append([device.id, self._recreate(project, device).id])
        # Creates on the pages already read: highest position first, so the lower ones still
        # point where they did in the list the reader saw.
        positions = _spread(step.create_read, 0, max(read, 1)) if step.create_read else []
        for position in sorted(positions, reverse=True):
            device = self._create(project)
            project.move_device(device, position)
            done.created.append(device.id)
        done.created += [self._create(project).id for _ in range(step.create_end)]
        return done

    def _create(self, project: Project) -> Device:
        self._serial += 1
        name = f"churn-{self.listings}-{self._serial:05d}"
        return project.create_device({"name": name, "hardwareIds": [f"hw-{name}"]}, console=True)

    @staticmethod
    def _recreate(project: Project, device: Device) -> Device:
        body = {
            "name": device.name,
            "hardwareIds": list(device.hardware_ids),
            "tagIds": list(device.tag_ids),
            "blueprintId": device.blueprint_id,
            "cohortId": device.cohort_id,
        }
        project.delete_device(device.id)
        return project.create_device(body, console=True)
