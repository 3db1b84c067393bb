"""Which database the CLI uses, and what it says when it can't reach one: the console script in a
subprocess, as a user runs it (the CLI writes the resolved URLs into its own environment)."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from golioth_assets.cli.output import ExitCode
from golioth_assets.store import embedded

GOLIOTH_SYNC = str(Path(sys.executable).with_name("golioth-sync"))
DB_VARIABLES = ("DATABASE_URL", "DAGSTER_DATABASE_URL", "DAGSTER_HOME", "GOLIOTH_SYNC_DAGSTER_PG_URL")


def _run(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([GOLIOTH_SYNC, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=180)


def _clean_env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in DB_VARIABLES} | {"COLUMNS": "200"} | extra


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://postgres@127.0.0.1:1/nowhere", "cannot reach the database: connection to server"),
        ("mysql://someone@127.0.0.1/devices", "supports PostgreSQL only"),
        ("not a url", "DATABASE_URL is not a valid database URL"),
    ],
)
@pytest.mark.parametrize("command", [("services", "list"), ("db", "status"), ("history", "--org", "acme")])
def test_a_database_that_cannot_be_used_is_one_line_not_a_traceback(tmp_path, url, expected, command):
    result = _run(*command, env=_clean_env(DATABASE_URL=url, GOLIOTH_SYNC_HOME=str(tmp_path)), cwd=tmp_path)
    assert result.returncode == ExitCode.not_started
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("Error: ") and expected in line


@pytest.mark.slow
def test_env_follows_the_embedded_server_and_resolves_the_same_databases_every_time(tmp_path):
    home = tmp_path / "home"
    env = _clean_env(GOLIOTH_SYNC_HOME=str(home))
    try:
        first = _run("env", env=env, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        exports = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in first.stdout.splitlines())
        # The data folder, not the socket URL: the shell keeps following the embedded server.
        assert exports["GOLIOTH_SYNC_HOME"] == str(home)
        assert "DATABASE_URL" not in exports
        assert make_url(exports["GOLIOTH_SYNC_DAGSTER_PG_URL"]).database == "dagster"

        # A shell that ran `eval "$(golioth-sync env)"`: the same databases, not a second Dagster one.
        shell = env | exports
        again = _run("env", env=shell, cwd=tmp_path)
        assert again.stdout == first.stdout

        # After `db stop`, the next command in that shell starts the server again.
        assert _run("db", "stop", env=shell, cwd=tmp_path).returncode == 0
        assert not embedded.is_running(home / "pgdata")
        listed = _run("services", "list", env=shell, cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert embedded.is_running(home / "pgdata")
    finally:
        embedded.stop(home / "pgdata")
