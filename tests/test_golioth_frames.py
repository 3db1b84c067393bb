"""Golioth devices → the inventory frame (engine/golioth_frames.py). A full sync turns the listing's
shape-checked records into rows without building a model per device; single GETs and write answers
come as models and take the same path. Checked against the models' own values, over real HTTP."""

from __future__ import annotations

import json

import httpx
import pandas as pd
import pytest
from pydantic import ValidationError

from golioth_assets.engine.golioth_frames import References, devices_to_frame, records_to_frame
from golioth_assets.engine.sync import _listed_frame
from golioth_assets.golioth import GoliothClient, InvalidResponseError
from golioth_assets.golioth.models import DEVICE_RECORD_PAGE, Device, DeviceMetadata


def _expected_status(meta: DeviceMetadata) -> str | None:
    online, offline = meta.last_seen_online, meta.last_seen_offline
    if online is None and offline is None:
        return None
    return "online" if offline is None or (online is not None and online > offline) else "offline"


def _stamp(value) -> pd.Timestamp:
    return pd.NaT if value is None else pd.Timestamp(value).tz_convert("UTC")


def _same(a, b) -> bool:
    return (pd.isna(a) and pd.isna(b)) if (a is None or pd.isna(a)) else a == b


def test_the_listings_records_make_the_rows_its_devices_say(sim_project_factory):
    project = sim_project_factory(devices=120, seed=5)
    with GoliothClient(
        project.api_key, project.project_id, base_url=project.url, organization_id=project.organization_id
    ) as client:
        listing = client.list_devices_counted(state_path="desired")
        refs = References(client.tag_maps().by_id, client.blueprint_maps().by_id, client.cohort_maps().by_id)
    frame = records_to_frame(listing.records, refs)
    devices: list[Device] = listing.devices
    assert len(frame) == len(devices) == 120

    by_id = frame.set_index("golioth_device_id")
    for device in devices:
        row = by_id.loc[device.id]
        assert row["name"] == device.name
        assert row["hardware_ids"] == list(device.hardware_ids)
        assert row["tags"] == [refs.tags[t] for t in device.tag_ids]
        assert _same(row["blueprint"], refs.blueprints.get(device.blueprint_id) if device.blueprint_id else None)
        assert _same(row["cohort"], refs.cohorts.get(device.cohort_id) if device.cohort_id else None)
        assert bool(row["enabled"]) is device.enabled
        assert row["desired_state"] == (device.data if isinstance(device.data, dict) else {})
        assert _same(row["status"], _expected_status(device.metadata))
        meta = device.metadata
        for column, value in [
            ("last_seen_online", meta.last_seen_online),
            ("last_seen_offline", meta.last_seen_offline),
            ("last_report", meta.last_report),
            ("created_at", device.created_at),
            ("updated_at", device.updated_at),
        ]:
            assert _same(row[column], _stamp(value)), column
        versions = {p: i.get("version") for p, i in meta.update.items() if isinstance(i, dict)}
        assert row["firmware_versions"] == versions
    assert "online" in set(frame["status"])  # the simulator's devices report; offline: the next test
    # Parsed models (single GETs, write answers) make exactly the listing's rows.
    pd.testing.assert_frame_equal(devices_to_frame(devices, refs), frame)
    # The fetch's way (`consume`): the same rows, and the records handed over as they are read.
    records = list(listing.records)
    pd.testing.assert_frame_equal(records_to_frame(records, refs, consume=True), frame)
    assert records == []


@pytest.mark.parametrize(
    ("online", "offline"),
    [
        ("2025-01-02T00:00:00Z", "2025-01-01T00:00:00Z"),
        ("2025-01-01T00:00:00Z", "2025-01-02T00:00:00+02:00"),  # offline later, in another offset
        ("2025-01-01T00:00:00Z", "2025-01-01T00:00:00Z"),
        (None, "2025-01-01T00:00:00Z"),
        ("2025-01-01T00:00:00Z", None),
        (None, None),
    ],
)
def test_status_is_online_when_last_seen_online_after_offline(online, offline):
    seen = {k: v for k, v in (("lastSeenOnline", online), ("lastSeenOffline", offline)) if v is not None}
    frame = records_to_frame([{"id": "a", "metadata": seen}], References())
    assert _same(
        frame["status"].iloc[0], _expected_status(Device.model_validate({"id": "a", "metadata": seen}).metadata)
    )


@pytest.mark.parametrize(
    "text", ["yesterday", "now", "", "NaT", "2025-01-01", "20250101T000000Z", "2025-02-30T00:00:00Z"]
)
def test_an_unreadable_timestamp_fails_the_listing_with_a_clear_error(text):
    records = [{"id": "a", "createdAt": "2025-01-01T00:00:00Z"}, {"id": "b", "createdAt": text}]
    with pytest.raises(InvalidResponseError, match="created_at timestamp"):
        records_to_frame(records, References())


def test_timestamps_read_as_rfc_3339_means_them():
    texts = [
        "2025-01-01t00:00:00.5z",  # lower case is RFC 3339 too
        "2025-01-01T02:00:00+02:00",
        "0001-01-01T00:00:00Z",  # Go's zero time: "never"
        "9999-12-31T23:59:59.999999999Z",
    ]
    frame = records_to_frame([{"id": str(i), "createdAt": t} for i, t in enumerate(texts)], References())
    got = list(frame["created_at"])
    assert got[0] == pd.Timestamp("2025-01-01T00:00:00.5Z")
    assert got[1] == pd.Timestamp("2025-01-01T00:00:00Z")
    assert pd.isna(got[2]) and pd.isna(got[3])  # beyond what the column's nanoseconds can hold
    assert str(frame["created_at"].dtype) == "datetime64[ns, UTC]"


def test_an_unreadable_listing_says_which_project_it_came_from():
    client = GoliothClient("k" * 30, "p1", base_url="https://golioth.test")
    with pytest.raises(InvalidResponseError) as caught:
        _listed_frame(client, [{"id": "a", "updatedAt": "soon"}], References())
    assert caught.value.project_id == "p1" and caught.value.base_url == "https://golioth.test"
    assert "updated_at" in str(caught.value) and "p1" in str(caught.value)


def _serving(page: dict) -> GoliothClient:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=json.dumps(page).encode(), headers={"content-type": "application/json"})

    return GoliothClient("k" * 30, "p1", base_url="https://golioth.test", transport=httpx.MockTransport(handler))


def test_listed_models_keep_every_field_the_api_sent():
    device = {
        "id": "d1",
        "name": "n",
        "certificateId": "c1",
        "createdAt": "2025-01-01T00:00:00Z",
        "metadata": {
            "status": "connected",
            "lastSettingsStatus": {"status": "in-sync", "reportedVersion": "3", "syncTime": "2025-01-01T00:00:00Z"},
        },
    }
    with _serving({"list": [device], "page": 0, "perPage": 100, "total": 1}) as client:
        (listed,) = client.list_devices()
    assert listed == Device.model_validate(device)
    assert listed.certificate_id == "c1" and listed.metadata.status == "connected"
    assert listed.metadata.last_settings_status is not None
    assert listed.metadata.last_settings_status.reported_version == "3"


def test_a_listed_model_the_api_answer_cannot_make_is_an_error_with_its_project():
    bad = {"id": "d1", "createdAt": "soon"}  # text to the record, not a time to the model
    with _serving({"list": [bad], "page": 0, "perPage": 100, "total": 1}) as client:
        with pytest.raises(InvalidResponseError) as caught:
            client.list_devices()
    assert caught.value.project_id == "p1" and "created" in caught.value.message


def test_a_listed_device_without_an_id_is_not_an_api_answer():
    with pytest.raises(ValidationError):
        DEVICE_RECORD_PAGE.validate_json(b'{"list": [{"name": "no id"}], "total": 1}')


def test_left_out_and_blank_fields_read_as_golioth_means_them():
    frame = records_to_frame(
        [{"id": "a", "blueprintId": "", "data": 3, "metadata": {"lastSeenOnline": "2025-01-01T00:00:00.123456789Z"}}],
        References(),
    )
    row = frame.iloc[0]
    assert not row["enabled"]  # left out when false
    assert row["blueprint_id"] is None and row["hardware_ids"] == [] and row["tags"] == []
    assert row["desired_state"] == {}  # a statePath on a leaf gives a scalar: not a desired-state object
    assert row["status"] == "online"
    # Nanoseconds are cut to the microsecond, as PostgreSQL would keep them (and pydantic reads them).
    assert row["last_seen_online"] == pd.Timestamp("2025-01-01T00:00:00.123456Z")
    assert pd.isna(row["last_seen_offline"])
