"""plan_sync of another checkout (usually main) and of this one, timed alternately in one process on
the same inputs: what a refactoring of the planner costs, measured so that the machine's other load
falls on both alike.

    .venv/bin/python benchmarks/plan_side_by_side.py /work/main --size 1000000 --rounds 6
    .venv/bin/python benchmarks/plan_side_by_side.py /work/main --size 10000 --rounds 40

The other checkout's package is copied to a temporary directory under another name (its imports
rewritten), so both versions load side by side. Each round runs both, in alternating order, after a
gc.collect(); wall and CPU time per run, then the medians and the ratio this/other. Exits non-zero
when this checkout is more than 10 % slower (CPU time, which other processes' load disturbs least).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from plan_diff import synthetic  # noqa: E402

OTHER = "golioth_other"


def load_other(checkout: Path, into: Path):
    """The other checkout's plan_sync and SyncSettings, from a renamed copy of its package."""
    shutil.copytree(checkout / "golioth_assets", into / OTHER, ignore=shutil.ignore_patterns("__pycache__"))
    for path in (into / OTHER).rglob("*.py"):
        path.write_text(path.read_text().replace("golioth_assets", OTHER))
    sys.path.insert(0, str(into))
    plan = importlib.import_module(f"{OTHER}.core.plan")
    policy = importlib.import_module(f"{OTHER}.core.policy")
    return plan.plan_sync, policy.SyncSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("other", type=Path, help="the other checkout (a directory holding golioth_assets/)")
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    from golioth_assets.core.plan import plan_sync
    from golioth_assets.core.policy import SyncSettings

    with tempfile.TemporaryDirectory() as tmp:
        other_plan, OtherSettings = load_other(args.other.resolve(), Path(tmp))
        local, remote, links, _ = synthetic(args.size)
        runs = {"other": (other_plan, OtherSettings()), "this": (plan_sync, SyncSettings())}
        for fn, settings in runs.values():
            fn(local, remote, links, settings)  # warm up: imports, caches
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        for r in range(args.rounds):
            for name in list(runs)[:: 1 if r % 2 == 0 else -1]:
                fn, settings = runs[name]
                gc.collect()
                wall, cpu = time.perf_counter(), time.process_time()
                fn(local, remote, links, settings)
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
                load = Path("/proc/loadavg").read_text().split()[0]
                print(
                    f"{name:5} wall {times[name][-1][0] * 1e3:8.1f} ms  cpu {times[name][-1][1] * 1e3:8.1f} ms  load {load}"
                )
    wall = {n: statistics.median(t[0] for t in ts) for n, ts in times.items()}
    cpu = {n: statistics.median(t[1] for t in ts) for n, ts in times.items()}
    for name in runs:
        print(f"{name}: median wall {wall[name] * 1e3:.1f} ms, median cpu {cpu[name] * 1e3:.1f} ms")
    ratio = cpu["this"] / cpu["other"]
    print(f"this/other: wall {wall['this'] / wall['other']:.3f}, cpu {ratio:.3f} (limit 1.10)")
    sys.exit(0 if ratio <= 1.10 else 1)


if __name__ == "__main__":
    main()
