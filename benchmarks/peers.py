"""Side by side: D2, casbin and cedarpy deciding the same RBAC requests (make bench-peers).

    make bench-peers                                       # full run, updates docs/performance.md
    uv run --frozen --all-packages python benchmarks/peers.py --quick   # smoke run, no file

casbin (PyPI ``pycasbin``, formerly ``casbin``) and cedarpy are installed into a
throwaway virtual environment under ``.bench/peers`` (gitignored) with ``uv venv``
(the machine's Python, no interpreter downloads) and ``uv pip install``; never into
the project environment. A peer that cannot be installed is reported as unavailable
and the run goes on.

One process per engine, all on that environment's Python; D2 runs from this
checkout's ``packages/d2-core/src`` (``PYTHONPATH``). Each process times a bare
function call too, so the processes can be compared. Before timing, every engine
answers the same sample of requests and the parent checks the answers agree.

Every figure is the median, over interleaved batches, of the time per decision of a
batch (``benchmarks.common.interleaved``): 21 rounds of ~25 ms (``--quick``: 5 of
~3 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Run as a script (by the project's Python, and by the peers' Python for the child
# processes): import the shared helpers as ``benchmarks.<name>`` from the repo root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import ROOT, Settings, Table, interleaved, progress, sync_batch, tool_ids

PEERS_DIR = ROOT / ".bench" / "peers"  # throwaway venv (gitignored)
DOCS = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"
SIZES = ((10, 4), (1000, 10))  # (tools, roles)
USER_ROLES = ("role0", "role1")
# engine -> PyPI names to try in order (both casbin names import as ``casbin``)
PACKAGES = {"casbin": ("pycasbin", "casbin"), "cedarpy": ("cedarpy",)}
ENGINES = ("d2", "casbin", "cedarpy")
INSTALL_TIMEOUT = 300
RUN_TIMEOUT = 900

CASBIN_MODEL = """
[request_definition]
r = sub, obj

[policy_definition]
p = sub, obj

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.sub == p.sub && r.obj == p.obj
"""

Decide = Callable[[str], bool]


# -- the workload (the same for every engine) ----------------------------------------------


def grants(n_tools: int, n_roles: int) -> list[tuple[str, str]]:
    """(role, tool) pairs: each tool granted by exact id to one role, round robin."""
    return [(f"role{i % n_roles}", tool) for i, tool in enumerate(tool_ids(n_tools))]


def probes(n_tools: int, n_roles: int) -> tuple[str, str]:
    """The timed requests: a tool in the middle of the policy granted to the user's
    second role (allowed), and the next one, granted to a role the user lacks."""
    tools = tool_ids(n_tools)
    i = n_tools // 2
    while i % n_roles != 1:
        i += 1
    return tools[i], tools[i + 1]


def sample(n_tools: int) -> list[str]:
    """Requests every engine must answer alike: some tools, and one no rule names."""
    tools = tool_ids(n_tools)
    step = max(1, n_tools // 50)
    return [*tools[::step], tools[-1], "unknown:tool"]


# -- engines (run inside the child processes) ----------------------------------------------


def d2_variants(n: int, roles: int) -> list[tuple[str, Callable[[], Decide]]]:
    import time as _time

    from d2.core import (
        InMemorySource,
        Limits,
        PermissionDeniedError,
        configure_rbac_sync,
        d2_guard,
        is_allowed,
        set_user,
    )

    name = f"peers-{n}"
    perms: dict[str, list[str]] = {}
    for role, tool in grants(n, roles):
        perms.setdefault(role, []).append(tool)
    expires = _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime(_time.time() + 86400))
    document = {
        "metadata": {"name": name, "expires": expires},
        "policies": [{"role": r, "permissions": p} for r, p in perms.items()],
    }
    set_user("alice", roles=list(USER_ROLES))

    def load() -> Decide:
        configure_rbac_sync(
            instance_name=name, source=InMemorySource(document), limits=Limits.unlimited()
        )
        return lambda tool: is_allowed(tool, instance_name=name)

    def guarded() -> Decide:
        load()
        calls: dict[str, Callable[[], bool]] = {}

        def decide(tool: str) -> bool:
            call = calls.get(tool)
            if call is None:
                call = calls[tool] = d2_guard(tool, instance_name=name)(lambda: True)
            try:
                return call()
            except PermissionDeniedError:
                return False

        return decide

    return [("D2 `is_allowed()`", load), ("D2 guarded call (raise + catch on deny)", guarded)]


def casbin_variants(n: int, roles: int) -> list[tuple[str, Callable[[], Decide]]]:
    import casbin

    lines = [list(g) for g in grants(n, roles)]

    def build(fast: bool) -> Decide:
        if fast:
            model = casbin.FastModel([0, 1])
            model.load_model_from_text(CASBIN_MODEL)
            enforcer = casbin.FastEnforcer(model, cache_key_order=[0, 1])
        else:
            model = casbin.Model()
            model.load_model_from_text(CASBIN_MODEL)
            enforcer = casbin.Enforcer(model)
        enforcer.add_policies(lines)
        enforce = enforcer.enforce
        # No role inheritance: the subject is a role; the user passes if a role does.
        return lambda tool: any(enforce(role, tool) for role in USER_ROLES)

    return [
        ("casbin `Enforcer`", lambda: build(fast=False)),
        ("casbin `FastEnforcer` (cache_key_order)", lambda: build(fast=True)),
    ]


def cedarpy_variants(n: int, roles: int) -> list[tuple[str, Callable[[], Decide]]]:
    import cedarpy

    def uid(kind: str, ident: str) -> dict[str, str]:
        return {"type": kind, "id": ident}

    role_uids = [uid("Role", f"role{r}") for r in range(roles)]
    user = {
        "uid": uid("User", "alice"),
        "attrs": {},
        "parents": [uid("Role", r) for r in USER_ROLES],
    }
    role_entities = [{"uid": r, "attrs": {}, "parents": []} for r in role_uids]
    per_grant = "\n".join(
        f'permit(principal in Role::"{role}", action == Action::"call", '
        f'resource == Tool::"{tool}");'
        for role, tool in grants(n, roles)
    )
    per_role = "\n".join(
        f'permit(principal in Role::"role{r}", action == Action::"call", '
        f'resource in Tools::"role{r}");'
        for r in range(roles)
    )
    tool_entities = [
        {"uid": uid("Tool", tool), "attrs": {}, "parents": [uid("Tools", role)]}
        for role, tool in grants(n, roles)
    ]
    sets = [{"uid": uid("Tools", f"role{r}"), "attrs": {}, "parents": []} for r in range(roles)]
    action = uid("Action", "call")
    principal = uid("User", "alice")

    def build(policies: str, entities: list[dict[str, Any]]) -> Decide:
        policy_set = cedarpy.PolicySet.from_str(policies)
        store = cedarpy.Entities.from_json_str(json.dumps(entities))
        is_authorized = cedarpy.is_authorized

        def decide(tool: str) -> bool:
            request = {
                "principal": principal,
                "action": action,
                "resource": {"type": "Tool", "id": tool},
                "context": {},
            }
            return bool(is_authorized(request, policy_set, store).allowed)

        return decide

    return [
        (
            "cedarpy, one `permit` per grant",
            lambda: build(per_grant, [user, *role_entities]),
        ),
        (
            "cedarpy, one `permit` per role (tools as entities)",
            lambda: build(per_role, [user, *role_entities, *sets, *tool_entities]),
        ),
    ]


VARIANTS = {"d2": d2_variants, "casbin": casbin_variants, "cedarpy": cedarpy_variants}


def engine_version(engine: str) -> str:
    if engine == "d2":
        from d2.core import __version__

        return f"d2-core {__version__} (this checkout)"
    from importlib import metadata

    for dist in PACKAGES[engine]:
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return "?"


def child(engine: str, quick: bool) -> dict[str, Any]:
    """Measure one engine in this process; the result as a JSON-able dict."""
    settings = Settings.make(quick, baseline=False)
    rows: list[dict[str, Any]] = []
    decisions: dict[str, dict[str, list[bool]]] = {}

    def bare(tool: str) -> bool:
        return True

    batches: dict[Any, Callable[[int], int]] = {
        "bare": lambda k: sync_batch(bare, "x", k),
    }
    for n, roles in SIZES:
        allowed, denied = probes(n, roles)
        for label, build in VARIANTS[engine](n, roles):
            loads = []
            decide: Decide | None = None
            for _ in range(1 if quick else 5):
                start = time.perf_counter_ns()
                decide = build()
                loads.append(time.perf_counter_ns() - start)
            assert decide is not None
            if not decide(allowed) or decide(denied):
                raise SystemExit(f"{label}: wrong answer for the timed requests")
            decisions.setdefault(label, {})[str(n)] = [decide(t) for t in sample(n)]
            key = (label, n)
            rows.append(
                {"label": label, "tools": n, "roles": roles, "load_ns": statistics.median(loads)}
            )
            batches[(*key, "allowed")] = lambda k, d=decide, t=allowed: sync_batch(d, t, k)
            batches[(*key, "denied")] = lambda k, d=decide, t=denied: sync_batch(d, t, k)
    times = {key: statistics.median(v) for key, v in interleaved(batches, settings).items()}
    for row in rows:
        row["allowed_ns"] = times[(row["label"], row["tools"], "allowed")]
        row["denied_ns"] = times[(row["label"], row["tools"], "denied")]
    return {
        "engine": engine,
        "version": engine_version(engine),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "bare_ns": times["bare"],
        "rows": rows,
        "decisions": decisions,
    }


# -- the parent: environment, child processes, report ------------------------------------------


def run(argv: Sequence[str], timeout: float, **kwargs: Any) -> tuple[int, str, str]:
    import subprocess

    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )
    except subprocess.TimeoutExpired:
        return 124, "", f"timed out after {timeout:.0f} s"
    except OSError as exc:
        return 127, "", str(exc)
    return done.returncode, done.stdout, done.stderr


def tail(text: str, lines: int = 2) -> str:
    return " | ".join(text.strip().splitlines()[-lines:]) or "no output"


def machine_python() -> str:
    base = getattr(sys, "_base_executable", "") or ""
    if base and os.path.exists(base):
        return base
    return shutil.which("python3") or sys.executable


def uv_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return env


def setup_peers() -> tuple[str | None, dict[str, str]]:
    """The throwaway venv's python (or None) and, per peer, why it is unavailable."""
    python = PEERS_DIR / "bin" / "python"
    missing: dict[str, str] = {}
    uv = shutil.which("uv")
    if not python.exists():
        if uv is None:
            return None, dict.fromkeys(PACKAGES, "uv not found on PATH")
        progress(f"creating {PEERS_DIR.relative_to(ROOT)} (uv venv, machine python)")
        shutil.rmtree(PEERS_DIR, ignore_errors=True)
        code, _, err = run(
            [uv, "venv", "-q", "--python", machine_python(), str(PEERS_DIR)],
            INSTALL_TIMEOUT,
            env=uv_env(),
        )
        if code != 0:
            return None, dict.fromkeys(PACKAGES, f"uv venv failed: {tail(err)}")
    for engine, names in PACKAGES.items():
        module = "casbin" if engine == "casbin" else "cedarpy"
        if run([str(python), "-c", f"import {module}"], 60)[0] == 0:
            continue
        error = "uv not found on PATH"
        for name in names if uv is not None else ():
            progress(f"installing {name} into {PEERS_DIR.relative_to(ROOT)}")
            code, _, err = run(
                [uv, "pip", "install", "-q", "--python", str(python), name],
                INSTALL_TIMEOUT,
                env=uv_env(),
            )
            if code == 0 and run([str(python), "-c", f"import {module}"], 60)[0] == 0:
                break
            error = f"uv pip install {name} failed: {tail(err)}"
        else:
            missing[engine] = error
    return str(python), missing


def measure(python: str, engine: str, quick: bool) -> dict[str, Any] | str:
    """Run the child for ``engine``; its result, or why it failed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("D2_", "PYTHON"))}
    env["D2_SILENT"] = "1"
    if engine == "d2":
        env["PYTHONPATH"] = str(ROOT / "packages" / "d2-core" / "src")
    progress(f"measuring {engine}")
    argv = [python, os.path.abspath(__file__), "--child", engine, *(["--quick"] if quick else [])]
    code, out, err = run(argv, RUN_TIMEOUT, env=env, cwd=str(ROOT))
    if code != 0:
        return f"run failed: {tail(err)}"
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def fmt_ns(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:,.2f} ms"
    if value >= 1e4:
        return f"{value / 1e3:,.1f} µs"
    return f"{value:,.0f} ns"


def report(results: dict[str, dict[str, Any] | str], missing: dict[str, str]) -> list[Table]:
    d2 = results.get("d2")
    base: dict[int, dict[str, float]] = {}
    if isinstance(d2, dict):
        for row in d2["rows"]:
            if row["label"].startswith("D2 `is_allowed"):
                base[row["tools"]] = row
    main = Table(
        "Decisions per call (medians)",
        ["engine", "policy", "allowed", "denied", "vs D2 allowed", "vs D2 denied", "load"],
        align="llrrrrr",
    )
    procs = Table("Processes", ["engine", "version", "python", "bare call"], align="lllr")
    for n, roles in SIZES:
        for engine in ENGINES:
            result = results.get(engine)
            if not isinstance(result, dict):
                why = missing.get(engine) or result or "not run"
                if n == SIZES[0][0]:
                    main.add(f"{engine}: unavailable ({why})", "", "", "", "", "", "")
                continue
            for row in (r for r in result["rows"] if r["tools"] == n):
                ref = base.get(n)
                main.add(
                    row["label"],
                    f"{n:,} tools / {roles} roles",
                    fmt_ns(row["allowed_ns"]),
                    fmt_ns(row["denied_ns"]),
                    f"{row['allowed_ns'] / ref['allowed_ns']:,.1f}x" if ref else "",
                    f"{row['denied_ns'] / ref['denied_ns']:,.1f}x" if ref else "",
                    fmt_ns(row["load_ns"]),
                )
    for engine in ENGINES:
        result = results.get(engine)
        if isinstance(result, dict):
            procs.add(engine, result["version"], result["python"], fmt_ns(result["bare_ns"]))
        else:
            procs.add(engine, "unavailable", missing.get(engine) or str(result or ""), "")
    return [main, procs]


def agree(results: dict[str, dict[str, Any] | str]) -> list[str]:
    """Engines whose sampled answers differ from D2's (a broken comparison)."""
    d2 = results.get("d2")
    if not isinstance(d2, dict):
        return []
    reference = d2["decisions"]["D2 `is_allowed()`"]
    wrong = []
    for result in results.values():
        if not isinstance(result, dict):
            continue
        for label, answers in result["decisions"].items():
            if answers != reference:
                wrong.append(label)
    return wrong


def write_docs(markdown: str, path: Path) -> None:
    text = path.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{path}: markers {BEGIN} / {END} not found")
    path.write_text(text[: start + len(BEGIN)] + "\n" + markdown + "\n" + text[end:])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few short batches")
    parser.add_argument("--output", type=Path, help="markdown file to write the tables to")
    parser.add_argument(
        "--no-docs", action="store_true", help=f"do not update {DOCS.relative_to(ROOT)}"
    )
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.quick)))
        return 0

    started = time.perf_counter()
    python, missing = setup_peers()
    results: dict[str, dict[str, Any] | str] = {}
    for engine in ENGINES:
        if engine in missing:
            progress(f"{engine} unavailable: {missing[engine]}")
            continue
        results[engine] = measure(python or machine_python(), engine, args.quick)
    wrong = agree(results)
    tables = report(results, missing)
    settings = Settings.make(args.quick, baseline=False)
    elapsed = time.perf_counter() - started
    header = (
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}; "
        f"{settings.batches} batches of ~{settings.batch_ns / 1e6:g} ms per figure; "
        f"run took {elapsed:.0f} s"
    )
    print(header)
    for table in tables:
        print()
        print(table.text())
    if wrong:
        print(f"\nERROR: answers differ from D2's: {', '.join(wrong)}", file=sys.stderr)
        return 1
    markdown = "\n\n".join(t.markdown() for t in tables)
    markdown = f"<!-- {header}; generated by benchmarks/peers.py -->\n\n{markdown}"
    if args.output is not None:
        args.output.write_text(markdown + "\n")
    if not args.quick and not args.no_docs:
        write_docs(markdown, DOCS)
        progress(f"updated {DOCS.relative_to(ROOT)}")
    failed = [e for e, r in results.items() if isinstance(r, str)]
    for engine in failed:
        print(f"{engine}: {results[engine]}", file=sys.stderr)
    return 1 if "d2" in failed else 0


if __name__ == "__main__":
    sys.exit(main())
