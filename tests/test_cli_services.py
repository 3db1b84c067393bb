"""`golioth-sync services …` through click's runner, against real PostgreSQL and the simulator."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from golioth_assets.actions import InvalidInput
from golioth_assets.actions import services as actions
from golioth_assets.cli.main import cli
from golioth_assets.store import services as store

# Shaped like real secrets: a Golioth-style key, a key with separators, a hex token.
SECRETS = ["Xq7Lr2Vb9Nc4Zt6Mw1Kp8Hs3Jd5Fg0Ya", "sk_live_9fA3xQ7mB2kL8pR4tV6w", "9f8e7d6c5b4a39281706f5e4d3c2b1a0"]


def run(*args: str, input: str | None = None, width: int = 250):
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": str(width)}, input=input)


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    return lines[0]


def _service(engine, org):
    with engine.connect() as conn:
        return store.service_for_org(conn, org)


@pytest.fixture
def new_org() -> str:
    return f"ops-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def key_env(monkeypatch, sim_project) -> str:
    name = f"GOLIOTH_CLI_KEY_{uuid.uuid4().hex[:6].upper()}"
    monkeypatch.setenv(name, sim_project.api_key)
    return name


def _add(org, sim_project, key_env, *extra):
    return run(
        "services",
        "add",
        "--org",
        org,
        "--name",
        "Fleet A",
        "--project-id",
        sim_project.project_id,
        "--base-url",
        sim_project.url,
        "--api-key-env",
        key_env,
        *extra,
    )


def test_add_list_show_update_disable_remove(db_env, engine, new_org, sim_project, key_env):
    result = _add(
        new_org,
        sim_project,
        key_env,
        "--interval",
        "120",
        "--override",
        "tags=remote_wins",
        "--groups",
        "identity,tags,enabled",
    )
    assert result.exit_code == 0, result.output
    service = _service(engine, new_org)
    assert service.interval_seconds == 120
    assert service.policy_overrides == {"tags": "remote_wins"}
    assert service.field_groups == ["identity", "tags", "enabled"]
    assert service.api_key_env == key_env

    listed = run("services", "list")
    assert listed.exit_code == 0 and new_org in listed.output
    assert sim_project.api_key not in listed.output

    shown = run("services", "show", new_org)
    assert shown.exit_code == 0
    assert "remote_wins" in shown.output and "identity, tags, enabled" in shown.output
    assert f"${key_env} (set)" in shown.output and sim_project.url in shown.output
    assert sim_project.api_key not in shown.output
    assert run("services", "show", str(service.id)).exit_code == 0
    assert run("services", "show", "--org", new_org).output == shown.output
    which = run("services", "show")
    assert which.exit_code == 2 and "which service?" in which.output

    updated = run("services", "update", new_org, "--policy", "remote_wins", "--interval", "600", "--allow-deletes")
    assert updated.exit_code == 0, updated.output
    service = _service(engine, new_org)
    assert (service.conflict_policy, service.interval_seconds, service.allow_deletes) == ("remote_wins", 600, True)
    assert service.policy_overrides == {"tags": "remote_wins"}  # untouched by an unrelated update

    assert run("services", "update", new_org, "--clear-overrides", "--override", "cohort=local_wins").exit_code == 0
    assert _service(engine, new_org).policy_overrides == {"cohort": "local_wins"}

    assert run("services", "disable", new_org).exit_code == 0
    assert _service(engine, new_org).sync_enabled is False
    assert run("services", "enable", new_org).exit_code == 0
    assert _service(engine, new_org).sync_enabled is True

    duplicate = _add(new_org, sim_project, key_env)
    assert "already has a service" in one_line_error(duplicate)

    refused = run("services", "remove", new_org, input="n\n")
    assert refused.exit_code == 1 and _service(engine, new_org)
    assert run("services", "remove", new_org, "--yes").exit_code == 0
    with pytest.raises(store.ServiceNotFound):
        _service(engine, new_org)
    assert "no Golioth service" in one_line_error(run("services", "show", new_org))


def test_list_is_one_line_per_service_at_80_columns(db_env, new_org, sim_project, key_env):
    assert _add(new_org, sim_project, key_env).exit_code == 0
    lines = run("services", "list", width=80).output.splitlines()
    assert max(map(len, lines)) <= 80
    row = next(line for line in lines if new_org in line).split()
    # Org and settings whole, on the service's one line; base URL and key variable are in `show`.
    assert row[1] == new_org and row[3:6] == ["every", "300", "s"] and row[6:8] == ["bidirectional", "manual"]
    # The project id gives way first when other tests' longer ids share the table (`show` has it whole).
    project = row[2]
    assert project == sim_project.project_id or (
        project.endswith("…") and sim_project.project_id.startswith(project[:-1])
    )
    assert key_env not in "\n".join(lines) and sim_project.url not in "\n".join(lines)


def _help(*args: str) -> str:
    result = run(*args, "--help", width=80)
    assert result.exit_code == 0, result.output
    return result.output


def test_update_help_shows_no_add_defaults():
    update = " ".join(_help("services", "update").split())
    assert "unchanged if its option is omitted" in update
    assert "default" not in update and "GOLIOTH_PROJECT_ID" not in update
    add = " ".join(_help("services", "add").split())
    assert "--name TEXT A label for this connection. [required]" in add
    assert "[default: 300]" in add and "[env var: GOLIOTH_PROJECT_ID; required]" in add
    # The groups' default reads as words, not a comma list broken mid-name.
    assert "Field groups that sync, comma-separated (names as for --override) [default: all]." in add


def test_command_summaries_are_not_cut_short():
    for group in (["services"], ["conflicts"]):
        commands = _help(*group).split("Commands:", 1)[1]
        assert "..." not in commands, commands
    top = _help().split("Commands:", 1)[1].splitlines()
    for name in ("conflicts", "console", "services", "history", "webhooks", "dev", "env", "sync", "db", "simulator"):
        line = next(line for line in top if line.split()[:1] == [name])
        assert not line.endswith("..."), line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--policy", "first_wins"],
            "--policy: Input should be 'manual', 'local_wins', 'remote_wins' or 'newest_wins'",
        ),
        (["--interval", "59"], "--interval: Input should be greater than or equal to 60"),
        (["--direction", "sideways"], "--direction: Input should be 'import', 'export' or 'bidirectional'"),
        (["--override", "tags=sometimes"], "unknown policy 'sometimes'"),
        (["--groups", "identity,colour"], "unknown field group(s) 'colour'"),
        (["--base-url", "ftp://golioth"], "--base-url: base_url must start with https://"),
        (["--base-url", "http://golioth.example"], "--base-url: base_url must start with https://"),
    ],
)
def test_invalid_settings_give_one_clear_line_and_store_nothing(
    db_env, engine, new_org, sim_project, key_env, args, expected
):
    line = one_line_error(_add(new_org, sim_project, key_env, *args))
    assert expected in line
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM device_services WHERE organization_id = :o"), {"o": new_org}
            ).scalar()
            == 0
        )


def test_api_key_env_must_be_a_set_variable(db_env, new_org, sim_project, monkeypatch):
    monkeypatch.delenv("GOLIOTH_NOT_SET_ANYWHERE", raising=False)
    line = one_line_error(_add(new_org, sim_project, "GOLIOTH_NOT_SET_ANYWHERE"))
    assert "--api-key-env: the variable named is not set here" in line
    assert "NOT_SET_ANYWHERE" not in line  # a refused value is never repeated: it may have been a secret


@pytest.mark.parametrize("secret", SECRETS)
def test_a_literal_key_is_refused_and_never_echoed(db_env, engine, new_org, sim_project, secret):
    line = one_line_error(_add(new_org, sim_project, secret))
    assert "NAME of an environment variable" in line
    assert secret not in line
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT count(*) FROM device_services WHERE api_key_env = :k"), {"k": secret}
        ).scalar()
    assert stored == 0


def test_the_value_of_a_variable_is_refused_naming_the_variable(db_env, new_org, sim_project, key_env):
    # The classic slip: --api-key-env "$GOLIOTH_API_KEY" (the shell expands it to the key).
    line = one_line_error(_add(new_org, sim_project, sim_project.api_key))
    assert f"that is the value of ${key_env}" in line
    assert sim_project.api_key not in line


def test_webhook_secret_env_is_checked_like_the_key(db_env, new_org, sim_project, key_env, monkeypatch):
    pipeline_secret = "f3a9c1d7e5b2084f6a1c9e3d7b5f2a8c"
    monkeypatch.setenv("GOLIOTH_CLI_WEBHOOK_SECRET", pipeline_secret)
    line = one_line_error(_add(new_org, sim_project, key_env, "--webhooks"))
    assert "webhook_enabled needs webhook_secret_env" in line
    line = one_line_error(_add(new_org, sim_project, key_env, "--webhooks", "--webhook-secret-env", pipeline_secret))
    assert "that is the value of $GOLIOTH_CLI_WEBHOOK_SECRET" in line and pipeline_secret not in line
    ok = _add(new_org, sim_project, key_env, "--webhooks", "--webhook-secret-env", "GOLIOTH_CLI_WEBHOOK_SECRET")
    assert ok.exit_code == 0, ok.output


def test_validation_messages_never_contain_input_values(monkeypatch):
    monkeypatch.setenv("GOLIOTH_TEST_VALIDATION_KEY", "a-key")
    with pytest.raises(InvalidInput) as caught:
        actions.validate_settings(
            {
                "organization_id": "Not A Slug",
                "name": "x",
                "project_id": "p",
                "api_key_env": "GOLIOTH_TEST_VALIDATION_KEY",
                "interval_seconds": 1,
            }
        )
    message = str(caught.value)
    assert "\n" not in message
    assert "organization_id: organization must be a lowercase slug" in message
    assert "interval_seconds: Input should be greater than or equal to 60" in message
    assert "input_value" not in message and "Not A Slug" not in message


def test_update_refuses_unknown_service_and_empty_change(db_env, harness):
    assert "no service with id 987654" in one_line_error(run("services", "update", "987654", "--interval", "90"))
    assert "nothing to change" in one_line_error(run("services", "update", harness.org))


def test_services_test_checks_key_reachability_and_counts_devices(
    db_env, engine, new_org, sim_project, key_env, monkeypatch
):
    monkeypatch.setenv("GOLIOTH_PROJECT_ID", sim_project.project_id)  # the README's defaults for `add`
    monkeypatch.setenv("GOLIOTH_BASE_URL", sim_project.url)
    added = run("services", "add", "--org", new_org, "--name", "From env", "--api-key-env", key_env)
    assert added.exit_code == 0, added.output
    ok = run("services", "test", "--org", new_org)
    assert ok.exit_code == 0, ok.output
    assert f"devices in Golioth: {sim_project.devices}" in ok.output
    assert "✓ key accepted" in ok.output

    monkeypatch.setenv(key_env, "not-the-right-key-at-all")
    rejected = run("services", "test", new_org)
    assert rejected.exit_code == 1
    assert f"Golioth rejected the key in ${key_env}" in rejected.output
    assert "not-the-right-key-at-all" not in rejected.output

    monkeypatch.delenv(key_env)
    missing = run("services", "test", new_org)
    assert missing.exit_code == 1 and f"${key_env} (its Golioth API key) is not set" in missing.output

    monkeypatch.setenv(key_env, sim_project.api_key)
    with engine.begin() as conn:
        store.update_service(conn, _service(engine, new_org).id, base_url="http://127.0.0.1:9")
    unreachable = run("services", "test", new_org)
    assert unreachable.exit_code == 1 and "cannot reach http://127.0.0.1:9" in unreachable.output


def test_settings_changes_apply_on_the_next_run_without_restart(db_env, harness):
    harness.sync()
    device_id = harness.local().sort_index().index[0]
    gid = harness.golioth_id_of(device_id)

    assert run("services", "update", harness.org, "--direction", "import").exit_code == 0
    harness.edit_local(device_id, name="edited-while-import-only")
    harness.sync()
    assert harness.remote()[gid]["name"] != "edited-while-import-only"  # import never writes to Golioth

    assert run("services", "update", harness.org, "--direction", "bidirectional").exit_code == 0
    harness.sync()
    assert harness.remote()[gid]["name"] == "edited-while-import-only"
