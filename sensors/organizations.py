"""Keeps the `organizations` partitions equal to the organizations with an enabled service."""

import dagster as dg

from golioth_assets.defs.partitions import ORGANIZATIONS, organizations
from golioth_assets.defs.resources import DeviceStore
from golioth_assets.store import services


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a partition for each organization with an enabled Golioth service; removes the rest.",
)
def organization_partitions_sensor(context: dg.SensorEvaluationContext, store: DeviceStore) -> dg.SensorResult:
    with store.engine.connect() as conn:
        wanted = {s.organization_id for s in services.list_services(conn, enabled_only=True)}
    existing = set(context.instance.get_dynamic_partitions(ORGANIZATIONS))
    requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
    if wanted - existing:
        requests.append(organizations.build_add_request(sorted(wanted - existing)))
    if existing - wanted:
        requests.append(organizations.build_delete_request(sorted(existing - wanted)))
    return dg.SensorResult(dynamic_partitions_requests=requests)
