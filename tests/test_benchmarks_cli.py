"""Every benchmark script still starts: `--help` of each `benchmarks/*.py` that has a `__main__`,
run as its docs say (the venv's python, from benchmarks/), exits 0 and prints its usage. A script's
imports (of the project, of a shared harness) break silently otherwise: the benchmarks are run by
hand, not by the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if "__main__" in p.read_text())


def test_every_benchmark_script_prints_its_usage():
    assert SCRIPTS, "no benchmark script found"
    started = {
        script.name: subprocess.Popen(
            [sys.executable, script.name, "--help"],
            cwd=BENCHMARKS,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script in SCRIPTS
    }
    failed = {}
    for name, proc in started.items():
        out, err = proc.communicate(timeout=60)
        if proc.returncode != 0 or "usage:" not in out:
            failed[name] = f"exit {proc.returncode}\n{out[-500:]}{err[-2000:]}"
    assert not failed, "\n\n".join(f"{name}: {why}" for name, why in failed.items())
