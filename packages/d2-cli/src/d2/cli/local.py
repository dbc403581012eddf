"""Commands that read a policy: ``inspect``, ``diagnose`` and ``check``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from .describe import AUDIT_MODE, audited_rules, describe, render
from .diagnose import ERROR, WARN, diagnose_policy, shadowing
from .evaluation import NOT_GIVEN, Call, Scenario, evaluate, parse_args, trace_rows, with_defaults
from .loading import discover, load_in_force, local_policy_path
from .options import AppNameOption, JsonOption, PolicyOption, ScanPathOption
from .output import FAILED, OK, CliError, Output, run_command
from .scan import scan

__all__ = ["check", "diagnose_command", "inspect", "trace_table"]

_STATUS_STYLE = {"ok": "green", "warn": "yellow", "error": "bold red"}


def inspect(
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Expand groups; show full conditions."),
    ] = False,
    policy: PolicyOption = None,
    local: Annotated[
        bool, typer.Option("--local", help="Inspect the local file even when D2_TOKEN is set.")
    ] = False,
    app_name: AppNameOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the policy in force (local file, or the cloud bundle with D2_TOKEN):
    roles x tools, groups, guardrails, sequences, expiry and version."""

    def body(out: Output) -> int:
        view = load_in_force(policy, local=local, app_name=app_name)
        data = describe(view, verbose=verbose)
        render(out, data, verbose=verbose)
        out.emit(data)
        return FAILED if view.problems else OK

    run_command(as_json, body)


def diagnose_command(
    path: ScanPathOption = Path("."),
    policy: PolicyOption = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail (exit 1) on warnings too (drift, near limits).")
    ] = False,
    no_scan: Annotated[
        bool, typer.Option("--no-scan", help="Skip the code scan (no drift checks).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Check the local policy: validation errors with their paths, the local
    limits (size, tool count, expiry) and drift between the code and the policy."""

    def body(out: Output) -> int:
        target = local_policy_path(policy)
        if not no_scan and not path.exists():
            raise CliError(f"--path {path} does not exist")
        findings, compiled = diagnose_policy(target, None if no_scan else path)
        found = discover()
        findings = shadowing(found, target) + findings  # first: which file the runtime reads
        errors = sum(f.status == ERROR for f in findings)
        warnings = sum(f.status == WARN for f in findings)
        audit = compiled is not None and compiled.audit
        if audit:
            out.line(AUDIT_MODE, style="bold yellow")
            out.warn(f"{target} is in audit mode: nothing is enforced")
        table = Table(title=f"d2 diagnose {target}", title_justify="left")
        for column in ("check", "status", "result"):
            table.add_column(column)
        for f in findings:
            table.add_row(
                Text(f.check), Text(f.status, style=_STATUS_STYLE[f.status]), Text(f.message)
            )
        out.print(table)
        for f in findings:
            if f.details:
                out.line(f"{f.check}:", style=_STATUS_STYLE[f.status])
                for detail in f.details:
                    out.line(f"  - {detail}")
        passed = not errors and not (strict and warnings)
        verdict = f"{errors} errors, {warnings} warnings"
        if passed:
            out.success(f"passed ({verdict})")
        else:
            out.line(f"failed ({verdict})", style="bold red")
        out.emit(
            {
                "ok": passed,
                "policy": str(target),
                **{k: v for k, v in found.as_dict().items() if k != "problem"},
                "errors": errors,
                "warnings": warnings,
                "findings": [f.as_dict() for f in findings],
                "mode": compiled.mode if compiled is not None else None,
                "audited": audited_rules(compiled) if compiled is not None else [],
            }
        )
        return OK if passed else FAILED

    run_command(as_json, body)


def check(
    tool: Annotated[str, typer.Argument(help="The tool id to decide.")],
    role: Annotated[
        list[str] | None, typer.Option("--role", "-r", help="A role of the user (repeatable).")
    ] = None,
    arg: Annotated[
        list[str] | None,
        typer.Option("--arg", "-a", help="An argument NAME=VALUE (JSON when it parses)."),
    ] = None,
    call: Annotated[
        list[str] | None,
        typer.Option("--call", help="A tool called earlier in the request (repeatable)."),
    ] = None,
    fact: Annotated[
        list[str] | None,
        typer.Option("--fact", help="A data-flow label recorded earlier (repeatable)."),
    ] = None,
    user: Annotated[str, typer.Option("--user", help="The user id.")] = "d2-cli-user",
    policy: PolicyOption = None,
    local: Annotated[
        bool, typer.Option("--local", help="Use the local file even when D2_TOKEN is set.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Decide a call and explain why, without running anything (exit 0 allowed,
    1 denied)."""

    def body(out: Output) -> int:
        if not role:
            raise CliError("give the user's roles with --role (repeatable)")
        view = load_in_force(policy, local=local)
        for problem in view.problems:
            out.warn(f"this policy is not in force ({problem}): every call is denied")
        scenario = Scenario(
            roles=tuple(role),
            call=Call(tool, parse_args(arg or [])),
            user=user,
            facts=tuple(fact or ()),
            calls=tuple(Call(c) for c in call or ()),
        )
        filled: dict[str, Any] = {}
        not_given: list[str] = []
        if not view.problems:
            scenario, filled, not_given = with_defaults(
                view.policy, scenario, lambda: scan(Path("."))
            )
        outcome = evaluate(view.policy, scenario, view.problems)
        decision = outcome.decision
        for name, value in filled.items():
            out.note(f"argument {name!r} not given: using the function's default {value!r}")
        undecided = decision.allowed and bool(not_given)
        _show_decision(out, scenario, outcome.earlier, decision, not_given if undecided else [])
        allowed: bool | None = None if undecided else decision.allowed
        out.emit(
            {
                "ok": bool(allowed),
                "allowed": allowed,
                "reason": "argument_not_given" if undecided else decision.reason,
                "not_given": dict.fromkeys(not_given, NOT_GIVEN),
                "defaults_used": filled,
                "message": str(decision.error) if decision.error else None,
                "grant_path": decision.grant_path,
                "tool": tool,
                "roles": list(scenario.roles),
                "args": scenario.call.args,
                "earlier": [
                    {"tool": c.tool, "allowed": r is None, "reason": r} for c, r in outcome.earlier
                ],
                "trace": trace_rows(decision),
                "policy": view.source,
            }
        )
        return OK if allowed else FAILED

    run_command(as_json, body)


def trace_table(rows: list[dict[str, Any]]) -> Table:
    """A decision trace as a table."""
    table = Table(show_header=True, title_justify="left")
    for column in ("step", "outcome", "detail", "rule"):
        table.add_column(column)
    for row in rows:
        style = "green" if row["outcome"] == "pass" else "bold red"
        table.add_row(
            Text(row["step"]),
            Text(row["outcome"], style=style),
            Text(row["detail"]),
            Text(row["path"] or "", style="dim"),
        )
    return table


def _show_decision(
    out: Output, scenario: Scenario, earlier: Any, decision: Any, not_given: list[str]
) -> None:
    for c, reason in earlier:
        out.line(
            f"earlier call {c.tool}: "
            + ("allowed (recorded)" if reason is None else f"denied ({reason}), not recorded"),
            style="dim",
        )
    if not_given:
        out.line(f"UNDECIDED  {scenario.call.tool}", style="bold yellow")
        for name in not_given:
            out.line(f"argument {name!r} {NOT_GIVEN}; pass --arg {name}=VALUE to decide")
    elif decision.allowed:
        out.line(f"ALLOWED  {scenario.call.tool}", style="bold green")
        if decision.grant_path:
            out.line(f"granted by {decision.grant_path}", style="dim")
    else:
        out.line(f"DENIED  {scenario.call.tool}  ({decision.reason})", style="bold red")
        if decision.error is not None:
            out.line(str(decision.error))
    out.print(trace_table(trace_rows(decision)))
