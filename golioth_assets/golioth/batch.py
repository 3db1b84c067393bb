"""Bounded-concurrency fan-out of independent calls (Golioth has no bulk write endpoint)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

Call = Callable[[], Any]
# Keys are any hashable values; typed Any because Mapping is invariant in its key type.
Calls = Mapping[Any, Call] | Iterable[Call] | Iterable[tuple[Any, Call]]


def keyed(calls: Calls) -> list[tuple[Any, Call]]:
    """Accept a mapping, (key, fn) pairs, or bare callables (keyed by position)."""
    source: Iterable[Any] = calls.items() if isinstance(calls, Mapping) else calls
    items: list[tuple[Any, Call]] = []
    for index, item in enumerate(source):
        key, fn = (index, item) if callable(item) else item
        if not callable(fn):
            raise TypeError(f"run_many item {key!r} is not callable")
        items.append((key, fn))
    if len({key for key, _ in items}) != len(items):
        raise ValueError("run_many keys must be unique")
    return items


def run_bounded(
    calls: Calls,
    *,
    max_workers: int,
    stop_on: tuple[type[BaseException], ...],
    aborted: Callable[[BaseException], BaseException],
) -> dict[Any, Any]:
    """Run every call, at most `max_workers` at a time; return key -> result or exception.

    One item's failure never stops the others, except an exception in `stop_on`: then items not
    yet started get `aborted(that_exception)` instead of running, and the in-flight ones finish.
    """
    items = keyed(calls)
    if not items:
        return {}
    stop = threading.Event()
    stopped_by: list[BaseException] = []

    def run(fn: Call) -> Any:
        if stop.is_set():
            return aborted(stopped_by[0])
        try:
            return fn()
        except stop_on as exc:
            if not stop.is_set():
                stopped_by.append(exc)
                stop.set()
            return exc
        except Exception as exc:  # noqa: BLE001 - the caller gets every failure back, per item
            return exc

    with ThreadPoolExecutor(max_workers=min(max_workers, len(items)), thread_name_prefix="golioth") as pool:
        futures = [(key, pool.submit(run, fn)) for key, fn in items]
    return {key: future.result() for key, future in futures}
