"""A sync with nothing to do writes nothing, on either side: the fast half of the no-change scale
benchmark (`benchmarks/scale_dagster.py --no-change` runs it at 10,000 devices and times it).

A full Dagster run (all six assets, checks included) over 1,000 linked devices that nobody edited:
- Golioth: only reads, and only the minimum of them (list pages + tags, blueprints, cohorts);
- PostgreSQL: no device row and no link (base snapshot) is inserted, updated or deleted. An UPDATE
  that writes the same values still makes a new row version, so (id, xmin, version) catches it.
"""

import math

import dagster as dg
import sqlalchemy as sa

from golioth_assets.defs.assets import sync_assets
from golioth_assets.defs.partitions import organizations
from golioth_assets.defs.resources import DeviceStore, GoliothApi
from golioth_assets.golioth.client import MAX_PER_PAGE

DEVICES = 1_000


def _row_versions(h) -> dict[str, set]:
    with h.engine.connect() as conn:
        devices = conn.execute(
            sa.text("SELECT id::text, xmin::text, version FROM devices WHERE organization_id = :o"), {"o": h.org}
        ).all()
        links = conn.execute(
            sa.text("SELECT id::text, xmin::text FROM device_service_assignments WHERE service_id = :s"),
            {"s": h.service.id},
        ).all()
    return {"devices": set(devices), "links": set(links)}


def test_no_change_sync_through_dagster_writes_nothing(make_harness, instance, db_url):
    h = make_harness(devices=DEVICES)
    first = h.sync()  # the import: creates and links every device
    assert first.counts["created_local"] == DEVICES
    before = _row_versions(h)
    assert len(before["devices"]) == len(before["links"]) == DEVICES
    h.project.reset_stats()

    instance.add_dynamic_partitions(organizations.name, [h.org])
    result = dg.materialize(
        sync_assets,
        partition_key=h.org,
        instance=instance,
        resources={
            "store": DeviceStore(database_url=db_url.render_as_string(hide_password=False)),
            "golioth": GoliothApi(),
        },
    )
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())

    # Golioth: reads only, and no more than the minimum.
    stats = h.project.stats()
    methods = {row["method"] for row in stats["byRoute"]}
    assert methods == {"GET"}, stats["byRoute"]
    list_pages = math.ceil(DEVICES / MAX_PER_PAGE)
    assert stats["total"] == list_pages + 3, stats["byRoute"]  # + tags, blueprints, cohorts

    # PostgreSQL: not one device row or link touched.
    after = _row_versions(h)
    assert after["devices"] == before["devices"]
    assert after["links"] == before["links"]

    # The run's log agrees: nothing planned, nothing written.
    with h.engine.connect() as conn:
        row = (
            conn.execute(
                sa.text(
                    "SELECT created_local, updated_local, deleted_local, created_remote, updated_remote, deleted_remote, "
                    "conflicts, failures, status FROM golioth_sync_log WHERE organization_id = :o AND dagster_run_id = :r"
                ),
                {"o": h.org, "r": result.run_id},
            )
            .mappings()
            .one()
        )
    assert row["status"] == "success"
    assert all(row[k] == 0 for k in row if k != "status"), dict(row)
    assert h.conflicts().empty
