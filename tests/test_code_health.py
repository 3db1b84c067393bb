"""Rules of the code base that a linter does not check, read from the source with `ast`:

- SQL lives in store/ only (docs/architecture.md, "Layers"): no other module runs a statement,
  builds one with SQLAlchemy, imports the table definitions, or holds SQL text.
- No function in core/, engine/, store/ or defs/ is over 80 lines (issue 11): the orchestrators
  stay split into named phases.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [ROOT / "golioth_assets", ROOT / "sensors"]
STORE = ROOT / "golioth_assets" / "store"
SHORT_FUNCTIONS = [ROOT / "golioth_assets" / name for name in ("core", "engine", "store", "defs")]
MAX_FUNCTION_LINES = 80

# Calls that send a statement to the database, whatever object they are called on.
RUNS_SQL = {"execute", "exec_driver_sql", "executemany", "read_sql", "read_sql_query", "read_sql_table", "to_sql"}
# SQLAlchemy's statement builders (sa.text, sa.select, ...): `sa.exc`, `sa.engine` types stay allowed.
BUILDS_SQL = {
    "text",
    "select",
    "insert",
    "update",
    "delete",
    "func",
    "literal_column",
    "table",
    "column",
    "union",
    "union_all",
    "exists",
    "bindparam",
    "case",
    "cast",
    "and_",
    "or_",
    "not_",
    "tuple_",
    "null",
    "true",
    "false",
}
SQL_TEXT = re.compile(r"^\s*(SELECT\s|INSERT\s+INTO\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s|WITH\s+\w+\s+AS\s*\()", re.I)


def product_modules() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted(p for p in package.rglob("*.py") if "migrations" not in p.parts)


def outside_store() -> list[Path]:
    return [p for p in product_modules() if not p.is_relative_to(STORE)]


def sql_uses(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, what) for each place that runs, builds or spells SQL."""
    aliases = {"sqlalchemy"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name == "sqlalchemy"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in RUNS_SQL:
            yield node.lineno, f".{node.func.attr}(...)"
        elif isinstance(node, ast.Attribute) and node.attr in BUILDS_SQL:
            if isinstance(node.value, ast.Name) and node.value.id in aliases:
                yield node.lineno, f"{node.value.id}.{node.attr}"
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "golioth_assets.store.schema" or (
                node.module.startswith("sqlalchemy") and any(a.name in BUILDS_SQL for a in node.names)
            ):
                yield node.lineno, f"from {node.module} import {', '.join(a.name for a in node.names)}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_TEXT.match(node.value):
            yield node.lineno, f"SQL text {node.value.strip()[:30]!r}"


def test_the_checks_see_sql():
    """The detector finds each kind of SQL, so an empty result below means something."""
    source = """
import sqlalchemy as sa
from sqlalchemy import select
from golioth_assets.store.schema import devices
conn.execute(sa.text("x"))
conn.exec_driver_sql("SELECT 1")
query = "  update devices set name = 'x'"
"""
    found = {what.split("(")[0] for _, what in sql_uses(ast.parse(source))}
    assert found == {
        "from sqlalchemy import select",
        "from golioth_assets.store.schema import devices",
        ".execute",
        "sa.text",
        ".exec_driver_sql",
        "SQL text 'SELECT 1'",
        "SQL text \"update devices set name = 'x'\"",
    }
    assert not list(sql_uses(ast.parse("import sqlalchemy as sa\nerror = sa.exc.OperationalError\n")))


def test_sql_lives_in_store_only():
    modules = outside_store()
    assert len(modules) > 50  # the walk found the package
    found = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in modules
        for line, what in sql_uses(ast.parse(path.read_text(), str(path)))
    ]
    assert not found, "SQL outside store/; move each into a named function in store/:\n" + "\n".join(found)


def long_functions(tree: ast.AST, limit: int) -> Iterator[tuple[int, str, int]]:
    """(line, name, lines) of each function, nested ones too, longer than `limit` lines from its
    `def` to its last line (decorators not counted; docstring and comments are)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None:
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                yield node.lineno, node.name, lines


def test_the_length_check_counts_lines():
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    source = f"@decorated\ndef long():\n{body}\n\ndef short():\n    pass\n"
    assert list(long_functions(ast.parse(source), MAX_FUNCTION_LINES)) == [(2, "long", 81)]


def test_no_function_in_core_engine_store_or_defs_is_over_80_lines():
    modules = [p for p in product_modules() if any(p.is_relative_to(d) for d in SHORT_FUNCTIONS)]
    assert len(modules) > 40
    found = [
        f"{path.relative_to(ROOT)}:{line}: {name} is {lines} lines"
        for path in modules
        for line, name, lines in long_functions(ast.parse(path.read_text(), str(path)), MAX_FUNCTION_LINES)
    ]
    assert not found, f"over {MAX_FUNCTION_LINES} lines; split into named phases:\n" + "\n".join(found)
