"""Pause the cyclic garbage collector while building a large, long-lived result.

Listing 100k devices allocates ~2M container objects that all survive; every generation-2
collection rescans them, which made list_devices about 3x slower (3.8s vs 1.3s for 1,000 pages
from a local simulator). The objects are acyclic, so pausing the collector loses nothing.
Reference-counted so that overlapping calls from several threads re-enable it only at the end.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
