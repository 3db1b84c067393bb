"""The install itself: the Dagster trio resolves to the pinned versions, and the console script exists."""

import shutil
import sys
from importlib.metadata import version
from pathlib import Path

from click.testing import CliRunner

from golioth_assets.cli.main import cli


def test_dagster_versions_are_the_pinned_trio():
    # Unpinned, pip resolves dagster-postgres 0.11 (years old): the three move together.
    assert version("dagster") == "1.13.27"
    assert version("dagster-webserver") == "1.13.27"
    assert version("dagster-postgres") == "0.29.27"


def test_console_script_is_installed_and_lists_every_command():
    assert shutil.which("golioth-sync", path=str(Path(sys.executable).parent))
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("db", "sync", "dev", "simulator", "webhooks", "services", "conflicts", "history", "console", "env"):
        assert f"  {command}" in result.output, command
