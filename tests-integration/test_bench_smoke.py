"""`make bench` keeps working: a quick smoke run (numbers are not asserted; speed is
measured by the benchmarks, never by the test suite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_run_reports_every_target() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--quick",
            "--no-baseline",
            "--only",
            "overhead",
            "--only",
            "guardrails",
            "--only",
            "compile",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Targets" in proc.stdout
    for name in (
        "sync allowed overhead",
        "input rules",
        "sequence check",
        "sanitize",
        "compile 10,000 tools",
    ):
        assert name in proc.stdout, name
