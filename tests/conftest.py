"""Shared fixtures live in tests/fixtures/, one module per real dependency."""

import pytest
from dagster._core.storage.defs_state.base import DefsStateStorage

pytest_plugins = [
    "tests.fixtures.simulator",
    "tests.fixtures.database",
    "tests.fixtures.sync",
    "tests.fixtures.local_tables",
]


@pytest.fixture(autouse=True)
def _dagster_current_instance_is_restored():
    """Entering a DagsterInstance makes it Dagster's current one until it is exited. A test that
    leaves one entered (a `build_schedule_context` not used as `with`, say) breaks some later test
    at random, when the garbage collector frees that instance; this fails the test that leaked."""
    before = DefsStateStorage.get()
    yield
    assert DefsStateStorage.get() is before, "this test left a DagsterInstance entered; use `with`"
