"""The child processes of the cold-start section, and the d2-sdk 1.2.2 baseline.

The baseline is installed from the package index into a throwaway venv under
``.bench/`` (gitignored) with ``uv venv`` and ``uv pip install``, using the
machine's Python; never into the project environment. Anything that goes wrong
with it raises :class:`Unavailable`, and its rows say so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, Pair, Settings, progress

BASELINE_DIR = ROOT / ".bench" / "d2-sdk-1.2.2"  # throwaway venv (gitignored)
BASELINE_VERSION = "1.2.2"
# The ``cli`` extra brings PyYAML, which 1.2.2 needs to read a YAML policy.
BASELINE_SPECS = (f"d2-sdk[cli]=={BASELINE_VERSION}", f"d2-sdk=={BASELINE_VERSION}")

# Run by both releases' pythons (same API): a sync allowed call against a bare call.
# argv: batches, target ns per batch. Prints the medians (ns per call) as JSON.
CALL_SCRIPT = """\
import itertools, json, statistics, sys, time
from d2 import configure_rbac_sync, d2_guard, set_user
configure_rbac_sync()
def bare(x):
    return x
tool = d2_guard("crm:op1")(bare)
set_user("alice", roles=["analyst"])
assert tool(1) == 1
def batch(fn, n):
    t0 = time.perf_counter_ns()
    for _ in itertools.repeat(None, n):
        fn(1)
    return time.perf_counter_ns() - t0
def calibrate(fn, target):
    n = 1
    while True:
        elapsed = batch(fn, n)
        if elapsed >= target // 8:
            return max(1, round(n * target / elapsed))
        n *= 4
batches, target = int(sys.argv[1]), int(sys.argv[2])
sizes = {"bare": calibrate(bare, target), "guarded": calibrate(tool, target)}
out = {"bare": [], "guarded": []}
for _ in range(batches):
    for name, fn in (("bare", bare), ("guarded", tool)):
        out[name].append(batch(fn, sizes[name]) / sizes[name])
print(json.dumps({k: statistics.median(v) for k, v in out.items()}))
"""


class Unavailable(Exception):
    """The 1.2.2 baseline could not be installed or run."""


def child_env(*, isolated: bool = False, **extra: str) -> dict[str, str]:
    """The environment of a measured child: bytecode writes allowed (real installs
    have .pyc files), no D2_* leaking in, local mode. ``isolated`` (the 1.2.2 venv):
    no PYTHONPATH/PYTHONHOME either, so nothing of this checkout can shadow it."""
    dropped = {"PYTHONDONTWRITEBYTECODE"} | ({"PYTHONPATH", "PYTHONHOME"} if isolated else set())
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("D2_")}
    env.update(D2_SILENT="1", D2_STATE_PATH=":memory:", **extra)
    return env


def run_ok(
    argv: Sequence[str | os.PathLike[str]], **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [os.fspath(a) for a in argv], capture_output=True, text=True, check=False, **kwargs
    )


def tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:]) or "no output"


def compile_bytecode(
    python: str | os.PathLike[str], paths: Sequence[str], isolated: bool = False
) -> None:
    """Write .pyc files the way an installer would (failures in odd files ignored)."""
    env = child_env(isolated=isolated)
    run_ok([python, "-m", "compileall", "-q", "-j", "0", *paths], env=env, timeout=600)


def machine_python() -> str:
    base = getattr(sys, "_base_executable", "") or ""
    if base and os.path.exists(base) and os.path.realpath(base) != os.path.realpath(sys.executable):
        return base
    return shutil.which("python3") or sys.executable


def baseline_python() -> Path:
    """The python of a throwaway venv holding d2-sdk 1.2.2; installed when missing."""
    python = BASELINE_DIR / "bin" / "python"
    probe = f"import d2; assert d2.__version__ == {BASELINE_VERSION!r}"
    if (
        python.exists()
        and run_ok([python, "-c", probe], env=child_env(isolated=True)).returncode == 0
    ):
        return python
    uv = shutil.which("uv")
    if uv is None:
        raise Unavailable("uv not found on PATH")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    progress(f"installing d2-sdk {BASELINE_VERSION} into {BASELINE_DIR.relative_to(ROOT)}")
    shutil.rmtree(BASELINE_DIR, ignore_errors=True)
    made = run_ok(
        [uv, "venv", "-q", "--python", machine_python(), BASELINE_DIR], env=env, timeout=300
    )
    if made.returncode != 0:
        raise Unavailable(f"uv venv failed: {tail(made.stderr)}")
    error = ""
    for spec in BASELINE_SPECS:
        done = run_ok(
            [uv, "pip", "install", "-q", "--compile-bytecode", "--python", python, spec],
            env=env,
            timeout=600,
        )
        if done.returncode == 0:
            break
        error = tail(done.stderr)
    else:
        raise Unavailable(f"uv pip install failed: {error}")
    if run_ok([python, "-c", probe], env=child_env(isolated=True)).returncode != 0:
        raise Unavailable("installed, but `import d2` does not give 1.2.2")
    return python


def call_cost(
    python: str | os.PathLike[str],
    policy: Path,
    cwd: str,
    settings: Settings,
    isolated: bool = False,
) -> Pair:
    """Run :data:`CALL_SCRIPT` with ``python``: medians of a bare and a guarded call."""
    done = run_ok(
        [python, "-c", CALL_SCRIPT, str(settings.batches), str(settings.batch_ns // 2)],
        env=child_env(isolated=isolated, D2_POLICY_FILE=str(policy)),
        cwd=cwd,
        timeout=600,
    )
    if done.returncode != 0:
        raise Unavailable(f"per-call run failed: {tail(done.stderr)}")
    medians = json.loads(done.stdout.strip().splitlines()[-1])
    return Pair(float(medians["bare"]), float(medians["guarded"]))


def setup_baseline(settings: Settings) -> tuple[Path | None, str]:
    """The 1.2.2 python (installed and byte-compiled), or None and why not."""
    if not settings.baseline:
        return None, "skipped (--quick)" if settings.quick else "skipped (--no-baseline)"
    try:
        python = baseline_python()
        purelib = run_ok(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            env=child_env(isolated=True),
        ).stdout.strip()
        if purelib:
            compile_bytecode(python, [purelib], isolated=True)
    except (Unavailable, OSError, subprocess.SubprocessError) as exc:
        progress(f"d2-sdk {BASELINE_VERSION} unavailable: {exc}")
        return None, f"unavailable: {exc}"
    return python, ""
