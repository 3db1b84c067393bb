"""The Dagster resolve job (`golioth_resolve_conflicts`): launchpad config → resolution → the next
sync applies it to both sides, with the operator's name in the audit trail."""

from __future__ import annotations

import pytest

from golioth_assets.core.vocabulary import Resolution
from golioth_assets.defs.resolve import ResolveConfig, resolve_conflicts_job
from golioth_assets.defs.resources import DeviceStore


def launch(instance, db_url, **config):
    return resolve_conflicts_job.execute_in_process(
        run_config={"ops": {"resolve_conflicts": {"config": config}}},
        instance=instance,
        resources={"store": DeviceStore(database_url=db_url.render_as_string(hide_password=False))},
        raise_on_error=False,
    )


def test_launchpad_config_offers_the_choices_by_name():
    schema = resolve_conflicts_job.run_config_schema.config_type.fields["ops"].config_type.fields["resolve_conflicts"]
    config = schema.config_type.fields["config"].config_type
    assert {"conflict_ids", "choice", "value_json", "resolved_by", "organization_id", "all_pending"} <= set(
        config.fields
    )
    choice = config.fields["choice"].config_type
    assert [v.config_value for v in choice.enum_values] == ["local", "remote", "value"]
    assert ResolveConfig(conflict_ids=[1], choice=Resolution.remote, resolved_by="x").choice is Resolution.remote


def test_registered_in_definitions():
    from golioth_assets.definitions import defs

    assert defs.resolve_job_def("golioth_resolve_conflicts") is not None


@pytest.mark.parametrize(
    ("choice", "value_json", "chosen"),
    [("remote", None, "remote-name"), ("local", None, "local-name"), ("value", '"from-dagster"', "from-dagster")],
)
def test_resolve_job_then_sync_applies_the_choice(harness, instance, db_url, choice, value_json, chosen):
    cid, device_id, gid = harness.make_conflict()
    config = {"conflict_ids": [cid], "choice": choice, "resolved_by": "dagster-dan"}
    if value_json is not None:
        config["value_json"] = value_json
    result = launch(instance, db_url, **config)
    assert result.success
    materialization = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"][0]
    metadata = materialization.event_specific_data.metadata
    assert metadata["resolved"].value == 1 and metadata["conflict_ids"].value == [cid]
    assert metadata["device_ids"].value == {harness.org: [device_id]}
    assert harness.conflict(cid)["status"] == "resolved"

    harness.sync()
    assert harness.local().loc[device_id, "name"] == chosen
    assert harness.remote()[gid]["name"] == chosen
    row = harness.conflict(cid)
    assert (row["status"], row["resolved_by"]) == ("applied", "dagster-dan")
    assert "dagster-dan" in harness.changed_by(device_id)


def test_all_pending_of_an_organization(harness, instance, db_url):
    first, d1, _ = harness.make_conflict(0, "a1", "b1")
    second, d2, _ = harness.make_conflict(1, "a2", "b2")
    result = launch(instance, db_url, organization_id=harness.org, all_pending=True, choice="local", resolved_by="ops")
    assert result.success
    assert {harness.conflict(c)["resolution"] for c in (first, second)} == {"local"}
    harness.sync()
    remote = harness.remote()
    assert remote[harness.golioth_id_of(d1)]["name"] == "a1" and remote[harness.golioth_id_of(d2)]["name"] == "a2"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"conflict_ids": [987654321], "choice": "local"}, "no conflict with id 987654321"),
        ({"choice": "value", "value_json": "{oops"}, "the value is not valid JSON"),
        ({"choice": "value"}, "choice value needs value_json"),
        ({"choice": "remote", "organization_id": "someone-else"}, "unknown organization 'someone-else'"),
        ({"choice": "value", "value_json": '"x"', "all_pending": True}, "all_pending needs organization_id"),
    ],
)
def test_refusals_fail_the_run_and_change_nothing(harness, instance, db_url, config, message):
    cid, _, _ = harness.make_conflict()
    config = {"conflict_ids": [cid], "resolved_by": "x", **config}
    if config.get("all_pending"):
        config.pop("conflict_ids")
    result = launch(instance, db_url, **config)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert message in failure.step_failure_data.error.message or message in str(
        failure.step_failure_data.user_failure_data.description
    )
    assert harness.conflict(cid)["status"] == "pending"


def test_an_already_resolved_conflict_fails_the_run_saying_so(harness, instance, db_url):
    cid, _, _ = harness.make_conflict()
    assert launch(instance, db_url, conflict_ids=[cid], choice="local", resolved_by="first").success
    again = launch(instance, db_url, conflict_ids=[cid], choice="remote", resolved_by="second")
    assert not again.success
    failure = next(e for e in again.all_events if e.is_step_failure)
    assert (
        f"conflict {cid} is already resolved (local, by first)"
        in failure.step_failure_data.user_failure_data.description
    )
    row = harness.conflict(cid)
    assert (row["resolution"], row["resolved_by"]) == ("local", "first")
