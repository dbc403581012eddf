"""``d2 replay``: what a candidate policy would change, replayed on a decision log.

Every recorded call is decided again under the candidate by d2-core's evaluator
(:mod:`d2.core.replay`); the calls whose decision or reason differ are printed,
grouped by tool and roles, with a few examples each.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .documents import read_document
from .options import JsonOption
from .output import FAILED, OK, USAGE, CliError, Output, run_command

if TYPE_CHECKING:
    from d2.core.policy.model import CompiledPolicy
    from d2.core.replay import Change, ReplayReport

__all__ = ["change_groups", "load_candidate", "replay", "report_json"]

EXAMPLES = 3  # example records shown per group


def load_candidate(path: Path) -> CompiledPolicy:
    """The candidate policy at ``path`` (YAML or JSON), validated and compiled.
    Its local limits (``metadata.expires`` within 7 days, size, tool count) do not
    apply: a replay reviews a policy, it does not put it in force. An invalid
    document is a usage error listing each problem with its path."""
    from d2.core.errors import InvalidPolicyError
    from d2.core.policy.compile import compile_policy

    try:
        document, raw = read_document(path)
        return compile_policy(document, source=str(path), raw=raw)
    except InvalidPolicyError as exc:
        raise CliError(
            f"invalid candidate policy {exc.source} ({len(exc.errors)} problem"
            f"{'s' if len(exc.errors) != 1 else ''})",
            code=USAGE,
            details=exc.errors,
            hint="fix each path listed above, then replay again",
        ) from None


def _read(path: Path) -> list[dict[str, Any]]:
    from d2.core.errors import ConfigurationError
    from d2.core.replay import read_log

    try:
        return read_log(path)
    except ConfigurationError as exc:
        raise CliError(
            str(exc),
            hint="give the JSON Lines file written by configure_rbac_*(decision_log=...)",
        ) from None


def change_groups(changes: Sequence[Change]) -> list[tuple[str, tuple[str, ...], list[Change]]]:
    """``changes`` grouped by (tool id, roles of the user): the largest group
    first, then by tool id; each group keeps log order."""
    groups: dict[tuple[str, tuple[str, ...]], list[Change]] = {}
    for change in changes:
        groups.setdefault((change.tool_id, change.roles), []).append(change)
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    return [(tool, roles, found) for (tool, roles), found in ordered]


def report_json(report: ReplayReport) -> dict[str, Any]:
    """What ``--json`` prints: ``records``, ``changed`` and each change's
    ``tool_id``, ``user_id``, ``before``, ``after`` and ``reason``."""
    return {
        "records": report.records,
        "changed": report.changed,
        "changes": [
            {
                "tool_id": c.tool_id,
                "user_id": c.user_id,
                "before": c.before,
                "after": c.after,
                "reason": c.reason,
            }
            for c in report.changes
        ],
    }


def _decision(decision: str, reason: str | None) -> str:
    return f"{decision} ({reason})" if reason else decision


def _transitions(found: Sequence[Change]) -> str:
    counts: dict[str, int] = {}
    for c in found:
        key = f"{c.before} -> {c.after}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{key}: {n}" for key, n in counts.items())


def _summary(report: ReplayReport, source: str) -> str:
    text = (
        f"replayed {report.records} record{'s' * (report.records != 1)} against {source}: "
        f"{report.changed} would change, {report.unchanged} unchanged, {report.skipped} skipped"
    )
    if report.skip_reasons:
        text += " (" + ", ".join(f"{why}: {n}" for why, n in report.skip_reasons.items()) + ")"
    return text


def _render(out: Output, report: ReplayReport, source: str) -> None:
    if not report.changes:
        out.success("no recorded call would change")
    for tool, roles, found in change_groups(report.changes):
        n = len(found)
        out.line(
            f"{tool}  roles [{', '.join(roles) or 'none'}]: {n} change{'s' * (n != 1)} "
            f"({_transitions(found)})",
            style="bold",
        )
        for c in found[:EXAMPLES]:
            line = (
                f"  user {c.user_id}  request {c.request_id or '-'}: "
                f"{_decision(c.before, c.before_reason)} -> {_decision(c.after, c.reason)}"
            )
            if c.rule:
                line += f"  rule {c.rule}"
            out.line(line)
        if n > EXAMPLES:
            out.line(f"  ... and {n - EXAMPLES} more", style="dim")
    out.line(_summary(report, source), style="bold yellow" if report.changes else "green")


def replay(
    log: Annotated[
        Path,
        typer.Option(
            "--log",
            help="The decision log (JSON Lines) written by configure_rbac_*(decision_log=...).",
            dir_okay=False,
        ),
    ],
    policy: Annotated[
        Path,
        typer.Option(
            "--policy",
            help="The candidate policy file (YAML or JSON); its expiry is not checked.",
            dir_okay=False,
        ),
    ],
    fail_on_change: Annotated[
        bool,
        typer.Option("--fail-on-change", help="Exit 1 when some recorded call would change."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Replay a decision log against a candidate policy and show which recorded
    calls it would decide differently (exit 0; 1 with --fail-on-change when
    something changes; 2 for a bad log or candidate)."""

    def body(out: Output) -> int:
        from d2.core.replay import replay as run_replay

        candidate = load_candidate(policy)
        records = _read(log)
        if candidate.audit:
            out.note("the candidate is in audit mode: its denials show as would_deny")
        report = run_replay(records, candidate)
        _render(out, report, str(policy))
        for what, n in report.notes.items():  # stderr, also with --json
            out.warn(f"judged in part: {n} record{'s' * (n != 1)}: {what}")
        out.emit(report_json(report))
        return FAILED if fail_on_change and report.changed else OK

    run_command(as_json, body)
