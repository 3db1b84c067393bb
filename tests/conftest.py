"""Shared fixtures live in tests/fixtures/, one module per real dependency."""

pytest_plugins = [
    "tests.fixtures.simulator",
    "tests.fixtures.database",
    "tests.fixtures.sync",
]
