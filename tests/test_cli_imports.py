"""The command line's fixed cost: listing the commands, and the commands that run no sync, import
neither pandas nor Dagster (cli/main.py loads each command module on use). Checked on the modules a
fresh interpreter ends up holding, not on a timing (docs/benchmarks.md, "CLI and fixed cost")."""

import json
import subprocess
import sys

import click
import pytest

from golioth_assets.cli.main import LAZY_COMMANDS, cli
from golioth_assets.store import migrate

HEAVY = ("pandas", "dagster", "alembic")
PROBE = """
import json, sys
heavy = json.loads(sys.argv[2])
sys.argv = ["golioth-sync", *json.loads(sys.argv[1])]
from golioth_assets.cli.main import cli
try:
    cli()
except SystemExit:
    pass
print(json.dumps([name for name in heavy if name in sys.modules]))
"""


def _heavy_modules_after(*argv: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(argv)), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["services", "--help"], ["services", "add", "--help"], ["local", "--help"], ["db", "--help"]],
    ids=" ".join,
)
def test_listing_and_non_sync_commands_import_neither_pandas_nor_dagster(argv):
    assert _heavy_modules_after(*argv) == []


def test_the_sync_command_still_loads_on_use():
    # The probe sees what a lazy command pulls in: `sync --help` loads cli/sync.py (pandas), not Dagster.
    assert _heavy_modules_after("sync", "--help") == ["pandas"]


def test_every_lazy_command_is_the_command_of_that_name():
    listed = cli.list_commands(click.Context(cli))
    for name, lazy in LAZY_COMMANDS.items():
        command = lazy.load()
        assert command.name == name, lazy.target
        assert name in listed
        assert cli.get_command(click.Context(cli), name) is command


def test_the_quick_head_revision_is_alembics():
    from alembic.script import ScriptDirectory

    assert migrate.head_revision() == ScriptDirectory.from_config(migrate._config()).get_current_head()


def test_loading_a_command_leaves_the_garbage_collector_on():
    import gc

    assert gc.isenabled()
    LAZY_COMMANDS["history"].load()
    assert gc.isenabled()  # paused only while the command's modules import (cli/startup.py)
