"""CI's dependency audit: pip-audit over the installed (resolved) set, judged so that

- a known vulnerability in any installed package fails CI (exit 1), naming package, advisory and fix;
- an audit that could not run (no network, PyPI or the advisory service unreachable, or an index
  that answers no per-version data so every package is skipped) only warns (exit 0): a network
  hiccup must not fail a build, but it must not pass for a clean audit either, so it says so loudly.

pip-audit alone exits 0 when it skipped every package, and 1 both for a vulnerability and for a
connection error; hence this wrapper. Run with the project's venv: .venv/bin/python .ci/audit_dependencies.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

PIP_AUDIT = Path(sys.executable).with_name("pip-audit")
TIMEOUT_SECONDS = 600


def run_pip_audit() -> dict | None:
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "audit.json"
        argv = [str(PIP_AUDIT), "--skip-editable", "--progress-spinner", "off", "--format", "json", "--output"]
        try:
            done = subprocess.run(
                [*argv, str(report)], capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"dependency audit: WARNING pip-audit did not finish ({exc}); not audited", file=sys.stderr)
            return None
        try:
            return json.loads(report.read_text())
        except (OSError, ValueError):
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"dependency audit: WARNING pip-audit could not run ({last}); not audited", file=sys.stderr)
            return None


def main() -> int:
    report = run_pip_audit()
    if report is None:
        return 0
    dependencies = report.get("dependencies", [])
    vulnerable = [d for d in dependencies if d.get("vulns")]
    audited = [d for d in dependencies if "skip_reason" not in d]
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixes = ", ".join(vuln.get("fix_versions") or []) or "no fixed release yet"
            print(f"dependency audit: {dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixes})")
    if vulnerable:
        print(f"dependency audit: FAILED, {len(vulnerable)} package(s) with known vulnerabilities", file=sys.stderr)
        return 1
    skipped = len(dependencies) - len(audited)
    if not audited:
        print(
            f"dependency audit: WARNING none of {len(dependencies)} packages could be audited "
            "(the index gave no per-version data, or the advisory service was unreachable); not audited",
            file=sys.stderr,
        )
        return 0
    print(f"dependency audit: {len(audited)} packages audited, no known vulnerabilities ({skipped} skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
