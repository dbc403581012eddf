"""A policy, described: roles x tools, groups, guardrails, sequences, data flow,
expiry and version, as plain data (``--json``) and as rich tables."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from d2.core.policy.model import CompiledPolicy
from rich.table import Table
from rich.text import Text

from .output import Output

__all__ = [
    "AUDIT_MODE",
    "PolicyView",
    "at_path",
    "audited_rules",
    "describe",
    "duration",
    "render",
    "rfc3339",
]

_DENY, _ALLOW, _CONDITIONAL = "deny", "allow", "conditional"
_RANK = {_CONDITIONAL: 1, _ALLOW: 2, _DENY: 3}  # an explicit deny overrides every grant
_STYLE = {_ALLOW: "green", _CONDITIONAL: "yellow", _DENY: "bold red"}
_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
AUDIT_MODE = (
    "AUDIT MODE: this policy enforces nothing; calls it would deny run anyway and "
    "are only recorded as would_deny (metadata.mode: audit)"
)


@dataclass
class PolicyView:
    """A loaded policy and where it came from. ``origin`` is ``local``, ``cloud``
    or ``file``; ``version`` the bundle version (cloud) or ``metadata.version``;
    ``problems`` say why it is not in force (expired, over the local limits)."""

    policy: CompiledPolicy
    origin: str
    source: str
    version: int | str | None = None
    problems: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def rfc3339(ts: float) -> str:
    """Seconds since the epoch as RFC 3339 UTC text."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def duration(seconds: float) -> str:
    """``3d 4h``, ``5h 10m``, ``42s``: a rough human duration."""
    s = int(abs(seconds))
    days, hours, minutes = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m" if minutes else f"{s}s"


def at_path(document: Any, path: str) -> Any:
    """The value at ``path`` (``policies[1].permissions[0]``) in ``document``,
    ``None`` when it is not there."""
    node = document
    for name, index in _SEGMENT.findall(path):
        if name:
            node = node.get(name) if isinstance(node, Mapping) else None
        elif isinstance(node, list) and int(index) < len(node):
            node = node[int(index)]
        else:
            node = None
        if node is None:
            return None
    return node


def _effective(policy: CompiledPolicy, tool: str) -> dict[str, str]:
    """What each role may do with the concrete ``tool`` (wildcards and groups
    included; an explicit deny wins)."""
    rules = policy.rules_for(tool, remember=False)
    row = {}
    for role in sorted(rules.allow_roles | rules.deny_roles):
        if role in rules.deny_roles:
            row[role] = _DENY
        elif all(g.input or g.output for g in rules.allow_grants(frozenset({role}))):
            row[role] = _CONDITIONAL
        else:
            row[role] = _ALLOW
    return row


def _matrix(policy: CompiledPolicy, expand: bool) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Rows in policy order: a concrete tool shows what each role may do with it;
    a pattern (``*``, ``x:*``, ``@group``) shows the grants written for it.
    ``expand`` lists a group's tools instead of the group."""
    rows: dict[str, dict[str, str]] = {}
    for entry in policy.entries:
        for grant in entry.grants:
            names = [grant.pattern]
            if expand and grant.pattern.startswith("@"):
                names = list(policy.groups.get(grant.pattern[1:], ()))
            for name in names:
                if not (name.endswith("*") or name.startswith("@")):
                    rows[name] = _effective(policy, name)
                    continue
                cell = (
                    _DENY
                    if not grant.allow
                    else _CONDITIONAL
                    if grant.input or grant.output
                    else _ALLOW
                )
                row = rows.setdefault(name, {})
                for role in grant.roles:
                    if _RANK[cell] > _RANK.get(row.get(role, ""), 0):
                        row[role] = cell
    return list(rows), rows


def _guardrails(policy: CompiledPolicy, verbose: bool) -> list[dict[str, Any]]:
    out = []
    for entry in policy.entries:
        for grant in entry.grants:
            if not (grant.input or grant.output):
                continue
            raw = at_path(policy.document, f"{grant.path}.conditions") or {}
            output = raw.get("output") if isinstance(raw, Mapping) else None
            item: dict[str, Any] = {
                "tool": grant.pattern,
                "roles": list(grant.roles),
                "input": [name for name, _ in grant.input],
                "output": sorted(output) if isinstance(output, Mapping) else [],
                "path": grant.path,
            }
            if verbose:
                item["conditions"] = raw
            out.append(item)
    return out


def audited_rules(policy: CompiledPolicy) -> list[str]:
    """Paths of the rules marked ``audit: true`` (recorded, never enforced): grant
    conditions, sequence rules and allowlists, data-flow blocks; in policy order,
    each once."""
    paths = [
        f"{grant.path}.conditions"
        for entry in policy.entries
        for grant in entry.grants
        if grant.audit and (grant.input or grant.output)
    ]
    sequences = sorted(policy.sequences.values(), key=lambda s: s.path)
    for seq in sequences:
        if seq.audit:
            paths.append(seq.path)
    paths.extend(
        rule.path for seq in sequences for rule in seq.rules if rule.audit and not seq.audit
    )
    paths.extend(path for _, _, path, audit in policy.flow_blocks if audit)
    return list(dict.fromkeys(paths))


def _sequences(policy: CompiledPolicy) -> list[dict[str, Any]]:
    return [
        {
            "role": role,
            "mode": seq.mode,
            "path": seq.path,
            "rules": [
                {"kind": r.kind, "steps": list(r.steps), "reason": r.reason, "path": r.path}
                for r in seq.rules
            ],
        }
        for role, seq in sorted(policy.sequences.items())
    ]


def describe(
    view: PolicyView, *, verbose: bool = False, now: float | None = None
) -> dict[str, Any]:
    """The policy as plain data (what ``d2 inspect --json`` prints)."""
    policy = view.policy
    now = time.time() if now is None else now
    tools, matrix = _matrix(policy, expand=verbose)
    meta = policy.document.get("metadata") if isinstance(policy.document, Mapping) else None
    flow = meta.get("data_flow") if isinstance(meta, Mapping) else None
    expires = None if policy.expires_at == float("inf") else policy.expires_at
    return {
        "origin": view.origin,
        "source": view.source,
        "in_force": not view.problems,
        "problems": list(view.problems),
        "name": policy.name,
        "description": policy.description,
        "version": view.version,
        "digest": policy.digest,
        "mode": policy.mode,
        "expires": rfc3339(expires) if expires is not None else None,
        "expires_in_seconds": round(expires - now) if expires is not None else None,
        "roles": sorted(policy.roles),
        "tool_count": policy.tool_count,
        "tools": tools,
        "matrix": matrix,
        "groups": {name: list(members) for name, members in policy.groups.items()},
        "guardrails": _guardrails(policy, verbose),
        "sequences": _sequences(policy),
        "data_flow": flow if isinstance(flow, Mapping) else {},
        "audited": audited_rules(policy),
        **view.extra,
    }


def _expiry_text(data: Mapping[str, Any]) -> Text:
    if data["expires"] is None:
        return Text("never (no metadata.expires)", style="yellow")
    left = data["expires_in_seconds"]
    if left <= 0:
        return Text(f"{data['expires']} (expired {duration(left)} ago)", style="bold red")
    return Text(f"{data['expires']} (in {duration(left)})", style="yellow" if left < 86400 else "")


def _summary(data: Mapping[str, Any]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("source", Text(f"{data['origin']}: {data['source']}"))
    table.add_row("name", Text(data["name"] or "(none)"))
    version = data["version"] if data["version"] is not None else "(none)"
    table.add_row("version", Text(f"{version}  digest {data['digest'][:12]}"))
    table.add_row("expires", _expiry_text(data))
    table.add_row("mode", Text(data["mode"]))
    table.add_row("size", Text(f"{len(data['roles'])} roles, {data['tool_count']} tools"))
    for key, value in data.items():
        if key in ("signed_by", "app"):
            table.add_row(key, Text(str(value)))
    return table


def _permissions(data: Mapping[str, Any]) -> Table:
    roles = data["roles"]
    table = Table(title="permissions (roles x tools)", title_justify="left")
    table.add_column("tool")
    for role in roles:
        table.add_column(role, justify="center")
    for tool in data["tools"]:
        cells = data["matrix"][tool]
        table.add_row(
            Text(tool),
            *(Text(cells.get(r, "-"), style=_STYLE.get(cells.get(r, ""), "dim")) for r in roles),
        )
    return table


def render(out: Output, data: Mapping[str, Any], *, verbose: bool = False) -> None:
    """Print the description made by :func:`describe`."""
    out.print(_summary(data))
    for problem in data["problems"]:
        out.print(Text(f"NOT IN FORCE: {problem}", style="bold red"))
    if data["mode"] == "audit":
        out.print(Text(AUDIT_MODE, style="bold yellow"))
    audited = data.get("audited") or []
    if audited:
        out.print(Text("audited rules (recorded, never enforced):", style="yellow"))
        for path in audited:
            out.line(f"  - {path}")
    out.print("")
    if data["tools"]:
        out.print(_permissions(data))
    else:
        out.line("no permissions: every call is denied", style="yellow")
    if data["groups"]:
        groups = Table(title="tool groups", title_justify="left")
        groups.add_column("group")
        groups.add_column("tools")
        for name, members in data["groups"].items():
            groups.add_row(Text(f"@{name}"), Text(", ".join(members)))
        out.print(groups)
    if data["guardrails"]:
        rails = Table(title="guardrails (conditions)", title_justify="left")
        for column in ("tool", "roles", "input", "output", "path"):
            rails.add_column(column)
        for g in data["guardrails"]:
            rails.add_row(
                *(Text(x) for x in (g["tool"], ", ".join(g["roles"]))),
                Text(", ".join(g["input"]) or "-"),
                Text(", ".join(g["output"]) or "-"),
                Text(g["path"], style="dim"),
            )
        out.print(rails)
        if verbose:
            for g in data["guardrails"]:
                out.line(f"{g['path']}.conditions: {json.dumps(g['conditions'], default=str)}")
    if data["sequences"]:
        seqs = Table(title="sequences", title_justify="left")
        for column in ("role", "mode", "rule", "reason"):
            seqs.add_column(column)
        for s in data["sequences"]:
            for r in s["rules"]:
                seqs.add_row(
                    Text(s["role"]),
                    Text(s["mode"]),
                    Text(f"{r['kind']}: {' -> '.join(r['steps'])}"),
                    Text(r["reason"] or "-"),
                )
        out.print(seqs)
    flow = data["data_flow"]
    if flow:
        table = Table(title="data flow", title_justify="left")
        for column in ("kind", "name", "values"):
            table.add_column(column)
        for kind in ("labels", "blocks"):
            for name, values in (flow.get(kind) or {}).items():
                table.add_row(Text(kind), Text(str(name)), Text(", ".join(map(str, values))))
        out.print(table)
