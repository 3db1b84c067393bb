"""Secrets (API keys, webhook secrets) never reach logs, our tables, or Dagster's event log."""

import logging

import dagster as dg
import sqlalchemy as sa

from golioth_assets.defs.assets import sync_assets
from golioth_assets.defs.partitions import organizations
from golioth_assets.defs.resources import DeviceStore, GoliothApi
from golioth_assets.store.schema import metadata

TABLES = sorted(metadata.tables)


def _all_text_in_tables(engine) -> str:
    with engine.connect() as conn:
        return "\n".join(
            str(conn.execute(sa.text(f"SELECT coalesce(json_agg(t)::text, '') FROM {table} t")).scalar_one())
            for table in TABLES
        )


def test_api_key_is_nowhere_after_a_run(make_harness, instance, db_url, caplog):
    h = make_harness(devices=15)
    key = h.project.api_key
    caplog.set_level(logging.DEBUG)
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
    events = instance.all_logs(result.run_id)
    event_text = "\n".join(str(e) for e in events)
    assert len(h.local()) == 15  # the run really talked to Golioth with the key
    assert key not in event_text
    assert key not in caplog.text
    assert key not in _all_text_in_tables(h.engine)
    # What the tables do hold is the variable's name.
    assert h.service.api_key_env in _all_text_in_tables(h.engine)


def test_a_failing_key_is_not_echoed_anywhere(make_harness, instance, db_url, monkeypatch, caplog):
    h = make_harness(devices=3)
    wrong = "wrong-key-0123456789abcdef-do-not-print"
    monkeypatch.setenv(h.service.api_key_env, wrong)
    caplog.set_level(logging.DEBUG)
    instance.add_dynamic_partitions(organizations.name, [h.org])
    result = dg.materialize(
        sync_assets,
        partition_key=h.org,
        instance=instance,
        resources={
            "store": DeviceStore(database_url=db_url.render_as_string(hide_password=False)),
            "golioth": GoliothApi(),
        },
        raise_on_error=False,
    )
    event_text = "\n".join(str(e) for e in instance.all_logs(result.run_id))
    assert not result.success
    assert "rejected the API key" in event_text  # the error is clear...
    assert wrong not in event_text and wrong not in caplog.text  # ...and keeps the key to itself
    assert wrong not in _all_text_in_tables(h.engine)
