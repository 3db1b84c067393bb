"""A command's start-up: importing what it needs is most of a short command's time."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def imports_without_gc() -> Iterator[None]:
    """Import with Python's cyclic garbage collector paused. Importing pandas, SQLAlchemy and
    Dagster allocates hundreds of thousands of objects, none of them garbage, and the collector
    would walk them again and again meanwhile: about 15 % of the import time of `golioth-sync
    sync` (docs/benchmarks.md, "CLI and fixed cost"). Collection resumes afterwards."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
