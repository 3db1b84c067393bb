"""Apply alembic migrations programmatically (`golioth-sync db upgrade`, the demo and the tests).

Nearly every command checks the schema first, and it is nearly always at head already: that check
is one query and a scan of the version files' `revision =` lines, without importing alembic (about
0.15 s of every command's start; docs/benchmarks.md, "CLI and fixed cost"). Alembic runs only when
there is something to apply."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "golioth_sync_alembic_version"
# Several processes (webserver, daemon, receiver, tests) may start at once; one migrates, the rest wait.
_MIGRATION_LOCK_KEY = 0x601107


# `revision = "0006"`, `down_revision: str | None = "0005"`, `down_revision = None`.
_REVISION_LINE = re.compile(
    r"""^(down_revision|revision)\s*(?::[^=\n]+)?=\s*(?:['"]([^'"]+)['"]|None)\s*$""", re.MULTILINE
)


def _config() -> Config:
    from alembic.config import Config

    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Migrate to `revision` and return the revision the database is at afterwards."""
    if revision == "head" and (head := head_revision()) is not None and current_revision(engine) == head:
        return head
    from alembic import command

    cfg = _config()
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return current_revision(engine)


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    cfg = _config()
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: not migrated yet), as alembic's version table says."""
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": VERSION_TABLE}).scalar() is None:
            return None
        return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


@functools.cache
def head_revision() -> str | None:
    """The newest revision of the version files: the one no other names as its down_revision (None
    when there are several heads, which alembic itself refuses to upgrade to, or a file this scan
    cannot read: then alembic decides)."""
    revisions, parents = set(), set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        found = dict(_REVISION_LINE.findall(path.read_text()))
        if set(found) != {"revision", "down_revision"}:  # a merge (a tuple), or a form not known here
            return None
        revisions.add(found["revision"])
        parents.add(found["down_revision"])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None
