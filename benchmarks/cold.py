"""Cold start: wall time of a whole fresh process (``import d2``, configure from a
policy file, one guarded call) for this release and for d2-sdk 1.2.2, and the same
sync allowed call measured inside a child process of each release."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import d2.core

from benchmarks.baseline import (
    BASELINE_VERSION,
    Unavailable,
    call_cost,
    child_env,
    compile_bytecode,
    setup_baseline,
    tail,
)
from benchmarks.common import (
    Pair,
    Settings,
    Table,
    Target,
    expires_soon,
    ms,
    ns,
    progress,
    ratio,
    tool_ids,
)

TARGET_COLD_RATIO = 0.5

COLD_SCRIPT = """\
import d2
from d2 import configure_rbac_sync, d2_guard, set_user
configure_rbac_sync()
@d2_guard("crm:op1")
def tool(x):
    return x + 1
set_user("alice", roles=["analyst"])
assert tool(1) == 2
"""


def cold_start_document() -> dict[str, Any]:
    """20 tools, four roles and an admin ``*``: the subset of the language that
    both this release and 1.2.2 read."""
    tools = tool_ids(20)
    return {
        "metadata": {"name": "bench-cold-start", "expires": expires_soon()},
        "policies": [
            {"role": "analyst", "permissions": tools[0:8]},
            {"role": "support", "permissions": tools[8:14]},
            {"role": "developer", "permissions": tools[14:20]},
            {"role": "auditor", "permissions": tools[0:20:3]},
            {"role": "admin", "permissions": ["*"]},
        ],
    }


def to_yaml(document: dict[str, Any]) -> str:
    """Block-style YAML for :func:`cold_start_document` (strings quoted)."""
    meta = document["metadata"]
    lines = ["metadata:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in meta.items()]
    lines.append("policies:")
    for entry in document["policies"]:
        lines.append(f"  - role: {json.dumps(entry['role'])}")
        lines.append("    permissions:")
        lines += [f"      - {json.dumps(p)}" for p in entry["permissions"]]
    return "\n".join(lines) + "\n"


@dataclass
class ColdRow:
    label: str
    argv: list[str]
    env: dict[str, str]
    ours: bool = False  # a failure of ours is a bug (raise), of 1.2.2 just unavailable
    samples: list[int] = field(default_factory=list)
    error: str = ""

    def run(self, cwd: str) -> None:
        t0 = time.perf_counter_ns()
        try:
            done = subprocess.run(
                self.argv,
                env=self.env,
                cwd=cwd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                check=False,
                timeout=120,
            )
        except subprocess.TimeoutExpired:
            if self.ours:
                raise
            self.error = "timed out"
            return
        elapsed = time.perf_counter_ns() - t0
        if done.returncode != 0:
            if self.ours:
                raise RuntimeError(f"{self.label} failed: {done.stderr}")
            self.error = f"exit {done.returncode}: {tail(done.stderr)}"
            return
        self.samples.append(elapsed)

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples and not self.error else None


def cold_rows(ours: str, baseline: Path | None, files: dict[str, Path]) -> list[ColdRow]:
    def py(label: str, code: str, policy: Path | None = None) -> ColdRow:
        env = child_env() if policy is None else child_env(D2_POLICY_FILE=str(policy))
        return ColdRow(label, [ours, "-c", code], env, ours=True)

    rows = [
        py("python -c pass", "pass"),
        py("python -c 'import pydantic'", "import pydantic"),
        py("python -c 'import ruamel.yaml'", "import ruamel.yaml"),
        py("import d2 (this release)", "import d2"),
    ]
    rows += [
        py(f"d2 this release, {kind} policy", COLD_SCRIPT, path) for kind, path in files.items()
    ]
    if baseline is not None:
        old = str(baseline)
        rows.append(
            ColdRow(
                f"import d2 (d2-sdk {BASELINE_VERSION})",
                [old, "-c", "import d2"],
                child_env(isolated=True),
            )
        )
        rows += [
            ColdRow(
                f"d2-sdk {BASELINE_VERSION}, {kind} policy",
                [old, "-c", COLD_SCRIPT],
                child_env(isolated=True, D2_POLICY_FILE=str(path)),
            )
            for kind, path in files.items()
        ]
    return rows


def cold_section(settings: Settings) -> tuple[list[Table], list[Target]]:
    ours = sys.executable
    if not settings.quick:
        progress("compiling bytecode (.pyc) for the venv and the d2 sources")
        sources = {str(Path(d2.__file__).parents[1]), str(Path(d2.core.__file__).parents[2])}
        compile_bytecode(ours, [sysconfig.get_paths()["purelib"], *sorted(sources)])
    baseline, why = setup_baseline(settings)

    calls: dict[str, Pair | str] = {}
    tmp = tempfile.mkdtemp(prefix="d2-bench-")
    try:
        document = cold_start_document()
        files = {"JSON": Path(tmp, "policy.json"), "YAML": Path(tmp, "policy.yaml")}
        files["JSON"].write_text(json.dumps(document, indent=2))
        files["YAML"].write_text(to_yaml(document))
        rows = cold_rows(ours, baseline, files)

        progress(f"cold start, {settings.cold_runs} runs of {len(rows)} commands")
        for row in rows:  # warm-up run (page cache), also checks that each one works
            row.run(tmp)
            row.samples.clear()
        for _ in range(settings.cold_runs):  # round robin, so drift hits every row alike
            for row in rows:
                if not row.error:
                    row.run(tmp)

        progress("sync allowed call in a child process, both releases")
        calls["this release"] = call_cost(ours, files["JSON"], tmp, settings)
        if baseline is None:
            calls[f"d2-sdk {BASELINE_VERSION}"] = why
        else:
            try:
                calls[f"d2-sdk {BASELINE_VERSION}"] = call_cost(
                    baseline, files["JSON"], tmp, settings, isolated=True
                )
            except (Unavailable, ValueError, KeyError, subprocess.SubprocessError) as exc:
                calls[f"d2-sdk {BASELINE_VERSION}"] = f"unavailable: {exc}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    bare = rows[0].median or 0.0
    by_label = {r.label: r for r in rows}
    table = Table(
        "Cold start (whole process, wall time)",
        ["command", "median", "minus `python -c pass`", f"vs d2-sdk {BASELINE_VERSION}"],
    )
    targets: list[Target] = []
    for row in rows:
        med = row.median
        if med is None:
            table.add(row.label, f"unavailable ({row.error})", "", "")
            continue
        versus = ""
        if row.label.startswith("d2 this release"):
            kind = row.label.rsplit(", ", 1)[1]
            other = by_label.get(f"d2-sdk {BASELINE_VERSION}, {kind}")
            theirs = other.median if other is not None else None
            versus = ratio(med / theirs) if theirs else "n/a"
            targets.append(
                Target(
                    f"cold start, {kind.split()[0]}, vs d2-sdk {BASELINE_VERSION}",
                    f"{versus} ({ms(med)} vs {ms(theirs)})" if theirs else "no baseline",
                    f"<= {TARGET_COLD_RATIO}x",
                    med <= TARGET_COLD_RATIO * theirs if theirs else None,
                )
            )
        table.add(row.label, ms(med), ms(med - bare), versus)
    if baseline is None:
        table.add(f"d2-sdk {BASELINE_VERSION}", why, "", "")
    table.notes += [
        f"median of {settings.cold_runs} runs per command, run round robin after one "
        "warm-up run; .pyc files present; D2_SILENT=1; the same base python for every row.",
        "the d2 rows run `import d2`, configure_rbac_sync() on a 20-tool policy file "
        "(found through D2_POLICY_FILE), set_user() and one guarded call: the same script "
        "and the same files for both releases.",
        f"d2-sdk {BASELINE_VERSION} is installed with its `cli` extra (PyYAML, which it "
        "needs to read YAML) into a throwaway venv under .bench/.",
    ]

    per_call = Table(
        f"Sync allowed call, this release vs d2-sdk {BASELINE_VERSION} (same script, child "
        "process)",
        ["release", "bare", "guarded", "overhead", "ratio"],
    )
    for release, cost in calls.items():
        if isinstance(cost, Pair):
            per_call.add(
                release, ns(cost.bare), ns(cost.guarded), ns(cost.overhead), ratio(cost.ratio)
            )
        else:
            per_call.add(release, cost, "", "", "")
    per_call.notes.append(
        "each release guards the same function with the same 20-tool JSON policy; medians "
        f"of {settings.batches} batches."
    )
    if baseline is not None:
        per_call.notes.append(
            f"d2-sdk {BASELINE_VERSION} runs each sync guarded call through `anyio.run` "
            "(a new event loop per call)."
        )
    return [table, per_call], targets
