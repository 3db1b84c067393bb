"""Where a mapped table lives: the PostgreSQL URL in the environment variable the mapping names.

The URL is read at the moment it is needed and never stored, logged or printed with its password
(`database.render` hides it). A mapping without `connection_env` uses golioth-sync's own database.
"""

from __future__ import annotations

import os

from sqlalchemy.engine import URL, make_url

from golioth_assets.store import database
from golioth_assets.store.local_table.mapping import TableMapping


class TableConnectionError(RuntimeError):
    """The mapping's connection variable is unset or holds no usable PostgreSQL URL."""


def table_url(mapping: TableMapping, *, default: URL | None = None) -> URL:
    """The URL of the database holding the mapped table; `default` (our own database) when the
    mapping names no variable. Error messages name the variable, never its value."""
    if mapping.connection_env is None:
        if default is None:
            raise TableConnectionError(f"the mapping of {mapping.table} names no connection_env")
        return default
    raw = os.environ.get(mapping.connection_env, "").strip()
    if not raw:
        raise TableConnectionError(
            f"{mapping.connection_env} is not set: it should hold the PostgreSQL URL of the database with {mapping.table}"
        )
    try:
        # make_url's own message repeats the whole string, password included: say less.
        url = make_url(raw)
    except Exception:
        raise TableConnectionError(f"{mapping.connection_env} does not hold a valid PostgreSQL URL") from None
    try:
        return database.normalize_url(url, variable=mapping.connection_env)
    except database.DatabaseConfigError as exc:
        raise TableConnectionError(str(exc)) from None


def first_line(exc: BaseException) -> str:
    """The driver's own message (psycopg2 names host and port, never the password), one line."""
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
