"""`make bench` keeps working: a quick smoke run (numbers are not asserted; speed is
measured by the benchmarks, never by the test suite)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
            "--only",
            "rollout",
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
        "per: request limit",
        "decision log on",
        "audit vs enforce",
    ):
        assert name in proc.stdout, name


def test_peers_benchmark_d2_side_runs_and_answers() -> None:
    """`make bench-peers` measures D2 in a child process like this one (the peers
    themselves are installed by the benchmark, never by the test suite)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--child", "d2", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "D2_SILENT": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {row["tools"] for row in result["rows"]} == {10, 1000}
    answers = result["decisions"]["D2 `is_allowed()`"]
    assert answers["10"][-1] is False  # the id no rule names
    assert any(answers["1000"]) and not all(answers["1000"])


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_server_benchmark_quick_run_reports_every_load(database: str) -> None:
    """`make bench-server` keeps working on both databases: a quick run against a
    real uvicorn process (needs ApacheBench; the numbers are not asserted). It
    refuses a load answered with another status than expected, so a broken 304
    path fails here."""
    if shutil.which("ab") is None:
        pytest.skip("ApacheBench (apt-get install -y apache2-utils) is not installed")
    if database == "postgresql":
        from d2.server.testing import postgres_binaries

        if postgres_binaries() is None:
            pytest.skip("PostgreSQL (apt-get install -y postgresql) is not installed")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "server_bench.py"),
            "--quick",
            "--database",
            database,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("bare Starlette route", "poll, 304", "poll, 200", "ingest", "events/s", "Target"):
        assert name in proc.stdout, name
