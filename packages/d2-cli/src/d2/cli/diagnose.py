"""What ``d2 diagnose`` checks in a local policy: validation (every error with its
path), the local limits (size, tool count, expiry), and the drift between the
code and the policy (guarded tools nothing grants, grants no code guards, input
conditions naming parameters the function does not have)."""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from d2.core.errors import InvalidPolicyError
from d2.core.limits import Limits
from d2.core.policy.compile import compile_policy
from d2.core.policy.load import parse_document, read_policy_bytes
from d2.core.policy.model import CompiledPolicy

from .describe import AUDIT_MODE, audited_rules, duration, rfc3339
from .loading import Discovery, same_file
from .scan import ScanResult, scan

__all__ = [
    "ERROR",
    "OK",
    "WARN",
    "Finding",
    "diagnose",
    "diagnose_policy",
    "rollout",
    "shadowing",
]

OK, WARN, ERROR = "ok", "warn", "error"


@dataclass
class Finding:
    """One check: its name, ``status`` (``ok``, ``warn``, ``error``), a message
    and detail lines."""

    check: str
    status: str
    message: str
    details: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "check": self.check,
            "status": self.status,
            "message": self.message,
            "details": self.details,
        }


def _limits(policy: CompiledPolicy, limits: Limits, now: float) -> list[Finding]:
    out = []
    count, most = policy.tool_count, limits.max_tools
    status = ERROR if count > most else WARN if count >= 0.8 * most else OK
    out.append(
        Finding(
            "tool count",
            status,
            f"{count} / {most} tools"
            + (
                ": over the local limit; use prefix wildcards ('billing:*') or cloud mode"
                if status == ERROR
                else " (close to the local limit)"
                if status == WARN
                else ""
            ),
        )
    )
    exp = policy.expires_at
    if exp == float("inf"):
        out.append(Finding("expiry", ERROR, "no metadata.expires; local policies need one"))
    elif exp <= now:
        out.append(
            Finding("expiry", ERROR, f"expired at {rfc3339(exp)} ({duration(now - exp)} ago)")
        )
    elif exp - now > limits.max_expiry_seconds:
        out.append(
            Finding(
                "expiry",
                ERROR,
                f"expires at {rfc3339(exp)}, more than "
                f"{limits.max_expiry_seconds / 86400:g} days ahead (the local limit)",
            )
        )
    elif exp - now < 86400:
        out.append(Finding("expiry", WARN, f"expires in {duration(exp - now)}: renew it soon"))
    else:
        out.append(Finding("expiry", OK, f"expires at {rfc3339(exp)} (in {duration(exp - now)})"))
    return out


def rollout(policy: CompiledPolicy) -> list[Finding]:
    """Warnings about what the policy does not enforce: audit mode (everything),
    and the rules marked ``audit: true``, by path. None for a policy without."""
    audited = audited_rules(policy)
    if policy.audit:
        return [Finding("mode", WARN, AUDIT_MODE, [f"audited rule: {p}" for p in audited])]
    if audited:
        n = len(audited)
        return [
            Finding(
                "audited rules",
                WARN,
                f"{n} rule{'s are' if n != 1 else ' is'} audited (audit: true): recorded "
                "as would_deny, never enforced",
                audited,
            )
        ]
    return []


def _explicitly_granted(policy: CompiledPolicy, tool: str) -> bool:
    return any(g.allow and g.pattern != "*" for g in policy.rules_for(tool, remember=False).grants)


def _drift(policy: CompiledPolicy, found: ScanResult) -> list[Finding]:
    out = []
    if found.problems:
        out.append(Finding("scan", WARN, "some code could not be read", list(found.problems)))
    guarded = found.by_id()
    if not guarded:
        out.append(
            Finding(
                "guarded tools",
                WARN,
                f"no guarded functions found under {found.root} ({found.files} Python files); "
                "pass --path with your project's root",
            )
        )
        return out
    ungranted = []
    for tool, places in sorted(guarded.items()):
        where = ", ".join(p.where for p in places[:3])
        if not policy.rules_for(tool, remember=False).known:
            ungranted.append(f"{tool} ({where}): no entry names it; every call is denied")
        elif not _explicitly_granted(policy, tool):
            ungranted.append(f"{tool} ({where}): only '*' grants it")
    out.append(
        Finding(
            "guarded tools",
            WARN if ungranted else OK,
            f"{len(ungranted)} of {len(guarded)} guarded tools have no grant of their own"
            if ungranted
            else f"all {len(guarded)} guarded tools are granted",
            ungranted,
        )
    )
    stale = []
    for tool in sorted(policy.concrete_tools - guarded.keys()):
        close = difflib.get_close_matches(tool, list(guarded), n=1)
        stale.append(f"{tool}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    for pattern in sorted(policy.patterns):
        if not any(t.startswith(pattern[:-1]) for t in guarded):
            stale.append(f"{pattern} (matches no guarded tool)")
    out.append(
        Finding(
            "granted tools",
            WARN if stale else OK,
            f"{len(stale)} granted tools are guarded by no code under {found.root}"
            if stale
            else "every tool the policy names is guarded in the code",
            stale,
        )
    )
    out.append(_arguments(policy, guarded))
    return out


def _arguments(policy: CompiledPolicy, guarded: dict[str, list[Any]]) -> Finding:
    bad = []
    for entry in policy.entries:
        for grant in entry.grants:
            if not grant.input:
                continue
            tools = (
                policy.groups.get(grant.pattern[1:], ())
                if grant.pattern.startswith("@")
                else (grant.pattern,)
            )
            for tool in tools:
                for fn in guarded.get(tool, ()):
                    if not fn.signature_known or fn.var_keyword:
                        continue
                    for name, _ in grant.input:
                        if name not in fn.params:
                            bad.append(
                                f"{grant.path}.conditions.input.{name}: {tool} ({fn.where}) has "
                                f"no parameter {name!r} (it has: {', '.join(fn.params) or 'none'})"
                            )
    return Finding(
        "input conditions",
        ERROR if bad else OK,
        f"{len(bad)} input conditions name parameters the tool does not have"
        if bad
        else "input conditions name real parameters",
        bad,
    )


def shadowing(found: Discovery, target: Path) -> list[Finding]:
    """Policy files local-mode discovery passes over (a ``./policy.yaml`` behind
    the config directory's, everything behind ``D2_POLICY_FILE``...): a warning
    naming the file in force and each file not read. None when only one exists."""
    if found.in_force is None:
        if found.problem is None or not found.problem.startswith("D2_POLICY_FILE"):
            return []  # no policy file at all: the file diagnosed was named explicitly
        return [Finding("policy in force", WARN, found.problem, _not_read(found))]
    if not found.shadowed:
        return []
    in_force = found.in_force
    if same_file(target, in_force):
        message = f"{in_force} is in force; not read: " + ", ".join(
            str(p) for p, _ in found.shadowed
        )
    elif found.is_shadowed(target):
        message = f"{target} is not read: the runtime reads {in_force} instead"
    else:
        message = f"{target} is not the file in force: the runtime reads {in_force}" + (
            "; not read: " + ", ".join(str(p) for p, _ in found.shadowed)
        )
    where = f"{in_force}: in force (found in {found.origin})"
    if found.origin == "D2_POLICY_FILE":
        where = f"{in_force}: in force (named by D2_POLICY_FILE)"
    return [Finding("policy files", WARN, message, [where, *_not_read(found)])]


def _not_read(found: Discovery) -> list[str]:
    return [f"{path}: not read ({why})" for path, why in found.shadowed]


def diagnose(
    path: Path, scan_root: Path | None, limits: Limits | None = None, now: float | None = None
) -> list[Finding]:
    """Every finding for the policy file at ``path`` (drift against the code under
    ``scan_root``, when given)."""
    return diagnose_policy(path, scan_root, limits, now)[0]


def diagnose_policy(
    path: Path, scan_root: Path | None, limits: Limits | None = None, now: float | None = None
) -> tuple[list[Finding], CompiledPolicy | None]:
    """:func:`diagnose`, and the compiled policy (``None`` when it is invalid)."""
    limits = limits or Limits()
    now = time.time() if now is None else now
    data = read_policy_bytes(str(path), Limits(max_bytes=64 * 1024 * 1024))
    size_status = ERROR if len(data) > limits.max_bytes else OK
    findings = [Finding("size", size_status, f"{len(data)} / {limits.max_bytes} bytes")]
    try:
        policy = compile_policy(parse_document(data, str(path)), source=str(path), raw=data)
    except InvalidPolicyError as exc:
        findings.append(
            Finding("validation", ERROR, f"{len(exc.errors)} problems", list(exc.errors))
        )
        return findings, None
    findings.append(
        Finding(
            "validation", OK, f"valid: {len(policy.roles)} roles, {len(policy.entries)} entries"
        )
    )
    findings.extend(rollout(policy))
    findings.extend(_limits(policy, limits, now))
    if scan_root is not None:
        findings.extend(_drift(policy, scan(scan_root)))
    return findings, policy
