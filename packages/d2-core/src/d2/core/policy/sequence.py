"""Call-sequence rules (decision step 5) and data-flow labels (step 6).

Tool patterns here are those of permissions: an exact id, ``*``, a prefix
wildcard ``x:*`` or a group ``@name``; a :class:`Matcher` answers for one tool id.

Sequences are tracked incrementally. For every tracked pattern (the rules of roles
in mode ``allow``), a request keeps one integer: how many leading steps, before
the last, have appeared in order in its history (greedy matching finds the longest
such prefix). A call then completes a pattern when that count is ``len(steps) - 1``
and the call matches the last step: O(patterns that mention the tool) per call,
however long the history. Mode ``deny`` (allowlist) only needs the previous call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ._text import short

__all__ = ["Matcher", "RoleSequences", "SequenceRule", "compile_data_flow", "compile_sequences"]


class Matcher:
    """Does a tool id match any of some patterns? (groups expanded at load)"""

    __slots__ = ("exact", "prefixes", "star")

    def __init__(self, patterns: Iterable[str], groups: Mapping[str, tuple[str, ...]]) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        star = False
        for p in patterns:
            if p == "*":
                star = True
            elif p.startswith("@"):
                exact.update(groups[p[1:]])
            elif p.endswith("*"):
                prefixes.append(p[:-1])
            else:
                exact.add(p)
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)
        self.star = star

    def __call__(self, tool_id: str) -> bool:
        return self.star or tool_id in self.exact or tool_id.startswith(self.prefixes)


class SequenceRule:
    """One rule: ``kind`` (``deny`` or ``allow``), its ``steps`` (patterns as
    written, with one :class:`Matcher` each), an optional ``reason`` label, its
    ``path`` in the document, ``audit`` (recorded, never enforced) and, for tracked
    rules, its ``slot`` in a request's progress list."""

    __slots__ = ("audit", "kind", "matchers", "path", "reason", "slot", "steps")

    def __init__(
        self,
        kind: str,
        steps: tuple[str, ...],
        matchers: tuple[Matcher, ...],
        reason: str | None,
        path: str,
        audit: bool = False,
    ) -> None:
        self.audit = audit
        self.kind = kind
        self.steps = steps
        self.matchers = matchers
        self.reason = reason
        self.path = path
        self.slot = -1

    def describe(self) -> str:
        """``[a -> b]`` plus the reason label, for messages."""
        label = f" ({self.reason})" if self.reason else ""
        return f"[{' -> '.join(self.steps)}]{label}"


class RoleSequences:
    """The sequence rules of one role, its mode (``allow`` or ``deny``) and, for an
    allowlist, whether it is only audited (``audit``)."""

    __slots__ = ("audit", "mode", "path", "role", "rules")

    def __init__(
        self,
        role: str,
        mode: str,
        rules: tuple[SequenceRule, ...],
        path: str,
        audit: bool = False,
    ) -> None:
        self.role = role
        self.mode = mode
        self.rules = rules
        self.path = path
        self.audit = audit


_RULE_KEYS = ("deny", "allow", "reason", "description", "audit")


def audit_flag(c: Any, path: str, raw: Mapping[str, Any]) -> bool:
    """The ``audit`` key of a rule: true or false (absent: false)."""
    value = raw.get("audit", False)
    if not isinstance(value, bool):
        c.error(f"{path}.audit", f"expected true or false, got {short(value)}")
        return False
    return value


def compile_sequences(
    c: Any,
    entries: Iterable[tuple[str, tuple[str, ...], object]],
    groups: Mapping[str, tuple[str, ...]],
) -> tuple[dict[str, RoleSequences], tuple[SequenceRule, ...]]:
    """Compile every entry's ``sequence`` (``(path, roles, raw)`` triples).

    Returns the rules per role and the tracked rules (mode ``allow``), each given
    its slot. Two entries that give one role different modes are an error.
    """
    per_role: dict[str, tuple[str, list[SequenceRule], str, bool]] = {}
    tracked: list[SequenceRule] = []
    for path, roles, raw in entries:
        spath = f"{path}.sequence"
        mode = "allow"
        items = raw
        block_audit = False
        if isinstance(raw, Mapping):
            c.keys(spath, raw, ("mode", "rules", "audit"))
            block_audit = audit_flag(c, spath, raw)
            mode = raw.get("mode", "allow")
            items = raw.get("rules", [])
            if mode not in ("allow", "deny"):
                c.error(f"{spath}.mode", f"expected 'allow' or 'deny', got {short(mode)}")
                continue
            spath = f"{spath}.rules"
        if not isinstance(items, list):
            c.error(spath, "expected a list of rules or {mode: allow|deny, rules: [...]}")
            continue
        rules = []
        for i, item in enumerate(items):
            rule = _compile_rule(c, f"{spath}[{i}]", item, mode, groups)
            if rule is not None:
                rule.audit = rule.audit or (block_audit and rule.kind == "deny")
                rules.append(rule)
        if mode == "allow":
            tracked.extend(rules)
        for role in roles:
            if role in per_role and per_role[role][0] != mode:
                c.error(
                    f"{path}.sequence",
                    f"role {short(role)} already has sequence mode "
                    f"{short(per_role[role][0])} at {per_role[role][2]}; one mode per role",
                )
                continue
            if mode == "deny" and role in per_role and per_role[role][3] != block_audit:
                c.error(
                    f"{path}.sequence.audit",
                    f"role {short(role)}'s allowlist at {per_role[role][2]} is "
                    f"{'audited' if per_role[role][3] else 'enforced'}; give every "
                    "allowlist of a role the same 'audit'",
                )
                continue
            per_role.setdefault(role, (mode, [], f"{path}.sequence", block_audit))[1].extend(rules)
    for slot, rule in enumerate(tracked):
        rule.slot = slot
    result = {
        r: RoleSequences(r, m, tuple(rs), p, a and m == "deny")
        for r, (m, rs, p, a) in per_role.items()
    }
    return result, tuple(tracked)


def _compile_rule(
    c: Any, path: str, item: object, mode: str, groups: Mapping[str, tuple[str, ...]]
) -> SequenceRule | None:
    if not isinstance(item, Mapping):
        c.error(path, "expected a mapping like {deny: [tool_a, tool_b]}")
        return None
    c.keys(path, item, _RULE_KEYS)
    kinds = [k for k in ("deny", "allow") if k in item]
    if len(kinds) != 1:
        c.error(path, "give exactly one of 'deny' or 'allow' (a list of tool patterns)")
        return None
    kind = kinds[0]
    if mode == "deny" and kind == "deny":
        c.error(f"{path}.deny", "mode 'deny' is an allowlist: its rules are 'allow' patterns")
        return None
    audit = audit_flag(c, path, item)
    if audit and kind == "allow":
        c.error(
            f"{path}.audit",
            "only 'deny' rules can be audited; to audit an allowlist, put 'audit: true' "
            "on the block: {mode: deny, audit: true, rules: [...]}",
        )
        return None
    steps = item[kind]
    if not isinstance(steps, list) or not steps:
        c.error(f"{path}.{kind}", "expected a non-empty list of tool patterns")
        return None
    before = len(c.errors)
    patterns = [c.tool_pattern(f"{path}.{kind}[{i}]", s, groups) for i, s in enumerate(steps)]
    reason = item.get("reason")
    if reason is not None and not isinstance(reason, str):
        c.error(f"{path}.reason", f"expected a string, got {short(reason)}")
    if len(c.errors) > before:
        return None
    clean = tuple(p for p in patterns if p is not None)
    matchers = tuple(Matcher([p], groups) for p in clean)
    return SequenceRule(kind, clean, matchers, reason, path, audit)


Block = tuple[Matcher, str, str, bool]  # (tools it blocks, label, path, audit)


def compile_data_flow(
    c: Any, raw: object, groups: Mapping[str, tuple[str, ...]]
) -> tuple[tuple[tuple[Matcher, frozenset[str], str], ...], tuple[Block, ...]]:
    """``metadata.data_flow`` -> (labels: (matcher, labels, path)...,
    blocks: (matcher, label, path, audit)...). A block is a list of tool patterns
    or ``{tools: [...], audit: true}``."""
    path = "metadata.data_flow"
    if raw is None:
        return (), ()
    if not isinstance(raw, Mapping):
        c.error(path, "expected a mapping with 'labels' and 'blocks'")
        return (), ()
    c.keys(path, raw, ("labels", "blocks"))
    labels: list[tuple[Matcher, frozenset[str], str]] = []
    blocks: list[Block] = []
    for key in ("labels", "blocks"):
        section = raw.get(key, {})
        if not isinstance(section, Mapping):
            c.error(f"{path}.{key}", "expected a mapping")
            continue
        for name, values in section.items():
            where = f"{path}.{key}.{name}"
            audit = False
            if key == "blocks" and isinstance(values, Mapping):
                c.keys(where, values, ("tools", "audit", "description"))
                audit = audit_flag(c, where, values)
                values = values.get("tools")
            if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
                what = "labels" if key == "labels" else "tool patterns"
                c.error(where, f"expected a list of {what}")
                continue
            if key == "labels":
                pattern = c.tool_pattern(where, name, groups)
                if pattern is not None:
                    labels.append((Matcher([pattern], groups), frozenset(values), where))
            else:
                before = len(c.errors)
                pats = [c.tool_pattern(f"{where}[{i}]", v, groups) for i, v in enumerate(values)]
                if len(c.errors) == before:
                    matcher = Matcher([p for p in pats if p], groups)
                    blocks.append((matcher, str(name), where, audit))
    return tuple(labels), tuple(blocks)
