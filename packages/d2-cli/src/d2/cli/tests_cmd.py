"""``d2 test``: policy unit tests, like ``opa test``.

A test file (``*_test.yaml``, ``*_test.yml`` or ``*_test.json``) names a policy and
lists cases::

    policy: ../policy.yaml          # relative to this file; or an inline document
    cases:
      - name: analysts read billing
        roles: [analyst]
        tool: billing:read
        args: {customer_id: c_1}    # optional keyword arguments
        calls: [db.read_users]      # optional earlier calls: ids or {tool, args}
        facts: [SENSITIVE]          # optional data-flow labels recorded earlier
        user: alice                 # optional
        expect: deny                # allow | deny
        reason: sequence_violation  # optional: the denial reason expected

Each case is decided without running anything (``d2 check``'s evaluator). Tests
check the rules, not the clock: ``metadata.expires`` is ignored here (``d2
diagnose`` checks it). A failing case prints its trace.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from d2.core.errors import BundleExpiredError, D2Error, InvalidPolicyError
from d2.core.limits import Limits
from d2.core.policy.compile import compile_policy
from d2.core.policy.load import check_limits, parse_document
from d2.core.policy.model import CompiledPolicy
from rich.text import Text

from .evaluation import NOT_GIVEN, Call, Scenario, evaluate, trace_rows, with_defaults
from .loading import load_file, local_policy_path, without_expiry
from .options import JsonOption, PolicyOption
from .output import FAILED, OK, USAGE, CliError, Output, from_d2_error, run_command
from .scan import ScanResult, scan

__all__ = ["Case", "PolicyTests", "find_suites", "parse_suite", "run_tests"]

_SUFFIXES = ("_test.yaml", "_test.yml", "_test.json")
_FILE_KEYS = frozenset({"policy", "cases", "description"})
_CASE_KEYS = frozenset(
    {"name", "roles", "tool", "args", "calls", "facts", "user", "expect", "reason", "description"}
)
_SKIP = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__", "site-packages"})


@dataclass(frozen=True)
class Case:
    """One test case: a scenario and what it should decide."""

    name: str
    scenario: Scenario
    expect: str
    reason: str | None = None


@dataclass
class PolicyTests:
    """A parsed test file: its ``policy`` (a path or an inline document) and cases."""

    path: Path
    policy: Path | Mapping[str, Any] | None
    cases: list[Case] = field(default_factory=list)


def find_suites(paths: list[Path]) -> list[Path]:
    """Test files among ``paths`` (files are taken as they are, directories searched)."""
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            for directory, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIP)
                found.extend(Path(directory, n) for n in sorted(filenames) if n.endswith(_SUFFIXES))
        else:
            raise CliError(f"no such file or directory: {path}")
    return found


def _strings(value: Any, where: str, errors: list[str]) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
        errors.append(f"{where}: expected a string or a list of strings")
        return ()
    return tuple(items)


def _args(value: Any, where: str, errors: list[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        errors.append(f"{where}: expected a mapping of argument name -> value")
        return {}
    return {str(k): v for k, v in value.items()}


def _calls(value: Any, where: str, errors: list[str]) -> tuple[Call, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        errors.append(f"{where}: expected a list of tool ids or {{tool, args}} mappings")
        return ()
    calls = []
    for i, item in enumerate(value):
        if isinstance(item, str) and item:
            calls.append(Call(item))
        elif isinstance(item, Mapping) and isinstance(item.get("tool"), str):
            calls.append(Call(item["tool"], _args(item.get("args"), f"{where}[{i}].args", errors)))
        else:
            errors.append(f"{where}[{i}]: expected a tool id or {{tool, args}}")
    return tuple(calls)


def _case(raw: Any, where: str, errors: list[str]) -> Case | None:
    if not isinstance(raw, Mapping):
        errors.append(f"{where}: expected a mapping (name, roles, tool, expect, ...)")
        return None
    before = len(errors)
    errors.extend(f"{where}.{k}: unknown key" for k in raw if k not in _CASE_KEYS)
    name = raw.get("name", where)
    tool = raw.get("tool")
    if not isinstance(tool, str) or not tool:
        errors.append(f"{where}.tool: expected a tool id")
    expect = raw.get("expect")
    if expect not in ("allow", "deny"):
        errors.append(f"{where}.expect: expected 'allow' or 'deny', got {expect!r}")
    reason = raw.get("reason")
    if reason is not None and (not isinstance(reason, str) or expect != "deny"):
        errors.append(f"{where}.reason: a denial reason (a string) goes with expect: deny")
    user = raw.get("user", "d2-test-user")
    if not isinstance(user, str) or not user:
        errors.append(f"{where}.user: expected a user id (string)")
    roles = _strings(raw.get("roles", []), f"{where}.roles", errors) if raw.get("roles") else ()
    scenario = Scenario(
        roles=roles,
        call=Call(str(tool), _args(raw.get("args"), f"{where}.args", errors)),
        user=str(user),
        facts=_strings(raw["facts"], f"{where}.facts", errors) if raw.get("facts") else (),
        calls=_calls(raw.get("calls"), f"{where}.calls", errors),
    )
    if len(errors) > before:
        return None
    return Case(str(name), scenario, str(expect), reason)


def parse_suite(path: Path) -> PolicyTests:
    """Read and check a test file; a usage error listing every problem with its path."""
    try:
        document = parse_document(path.read_bytes(), str(path))
    except InvalidPolicyError as exc:
        raise CliError(f"{path}: not a test file", details=exc.errors) from None
    errors: list[str] = []
    if not isinstance(document, Mapping):
        raise CliError(f"{path}: expected a mapping with 'cases'")
    errors.extend(f"{k}: unknown key" for k in document if k not in _FILE_KEYS)
    raw_policy = document.get("policy")
    policy: Path | Mapping[str, Any] | None = None
    if isinstance(raw_policy, str):
        policy = (path.parent / raw_policy).resolve()
    elif isinstance(raw_policy, Mapping):
        policy = raw_policy
    elif raw_policy is not None:
        errors.append("policy: expected a path (relative to this file) or an inline document")
    raw_cases = document.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        errors.append("cases: expected a non-empty list of cases")
        raw_cases = []
    cases = [_case(raw, f"cases[{i}]", errors) for i, raw in enumerate(raw_cases)]
    if errors:
        raise CliError(f"{path}: invalid test file", details=errors)
    return PolicyTests(path, policy, [c for c in cases if c is not None])


def _not_in_force(policy: CompiledPolicy) -> list[str]:
    """Why local mode would refuse to load the inline ``policy`` (tool count); its
    expiry is left out on purpose (tests must not start failing when it expires)."""
    limits = Limits()
    problems = []
    try:
        check_limits(policy, limits, time.time())
    except BundleExpiredError:
        pass
    except D2Error as exc:
        problems.append(str(exc))
    return problems


class _Policies:
    """Compiled policies by source, loaded once, with why each would not load."""

    def __init__(self, override: Path | None) -> None:
        self.override = override
        self.cache: dict[str, tuple[CompiledPolicy, list[str]]] = {}

    def get(self, test: PolicyTests) -> tuple[str, CompiledPolicy, list[str]]:
        spec = self.override or test.policy or local_policy_path()
        if isinstance(spec, Mapping):
            source = f"{test.path}:policy"
            compiled = compile_policy(without_expiry(spec), source=source)
            return source, compiled, _not_in_force(compiled)
        source = str(spec)
        if source not in self.cache:  # read as every command reads it: the same digest
            view = load_file(Path(spec), origin="file", check_expiry=False)
            self.cache[source] = (view.policy, view.problems)
        return source, *self.cache[source]


def _run_case(
    policy: CompiledPolicy, case: Case, problems: list[str], scanned: Callable[[], ScanResult]
) -> dict[str, Any]:
    scenario = case.scenario
    filled: dict[str, Any] = {}
    not_given: list[str] = []
    if not problems:
        scenario, filled, not_given = with_defaults(policy, scenario, scanned)
    outcome = evaluate(policy, scenario, problems)
    decision = outcome.decision
    got = "allow" if decision.allowed else "deny"
    reason = decision.reason
    message = str(decision.error) if decision.error else None
    if decision.allowed and not_given:  # the function's default decides: not known here
        got, reason = "undecided", "argument_not_given"
        message = "; ".join(f"argument {n!r} {NOT_GIVEN}" for n in not_given)
    passed = got == case.expect and (case.reason is None or case.reason == reason)
    return {
        "name": case.name,
        "passed": passed,
        "expect": case.expect,
        "expected_reason": case.reason,
        "got": got,
        "reason": reason,
        "message": message,
        "defaults_used": filled,
        "earlier": [
            {"tool": c.tool, "allowed": r is None, "reason": r} for c, r in outcome.earlier
        ],
        "trace": trace_rows(decision),
    }


def _show_case(out: Output, result: Mapping[str, Any], verbose: bool) -> None:
    from .local import trace_table

    if result["passed"]:
        out.print(Text.assemble(("  PASS  ", "bold green"), result["name"]))
    else:
        want = result["expect"] + (
            f" ({result['expected_reason']})" if result["expected_reason"] else ""
        )
        got = result["got"] + (f" ({result['reason']})" if result["reason"] else "")
        out.print(
            Text.assemble(("  FAIL  ", "bold red"), result["name"], f": expected {want}, got {got}")
        )
    if verbose or not result["passed"]:
        for e in result["earlier"]:
            state = "allowed" if e["allowed"] else f"denied ({e['reason']}), not recorded"
            out.line(f"        earlier call {e['tool']}: {state}", style="dim")
        if result["message"]:
            out.line(f"        {result['message']}", style="dim")
        out.print(trace_table(result["trace"]))


def run_tests(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Test files or directories (default: the current directory)."),
    ] = None,
    policy: PolicyOption = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Print the trace of passing cases too.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Run policy unit tests (*_test.yaml files): exit 0 when all pass, 1 when one
    fails, 2 when a test file is malformed or none is found."""

    def body(out: Output) -> int:
        files = find_suites(paths or [Path(".")])
        if not files:
            raise CliError(
                "no policy test files found (*_test.yaml, *_test.yml, *_test.json)",
                hint="pass test files or directories; see `d2 test --help`",
            )
        policies = _Policies(policy)
        found: list[ScanResult] = []

        def scanned() -> ScanResult:  # the guarded functions, for their defaults
            if not found:
                found.append(scan(Path(".")))
            return found[0]

        reports: list[dict[str, Any]] = []
        problems: list[dict[str, Any]] = []
        code = OK
        for path in files:
            out.line(str(path), style="bold")
            try:
                suite = parse_suite(path)
                source, compiled, not_in_force = policies.get(suite)
            except CliError as exc:
                if not out.json:
                    out.fail(exc)
                problems.append({"file": str(path), **exc.as_dict()})
                code = max(code, exc.code)
                continue
            except InvalidPolicyError as exc:
                error = from_d2_error(exc)
                if not out.json:
                    out.fail(error)
                problems.append({"file": str(path), **error.as_dict()})
                code = max(code, error.code)
                continue
            out.line(f"  policy {source}  digest {compiled.digest[:12]}", style="dim")
            for problem in not_in_force:
                out.warn(f"{source} is not in force ({problem}): every call is denied")
            results = [_run_case(compiled, c, not_in_force, scanned) for c in suite.cases]
            for result in results:
                _show_case(out, result, verbose)
            reports.append(
                {
                    "file": str(path),
                    "policy": source,
                    "digest": compiled.digest,
                    "cases": results,
                }
            )
        passed = sum(r["passed"] for f in reports for r in f["cases"])
        failed_count = sum(not r["passed"] for f in reports for r in f["cases"])
        if failed_count:
            code = max(code, FAILED)
        summary = f"{passed} passed, {failed_count} failed, {len(files)} files"
        if problems:
            summary += f", {len(problems)} files with errors"
        out.line(summary, style="bold green" if code == OK else "bold red")
        out.emit(
            {
                "ok": code == OK,
                "passed": passed,
                "failed": failed_count,
                "errors": problems,
                "files": reports,
            }
        )
        return code if code in (OK, FAILED, USAGE) else USAGE

    run_command(as_json, body)
