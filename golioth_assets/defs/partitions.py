"""One partition per organization with an enabled Golioth service (never one per device)."""

import dagster as dg

organizations = dg.DynamicPartitionsDefinition(name="organizations")
