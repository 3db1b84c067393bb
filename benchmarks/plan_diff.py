"""Planning benchmark: the three-way diff alone (`core.plan.plan_sync`), on frames already in memory.

    .venv/bin/python benchmarks/plan_diff.py                       # 10,000 and 1,000,000 devices
    .venv/bin/python benchmarks/plan_diff.py --sizes 10000 --repeat 20
    .venv/bin/python benchmarks/plan_diff.py --profile 1000000     # pyinstrument, if installed

Synthetic inputs, as in issue 3 ("Benchmarks"): every device linked with a base snapshot, then 1% of
devices edited locally, 1% edited in Golioth, 0.1% edited on both sides differently (conflicts,
policy manual), 0.5% created and 0.5% deleted on each side. The frames carry the columns the engine
loads (observed fields, timestamps, version), so observed-field planning is included.

Figures (median of --repeat runs, each on the same inputs) go to docs/benchmarks.md, "Sync engine".
Peak memory is measured in a separate run under tracemalloc (which slows Python allocations, so
it is not timed), plus the process's max RSS.
"""

from __future__ import annotations

import argparse
import gc
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from golioth_assets.core.plan import plan_sync  # noqa: E402
from golioth_assets.core.policy import SyncSettings  # noqa: E402

TAGS = ["production", "beta", "field-test", "indoor", "outdoor", "gateway"]
BLUEPRINTS = [None, "nrf9160-tracker", "esp32-sensor"]
COHORTS = [None, "field-sensors", "nrf9151-cell-gateways"]
T0 = pd.Timestamp("2025-06-01T00:00:00Z")

RATES = {
    "local_edit": 0.01,
    "remote_edit": 0.01,
    "conflict": 0.001,
    "local_create": 0.005,
    "remote_create": 0.005,
    "local_delete": 0.005,
    "remote_delete": 0.005,
}


def _pick(rng: np.random.Generator, pool: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k distinct positions out of `pool`, and the rest."""
    chosen = rng.choice(len(pool), size=k, replace=False)
    mask = np.zeros(len(pool), dtype=bool)
    mask[chosen] = True
    return pool[mask], pool[~mask]


def synthetic(
    n: int, seed: int = 1, rates: dict[str, float] = RATES, active: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """local, remote, links frames for n devices (plus the creates), and what was done to them.
    `active` devices (default 1 %, at least one) show newer activity in Golioth."""
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    names = np.array([f"device-{i:07d}" for i in idx], dtype=object)
    hardware = [[f"hw-{i:07d}"] for i in idx]
    tag_choice = rng.integers(0, len(TAGS), size=(n, 2))
    tag_count = rng.integers(0, 3, size=n)
    tags = [sorted({TAGS[a], TAGS[b]})[:c] for (a, b), c in zip(tag_choice, tag_count)]
    blueprint = np.array(BLUEPRINTS, dtype=object)[rng.integers(0, 3, size=n)]
    cohort = np.array(COHORTS, dtype=object)[rng.integers(0, 3, size=n)]
    enabled = rng.random(n) > 0.05
    intervals = rng.integers(1, 7, size=n) * 10
    desired = [{"interval": int(v), "led": "on" if v > 30 else "off"} for v in intervals]
    seen = T0 - pd.to_timedelta(rng.integers(0, 86_400, size=n), unit="s")
    firmware = [{"main": "1.2.3"} for _ in idx]

    base = pd.DataFrame(
        {
            "name": names,
            "hardware_ids": hardware,
            "tags": tags,
            "blueprint": blueprint,
            "cohort": cohort,
            "enabled": enabled,
            "desired_state": desired,
        }
    )
    snapshots = base.to_dict("records")

    local_ids = np.array([f"00000000-0000-4000-8000-{i:012d}" for i in idx], dtype=object)
    golioth_ids = np.array([f"{i:024x}" for i in idx], dtype=object)
    local = base.copy()
    local["device_id"] = local_ids
    local["updated_at"] = T0 - pd.Timedelta(days=1)
    local["deleted_at"] = pd.Series(pd.NaT, index=local.index, dtype="datetime64[ns, UTC]")
    local["version"] = 1
    local["status"] = "online"
    local["last_seen_online"] = seen
    local["last_seen_offline"] = pd.Series(pd.NaT, index=local.index, dtype="datetime64[ns, UTC]")
    local["last_report"] = seen
    local["firmware_versions"] = firmware
    local["settings_status"] = None

    remote = base.copy()
    remote["golioth_device_id"] = golioth_ids
    remote["tag_ids"] = remote["tags"]
    remote["blueprint_id"] = remote["blueprint"]
    remote["cohort_id"] = remote["cohort"]
    remote["status"] = "online"
    remote["last_seen_online"] = seen
    remote["last_seen_offline"] = pd.Series(pd.NaT, index=remote.index, dtype="datetime64[ns, UTC]")
    remote["last_report"] = seen
    remote["firmware_versions"] = [{"main": "1.2.3"} for _ in idx]
    remote["settings_status"] = None
    remote["metadata"] = [{} for _ in idx]
    remote["created_at"] = T0 - pd.Timedelta(days=100)
    remote["updated_at"] = T0 - pd.Timedelta(days=1)

    links = pd.DataFrame(
        {"device_id": local_ids, "golioth_device_id": golioth_ids, "base_snapshot": snapshots, "link_status": "linked"}
    )

    # Disjoint sets of devices for each kind of change.
    k = {name: int(round(rate * n)) for name, rate in rates.items()}
    pool = idx.copy()
    conflict, pool = _pick(rng, pool, k["conflict"])
    local_edit, pool = _pick(rng, pool, k["local_edit"])
    remote_edit, pool = _pick(rng, pool, k["remote_edit"])
    local_delete, pool = _pick(rng, pool, k["local_delete"])
    remote_delete, pool = _pick(rng, pool, k["remote_delete"])

    when = T0 + pd.Timedelta(minutes=5)
    # Local edits: rename and retag half, a desired-state key for the other half.
    half = local_edit[: len(local_edit) // 2]
    rest = local_edit[len(local_edit) // 2 :]
    local.loc[half, "name"] = [f"{names[i]}-local" for i in half]
    local.loc[half, "tags"] = pd.Series([["production", "edited"] for _ in half], index=half, dtype=object)
    local.loc[rest, "desired_state"] = pd.Series(
        [{**desired[i], "interval": 5} for i in rest], index=rest, dtype=object
    )
    local.loc[local_edit, "updated_at"] = when
    # Golioth edits: toggle enabled for half, change cohort and a desired key for the other half.
    half = remote_edit[: len(remote_edit) // 2]
    rest = remote_edit[len(remote_edit) // 2 :]
    remote.loc[half, "enabled"] = ~remote.loc[half, "enabled"].astype(bool)
    remote.loc[rest, "cohort"] = "field-sensors-2"
    remote.loc[rest, "desired_state"] = pd.Series(
        [{**desired[i], "led": "blink"} for i in rest], index=rest, dtype=object
    )
    remote.loc[remote_edit, "updated_at"] = when
    # Conflicts: both sides rename differently.
    local.loc[conflict, "name"] = [f"{names[i]}-L" for i in conflict]
    remote.loc[conflict, "name"] = [f"{names[i]}-R" for i in conflict]
    # Deletes: local soft delete; Golioth rows simply gone.
    local.loc[local_delete, "deleted_at"] = when
    remote = remote.drop(index=remote_delete)
    # Golioth activity since the last sync: observed fields move forward for 1% of devices.
    moved = rng.choice(remote.index.to_numpy(), size=max(1, n // 100) if active is None else active, replace=False)
    remote.loc[moved, "last_seen_online"] = when

    # Creates on each side (never linked; distinct hardware ids, so no matching).
    def created(count: int, prefix: str) -> pd.DataFrame:
        j = np.arange(count)
        return pd.DataFrame(
            {
                "name": [f"{prefix}-{i:07d}" for i in j],
                "hardware_ids": [[f"{prefix}-hw-{i:07d}"] for i in j],
                "tags": [["beta"] for _ in j],
                "blueprint": None,
                "cohort": None,
                "enabled": True,
                "desired_state": [{} for _ in j],
            }
        )

    new_local = created(k["local_create"], "new-local")
    new_local["device_id"] = [f"00000000-0000-4000-9000-{i:012d}" for i in range(len(new_local))]
    new_local["updated_at"] = when
    new_local["deleted_at"] = pd.Series(pd.NaT, index=new_local.index, dtype="datetime64[ns, UTC]")
    new_local["version"] = 1
    new_remote = created(k["remote_create"], "new-remote")
    new_remote["golioth_device_id"] = [f"f{i:023x}" for i in range(len(new_remote))]
    new_remote["tag_ids"] = new_remote["tags"]
    new_remote["updated_at"] = when
    new_remote["created_at"] = when

    local = pd.concat([local, new_local], ignore_index=True)
    remote = pd.concat([remote, new_remote], ignore_index=True)
    return local, remote, links, {name: int(v) for name, v in k.items()}


def run(n: int, repeat: int, settings: SyncSettings) -> dict:
    build = time.perf_counter()
    local, remote, links, done = synthetic(n)
    build = time.perf_counter() - build

    plan_sync(local, remote, links, settings)  # warm-up (imports, caches)
    times = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        plan = plan_sync(local, remote, links, settings)
        times.append(time.perf_counter() - started)

    gc.collect()
    tracemalloc.start()
    plan_sync(local, remote, links, settings)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    counts = plan.counts()
    return {
        "devices": n,
        "build_s": build,
        "median_ms": statistics.median(times) * 1000,
        "min_ms": min(times) * 1000,
        "max_ms": max(times) * 1000,
        "peak_alloc_mb": peak / 2**20,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "plan_rows": len(plan.changes),
        "counts": counts,
        "done": done,
    }


def check(result: dict) -> None:
    """The plan must find what was done, or the timing means nothing."""
    c, d = result["counts"], result["done"]
    assert c["conflicts"] == d["conflict"], (c, d)
    assert c["created_local"] == d["remote_create"], (c, d)
    assert c["created_remote"] == d["local_create"], (c, d)
    assert c["unlinked"] == d["local_delete"] + d["remote_delete"], (c, d)  # deletes are off
    assert c["updated_remote"] == d["local_edit"], (c, d)
    assert c["updated_local"] == d["remote_edit"], (c, d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=0, help="timed runs per size (default: 20 below 100k, else 3)")
    parser.add_argument("--profile", type=int, metavar="N", help="profile one plan of N devices with pyinstrument")
    args = parser.parse_args()
    settings = SyncSettings()  # bidirectional, manual, every field group, deletes off

    if args.profile:
        from pyinstrument import Profiler

        local, remote, links, _ = synthetic(args.profile)
        plan_sync(local, remote, links, settings)
        profiler = Profiler(interval=0.001)
        profiler.start()
        plan_sync(local, remote, links, settings)
        profiler.stop()
        print(profiler.output_text(unicode=True, color=False, show_all=False))
        return

    print(f"python {platform.python_version()}, pandas {pd.__version__}, numpy {np.__version__}, {platform.machine()}")
    targets = {10_000: 50, 1_000_000: 5000}
    for n in args.sizes:
        repeat = args.repeat or (20 if n < 100_000 else 3)
        result = run(n, repeat, settings)
        check(result)
        target = targets.get(n)
        verdict = (
            ""
            if target is None
            else f" (target ≤ {target:d} ms: {'met' if result['median_ms'] <= target else 'MISSED'})"
        )
        print(
            f"{n:>9,} devices: plan_sync median {result['median_ms']:.1f} ms "
            f"(min {result['min_ms']:.1f}, max {result['max_ms']:.1f}, {repeat} runs){verdict}; "
            f"peak traced allocations {result['peak_alloc_mb']:.0f} MiB, max RSS {result['max_rss_mb']:.0f} MiB; "
            f"{result['plan_rows']:,} plan rows; inputs built in {result['build_s']:.1f} s"
        )
        print(f"           plan counts: {result['counts']}")


if __name__ == "__main__":
    main()
