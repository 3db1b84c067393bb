"""Planning micro-benchmark: `core.plan.plan_sync` alone, on the three shapes a sync round plans.

    .venv/bin/python benchmarks/plan_micro.py                      # time the three shapes
    .venv/bin/python benchmarks/plan_micro.py --shapes steady --repeat 500
    .venv/bin/python benchmarks/plan_micro.py --profile tenk        # pyinstrument, if installed
    .venv/bin/python benchmarks/plan_micro.py --check HEAD~3        # same plans as that commit?

Shapes (inputs built as engine/sync.py build_plan passes them: every device linked with a base
snapshot, engine-style empty resolutions / open conflicts / unconfirmed creates frames):
- steady: 1,000 devices, 5 edited locally, 5 in Golioth, 10 with newer activity (one organization
  of a steady round over many organizations: per-call fixed costs dominate);
- tenk:   10,000 devices, benchmarks/plan_diff.py's mix (1 % edits on each side, 0.1 % conflicts,
  0.5 % creates and deletes on each side);
- tiny:   10 devices, nothing changed (the convergence self-check after a sync).

--check REV runs a corpus of inputs (the shapes under several settings, with resolutions, open
conflicts, unconfirmed creates and hardware-id matches, plus a few hundred small random worlds with
messy values) through this tree's plan_sync and through REV's (exported with `git archive`, run in
a subprocess), and fails unless every plan is identical: changes, conflicts, superseded, pairs,
with their dtypes.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
# --check runs this script against another tree's code: PLAN_MICRO_CODE names it.
sys.path.insert(0, os.environ.get("PLAN_MICRO_CODE", str(ROOT)))
from golioth_assets.core.plan import plan_sync  # noqa: E402
from golioth_assets.core.policy import SyncSettings  # noqa: E402

# After golioth_assets: plan_diff puts this tree first on sys.path, which must not win over PLAN_MICRO_CODE.
sys.path.insert(1, str(ROOT / "benchmarks"))
from plan_diff import RATES, synthetic  # noqa: E402

NO_CHANGE = {name: 0.0 for name in RATES}
SHAPES: dict[str, tuple[int, dict[str, float], int]] = {
    # name: (devices, change rates, devices with newer activity in Golioth)
    "steady": (1_000, {**NO_CHANGE, "local_edit": 0.005, "remote_edit": 0.005}, 10),
    "tenk": (10_000, RATES, 100),
    "tiny": (10, NO_CHANGE, 0),
}
OPEN_COLUMNS = [
    "conflict_id",
    "device_id",
    "golioth_device_id",
    "field",
    "conflict_type",
    "status",
    "resolution",
    "resolved_value",
    "resolved_by",
]

Inputs = tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, SyncSettings, dict[str, Any]]


def engine_extras(open_conflicts: pd.DataFrame | None = None) -> dict[str, Any]:
    """resolutions, open_conflicts, unconfirmed_creates as build_plan passes them (empty: from_records
    of no rows, object columns)."""
    oc = open_conflicts if open_conflicts is not None else pd.DataFrame.from_records([], columns=OPEN_COLUMNS)
    resolved = oc[oc["status"] == "resolved"].copy()
    if "chosen" not in resolved:
        resolved["chosen"] = pd.Series(dtype=object)
    return {
        "resolutions": resolved,
        "open_conflicts": oc[oc["status"] == "pending"],
        "unconfirmed_creates": pd.DataFrame.from_records([], columns=["device_id", "action"])["device_id"],
    }


def shape_inputs(name: str) -> Inputs:
    n, rates, active = SHAPES[name]
    local, remote, links, _ = synthetic(n, rates=rates, active=active)
    return local, remote, links, SyncSettings(), engine_extras()


# -- timing ---------------------------------------------------------------------------------------------


def time_shape(name: str, repeat: int) -> dict[str, Any]:
    local, remote, links, settings, extras = shape_inputs(name)
    plan = plan_sync(local, remote, links, settings, **extras)  # warm-up
    times, cpu = [], []
    gc.collect()
    gc.disable()  # as the engine plans (gc_paused): collections would add noise, not signal
    try:
        for _ in range(repeat):
            started, started_cpu = time.perf_counter(), time.process_time()
            plan_sync(local, remote, links, settings, **extras)
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
    finally:
        gc.enable()
    return {
        "shape": name,
        "devices": SHAPES[name][0],
        "median_ms": statistics.median(times) * 1000,
        "min_ms": min(times) * 1000,
        # CPU time of this process: what a shared, loaded machine disturbs least
        "cpu_median_ms": statistics.median(cpu) * 1000,
        "cpu_min_ms": min(cpu) * 1000,
        "runs": repeat,
        "plan_rows": len(plan.changes),
        "conflicts": len(plan.conflicts),
    }


def profile(name: str) -> None:
    from pyinstrument import Profiler

    local, remote, links, settings, extras = shape_inputs(name)
    plan_sync(local, remote, links, settings, **extras)
    runs = {"tiny": 300, "steady": 50, "tenk": 10}[name]
    profiler = Profiler(interval=0.0005)
    profiler.start()
    for _ in range(runs):
        plan_sync(local, remote, links, settings, **extras)
    profiler.stop()
    print(profiler.output_text(unicode=True, color=False, show_all=False))


# -- equivalence corpus ---------------------------------------------------------------------------------


def _with_conflict_work(n: int, seed: int) -> Inputs:
    """plan_diff's mix plus hardware-id matches (clean, ambiguous, unconfirmed creates) and the
    previous run's conflicts: half resolved by an operator, some stale (to be superseded)."""
    local, remote, links, _ = synthetic(n, seed=seed)
    new_local = local.index[local["device_id"].str.contains("-9000-")]
    new_remote = remote.index[remote["golioth_device_id"].str.startswith("f")]
    k = min(len(new_local), len(new_remote)) // 2
    for i, (li, ri) in enumerate(zip(new_local[:k], new_remote[:k])):
        shared = [f"shared-{i}"]
        local.at[li, "hardware_ids"] = shared
        remote.at[ri, "hardware_ids"] = shared if i % 4 else [*shared, "also"]
    if k > 2:  # an ambiguous match: a second Golioth device with the first one's hardware id
        remote.at[new_remote[k], "hardware_ids"] = ["shared-1"]
    settings = SyncSettings()
    rows = _operator_rows(plan_sync(local, remote, links, settings).conflicts, every_other=True)
    stale = links.sample(n=max(1, n // 200), random_state=seed)
    for j, (d, g) in enumerate(zip(stale["device_id"], stale["golioth_device_id"])):
        rows.append({"conflict_id": 5000 + j, "device_id": d, "golioth_device_id": g, "field": "name"})
        rows[-1].update(conflict_type="field", status="pending")
    rows.append({"conflict_id": 9999, "device_id": "elsewhere", "golioth_device_id": "x", "field": "tags"})
    rows[-1].update(conflict_type="field", status="pending")
    oc = pd.DataFrame.from_records(rows, columns=[*OPEN_COLUMNS, "chosen"])
    extras = engine_extras(oc)
    extras["resolutions"] = oc[oc["status"] == "resolved"]
    created = local.loc[new_local[: max(1, k // 2)], "device_id"]
    extras["unconfirmed_creates"] = pd.concat([created, pd.Series(["not-here"])], ignore_index=True)
    return local, remote, links, settings, extras


def _operator_rows(conflicts: pd.DataFrame, every_other: bool) -> list[dict[str, Any]]:
    """Open-conflict rows for a plan's conflicts: resolved (all, or every other one; the others
    pending), by choosing the local side, the remote side, or a value of its own."""
    rows = []
    for i, c in conflicts.reset_index(drop=True).iterrows():
        resolution = ["local", "remote", "value"][i % 3]
        chosen = c["local_value"] if resolution == "local" else c["remote_value"]
        if resolution == "value":
            chosen = c["base_value"] if isinstance(c["base_value"], str) else c["local_value"]
        rows.append(
            {
                "conflict_id": 100 + i,
                "device_id": c["device_id"],
                "golioth_device_id": c["golioth_device_id"],
                "field": c["field"],
                "conflict_type": c["conflict_type"],
                "status": "resolved" if i % 2 or not every_other else "pending",
                "resolution": resolution,
                "resolved_value": None,
                "resolved_by": None if i % 5 == 0 else "ops@example.com",
                "chosen": chosen,
            }
        )
    return rows


def resolved_messy_world(rng: np.random.Generator) -> Inputs:
    """A small random world whose conflicts an operator resolved (delete-vs-modify ones too)."""
    local, remote, links, settings, _ = messy_world(rng)
    try:
        conflicts = plan_sync(local, remote, links, settings).conflicts
    except Exception:
        conflicts = pd.DataFrame(columns=["device_id"])
    oc = pd.DataFrame.from_records(_operator_rows(conflicts, every_other=False), columns=[*OPEN_COLUMNS, "chosen"])
    return local, remote, links, settings, {"resolutions": oc, "open_conflicts": oc.iloc[:0]}


def _setting_variants() -> list[SyncSettings]:
    return [
        SyncSettings(),
        SyncSettings(policy="local_wins"),
        SyncSettings(policy="remote_wins", allow_deletes=True),
        SyncSettings(policy="newest_wins", policy_overrides={"desired_state": "manual"}),
        SyncSettings(direction="import", policy="local_wins"),
        SyncSettings(direction="export", policy="remote_wins", allow_deletes=True),
        SyncSettings(field_groups=frozenset({"identity", "tags"})),
        SyncSettings(field_groups=frozenset({"desired_state", "observed"}), policy="newest_wins"),
        SyncSettings(unsynced_fields=frozenset({"hardware_ids", "cohort"})),
    ]


def corpus() -> list[Inputs]:
    """The inputs --check plans on both trees."""
    cases: list[Inputs] = [shape_inputs(name) for name in SHAPES]
    for settings in _setting_variants():
        for n, seed in ((1_000, 2), (200, 3)):
            local, remote, links, _, extras = _with_conflict_work(n, seed)
            cases.append((local, remote, links, settings, extras))
            cases.append((local, remote, links, settings, engine_extras()))
    local, remote, links, _, _ = _with_conflict_work(10_000, 4)
    cases.append((local, remote, links, SyncSettings(policy="newest_wins"), engine_extras()))
    rng = np.random.default_rng(7)
    cases += [messy_world(rng) for _ in range(400)]
    cases += [resolved_messy_world(rng) for _ in range(200)]
    return cases


# Small random worlds: values in every shape a frame may hold them (padding, None, NaN, duplicates,
# reordered keys, numbers in desired state), links to devices that are gone, tombstones, matches.
NAMES = ["a", " a ", "b", None, "", np.nan, "c"]
HW = [["h1"], [" h1"], ["h2", "h1"], [], None, ["h3"], ["h4", " "], ["h5"]]
TAG_LISTS = [[], ["x"], ["x", "y"], ["y", " x", "x"], None, ["z"]]
REFS = [None, "bp", " bp", "", "other"]
FLAGS = [True, False, None, np.True_, np.False_]
DESIRED = [{}, {"a": 1}, {"a": 1.0}, {"a": None}, {"a": 1, "b": "on"}, {"b": "on", "a": 1}, None]
DESIRED += [{"a": {"n": [1, 2]}}, {"a": 0}, {"a": False}, {"c": "x"}]
STAMPS = [pd.Timestamp("2025-01-01T00:00:00Z") + pd.Timedelta(minutes=m) for m in range(4)] + [pd.NaT]
FIELD_POOLS = {"name": NAMES, "hardware_ids": HW, "tags": TAG_LISTS, "blueprint": REFS, "cohort": REFS}
FIELD_POOLS |= {"enabled": FLAGS, "desired_state": DESIRED}


def _draw(rng: np.random.Generator, pool: list[Any]) -> Any:
    return pool[int(rng.integers(0, len(pool)))]


def _device(rng: np.random.Generator) -> dict[str, Any]:
    return {f: _draw(rng, pool) for f, pool in FIELD_POOLS.items()}


def _observed(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "status": _draw(rng, ["online", "offline", None]),
        "last_seen_online": _draw(rng, STAMPS),
        "last_seen_offline": _draw(rng, STAMPS),
        "last_report": _draw(rng, STAMPS),
        "firmware_versions": _draw(rng, [{}, {"main": "1"}, {"main": "2"}, None]),
        "settings_status": _draw(rng, [None, "in_sync", "out_of_sync"]),
    }


def messy_world(rng: np.random.Generator) -> Inputs:
    n_local, n_remote = int(rng.integers(0, 9)), int(rng.integers(0, 9))
    observed = rng.random() < 0.6
    local_rows = [
        {
            "device_id": f"d{i}",
            **_device(rng),
            **(_observed(rng) if observed else {}),
            "updated_at": _draw(rng, STAMPS),
            "deleted_at": _draw(rng, [pd.NaT, pd.NaT, pd.NaT, STAMPS[1]]),
        }
        for i in range(n_local)
    ]
    remote_rows = [
        {
            "golioth_device_id": f"g{i}",
            **_device(rng),
            **(_observed(rng) if observed else {}),
            "updated_at": _draw(rng, STAMPS),
        }
        for i in range(n_remote)
    ]
    local = pd.DataFrame(
        local_rows, columns=["device_id", *FIELD_POOLS, "updated_at", "deleted_at"] if not local_rows else None
    )
    remote = pd.DataFrame(
        remote_rows, columns=["golioth_device_id", *FIELD_POOLS, "updated_at"] if not remote_rows else None
    )
    for frame in (local, remote):
        for c in ("updated_at", "deleted_at"):
            if c in frame:
                frame[c] = pd.to_datetime(frame[c], utc=True)
    link_rows = []
    for i in range(int(rng.integers(0, 9))):
        base = None if rng.random() < 0.15 else {f: v for f, v in _device(rng).items() if rng.random() < 0.8}
        link_rows.append(
            {
                "device_id": f"d{i}",
                "golioth_device_id": f"g{(i + int(rng.random() < 0.1)) % 9}",
                "base_snapshot": base,
                "link_status": "unlinked" if rng.random() < 0.1 else "linked",
            }
        )
    links = pd.DataFrame(link_rows, columns=["device_id", "golioth_device_id", "base_snapshot", "link_status"])
    links = links.drop_duplicates(subset=["device_id"]).drop_duplicates(subset=["golioth_device_id"])
    settings = _setting_variants()[int(rng.integers(0, len(_setting_variants())))]
    oc_rows = []
    fields = ["name", "tags", "enabled", "desired_state.a", "desired_state.b", "*"]
    for j in range(int(rng.integers(0, 4))):
        d, g = f"d{int(rng.integers(0, 9))}", f"g{int(rng.integers(0, 9))}"
        f = _draw(rng, fields)
        status = _draw(rng, ["pending", "resolved"])
        resolution = _draw(rng, ["local", "remote", "value"])
        ctype = "delete_vs_modify" if f == "*" else "field"
        chosen = _draw(rng, ["a", "x", '"on"', "1", "true", " null"])
        oc_rows.append([j + 1, d, g, f, ctype, status, resolution, None, _draw(rng, [None, "op"]), chosen])
    oc = pd.DataFrame.from_records(oc_rows, columns=[*OPEN_COLUMNS, "chosen"])
    extras = {
        "resolutions": oc[oc["status"] == "resolved"],
        "open_conflicts": oc[oc["status"] == "pending"],
        "unconfirmed_creates": pd.Series([f"d{i}" for i in range(9) if rng.random() < 0.2], dtype=object),
    }
    if rng.random() < 0.3:
        extras = {}
    return local, remote, links, settings, extras


def plan_all(cases: list[Inputs]) -> list[Any]:
    out: list[Any] = []
    for local, remote, links, settings, extras in cases:
        try:
            plan = plan_sync(local.copy(), remote.copy(), links.copy(), settings, **extras)
        except Exception as e:  # the same inputs must fail the same way on both trees
            out.append(("raised", type(e).__name__))
            continue
        out.append((plan.changes, plan.conflicts, plan.superseded, plan.pairs))
    return out


def same_plan(a: Any, b: Any) -> str | None:
    """None when identical, else what differs."""
    if isinstance(a[0], str) or isinstance(b[0], str):
        return None if a == b else f"{a} vs {b}"
    for name, x, y in zip(("changes", "conflicts", "superseded", "pairs"), a, b):
        try:
            if isinstance(x, pd.DataFrame):
                pd.testing.assert_frame_equal(x, y, check_dtype=True, check_index_type=True, check_column_type=True)
            elif x != y:
                return f"{name}: {x} vs {y}"
        except AssertionError as e:
            return f"{name}: {e}"
    return None


def check(rev: str) -> None:
    cases = corpus()
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", rev, "golioth_assets"], cwd=ROOT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        inputs, reference = Path(tmp) / "inputs.pickle", Path(tmp) / "reference.pickle"
        inputs.write_bytes(pickle.dumps(cases))
        subprocess.run(
            [sys.executable, __file__, "--plan-into", str(inputs), str(reference)],
            env={**os.environ, "PLAN_MICRO_CODE": tmp},
            check=True,
        )
        expected = pickle.loads(reference.read_bytes())
    got = plan_all(cases)
    failures = [(i, why) for i, (a, b) in enumerate(zip(expected, got)) if (why := same_plan(a, b))]
    for i, why in failures[:5]:
        print(f"case {i}: {why}")
    raised = sum(isinstance(p[0], str) for p in expected)
    print(f"{len(cases)} inputs ({raised} raise on both), {len(failures)} plans differ from {rev}'s")
    sys.exit(1 if failures else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--repeat", type=int, default=0, help="timed runs (default: tiny 2000, steady 300, tenk 40)")
    parser.add_argument("--profile", choices=list(SHAPES))
    parser.add_argument("--check", metavar="REV", help="fail unless plans equal REV's on the corpus")
    parser.add_argument("--plan-into", nargs=2, metavar=("INPUTS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plan_into:
        import golioth_assets.core.plan as planned_by

        assert planned_by.__file__.startswith(os.environ["PLAN_MICRO_CODE"]), planned_by.__file__
        cases = pickle.loads(Path(args.plan_into[0]).read_bytes())
        Path(args.plan_into[1]).write_bytes(pickle.dumps(plan_all(cases)))
        return
    if args.check:
        check(args.check)
    if args.profile:
        profile(args.profile)
        return
    print(f"python {sys.version.split()[0]}, pandas {pd.__version__}, numpy {np.__version__}")
    for name in args.shapes:
        load = os.getloadavg()[0]
        r = time_shape(name, args.repeat or {"tiny": 2000, "steady": 300, "tenk": 40}[name])
        print(
            f"{name:>6} ({r['devices']:>6,} devices): plan_sync median {r['median_ms']:7.2f} ms, "
            f"min {r['min_ms']:7.2f} ms; CPU median {r['cpu_median_ms']:7.2f} ms, min {r['cpu_min_ms']:7.2f} ms "
            f"({r['runs']} runs; {r['plan_rows']} plan rows, "
            f"{r['conflicts']} conflicts; load average {load:.2f})"
        )


if __name__ == "__main__":
    main()
