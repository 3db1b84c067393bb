"""One partition per organization with an enabled Golioth service (never one per device)."""

import dagster as dg

ORGANIZATIONS = "organizations"  # the definition's name, typed `str | None` by Dagster
organizations = dg.DynamicPartitionsDefinition(name=ORGANIZATIONS)
