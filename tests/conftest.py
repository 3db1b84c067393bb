"""Shared fixtures live in tests/fixtures/, one module per real dependency."""

import os

import pytest
from dagster._core.storage.defs_state.base import DefsStateStorage

from golioth_assets.credentials import ALLOW_LOOPBACK_HTTP_ENV

# The simulator speaks plain http on 127.0.0.1: the suite allows that explicitly, as the demo does.
# Set here, at import, so that every process a test starts (CLI, Dagster runs, receivers) inherits it.
os.environ[ALLOW_LOOPBACK_HTTP_ENV] = "1"

pytest_plugins = [
    "tests.fixtures.simulator",
    "tests.fixtures.database",
    "tests.fixtures.sync",
    "tests.fixtures.local_tables",
    "tests.fixtures.dagster",
]


def pytest_report_header(config: pytest.Config) -> str:
    from tests.fixtures.database import server_choice

    return f"PostgreSQL for this session: {server_choice().why}"


@pytest.fixture(autouse=True)
def _dagster_current_instance_is_restored():
    """Entering a DagsterInstance makes it Dagster's current one until it is exited. A test that
    leaves one entered (a `build_schedule_context` not used as `with`, say) breaks some later test
    at random, when the garbage collector frees that instance; this fails the test that leaked."""
    before = DefsStateStorage.get()
    yield
    assert DefsStateStorage.get() is before, "this test left a DagsterInstance entered; use `with`"
