"""Validate a policy document and compile it into a :class:`CompiledPolicy`.

Validation collects every problem with its path inside the document
(``policies[2].permissions[0].tool``) and refuses the document whole.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from ..context import ASCII_SPACE
from ..errors import InvalidPolicyError
from ._text import short, suggest
from .constraints import Constraint, compile_constraint
from .model import Approval, CompiledPolicy, Grant, Limit, RoleEntry
from .output import OutputRules
from .sequence import audit_flag, compile_data_flow, compile_sequences

__all__ = ["compile_policy", "parse_duration", "parse_expires"]

_TOP_KEYS = ("metadata", "policies")
_METADATA_KEYS = (
    "name", "description", "expires", "tool_groups", "data_flow", "mode", "version",
)  # fmt: skip
_ENTRY_KEYS = ("role", "roles", "permissions", "sequence", "description")
_GRANT_KEYS = ("tool", "allow", "conditions", "description", "limits", "approval")
_LIMIT_KEYS = ("max", "per", "window")
_APPROVAL_KEYS = ("when", "approvers", "ttl")
# Parts of the language that this version of d2-core refuses rather than ignores
# (ignoring a guardrail would fail open). Empty: every key of POLICY.md v1.1 is known.
_NOT_YET: dict[str, str] = {}
_DURATION = re.compile(r"([1-9][0-9]{0,8})([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_APPROVAL_TTL = 7 * 86400
DEFAULT_APPROVAL_TTL = 15 * 60


def parse_duration(value: object) -> int | None:
    """``30s`` / ``15m`` / ``2h`` / ``1d`` -> seconds; ``None`` when not a duration."""
    if not isinstance(value, str):
        return None
    match = _DURATION.fullmatch(value)
    if match is None:
        return None
    return int(match.group(1)) * _UNITS[match.group(2)]


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def parse_expires(value: object) -> float | None:
    """RFC 3339 text, a ``datetime`` or a ``date`` -> seconds since the epoch.
    Naive times are UTC. ``None`` when the value cannot be read."""
    if isinstance(value, _dt.datetime):
        moment = value
    elif isinstance(value, _dt.date):
        moment = _dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        if text[-1:] in ("Z", "z"):
            text = text[:-1] + "+00:00"
        try:
            moment = _dt.datetime.fromisoformat(text)
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return moment.timestamp()


class _Checker:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def keys(self, path: str, mapping: Mapping[Any, Any], allowed: tuple[str, ...]) -> None:
        for key in mapping:
            if key in allowed:
                continue
            if key in _NOT_YET:
                self.error(
                    f"{path}.{key}" if path else str(key),
                    f"{_NOT_YET[key]} are not supported by this version of d2-core; "
                    "upgrade d2-core, or remove the key (a guardrail is never ignored)",
                )
            else:
                where = f"{path}.{key}" if path else str(key)
                self.error(where, f"unknown key{suggest(str(key), allowed)}")

    def description(self, path: str, mapping: Mapping[Any, Any]) -> None:
        """A ``description`` is free text: a string."""
        if "description" in mapping and not isinstance(mapping["description"], str):
            self.error(
                f"{path}.description",
                f"expected a string, got {_type_name(mapping['description'])}",
            )

    def tool_pattern(self, path: str, value: object, groups: Mapping[str, Any]) -> str | None:
        if not isinstance(value, str):
            self.error(path, f"expected a tool id (string), got {_type_name(value)}")
            return None
        if not value or value != value.strip():
            self.error(path, f"tool id {short(value)} is empty or has surrounding spaces")
            return None
        if value.startswith("@"):
            if value[1:] not in groups:
                known = tuple(groups) or ("<no tool_groups defined>",)
                self.error(path, f"unknown tool group {short(value)}{suggest(value[1:], known)}")
                return None
            return value
        if "*" in value[:-1]:
            self.error(
                path,
                f"{short(value)}: '*' is only allowed alone or at the end (prefix wildcard 'x:*')",
            )
            return None
        return value


def _roles_of(c: _Checker, path: str, entry: Mapping[str, Any]) -> tuple[str, ...]:
    if "role" in entry and "roles" in entry:
        c.error(path, "give either 'role' or 'roles', not both")
        return ()
    key = "role" if "role" in entry else "roles"
    if key not in entry:
        c.error(path, "missing 'role' (a string or a list of strings)")
        return ()
    raw = entry[key]
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        c.error(f"{path}.{key}", f"expected a role name or a non-empty list, got {short(raw)}")
        return ()
    roles: list[str] = []
    for i, role in enumerate(items):
        where = f"{path}.{key}" if isinstance(raw, str) else f"{path}.{key}[{i}]"
        if not isinstance(role, str) or not role.strip(ASCII_SPACE):
            c.error(where, f"expected a non-empty role name, got {short(role)}")
        elif role.strip(ASCII_SPACE) not in roles:
            roles.append(role.strip(ASCII_SPACE))
    return tuple(roles)


def _groups_of(c: _Checker, raw: object) -> dict[str, tuple[str, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        c.error(
            "metadata.tool_groups", f"expected a mapping of name -> list, got {_type_name(raw)}"
        )
        return {}
    groups: dict[str, tuple[str, ...]] = {}
    for name, members in raw.items():
        path = f"metadata.tool_groups.{name}"
        if not isinstance(name, str) or not name or name.startswith("@"):
            c.error(path, "a group name is a non-empty string without '@'")
            continue
        if not isinstance(members, list):
            c.error(path, f"expected a list of tool ids, got {_type_name(members)}")
            continue
        tools: list[str] = []
        for i, tool in enumerate(members):
            if not isinstance(tool, str) or not tool or tool != tool.strip():
                c.error(f"{path}[{i}]", f"expected a tool id, got {short(tool)}")
            elif "*" in tool or tool.startswith("@"):
                c.error(f"{path}[{i}]", f"{short(tool)}: a group lists exact tool ids only")
            elif tool not in tools:
                tools.append(tool)
        groups[name] = tuple(tools)
    return groups


def _input_rules(c: _Checker, path: str, spec: object) -> tuple[tuple[str, Constraint], ...]:
    """``argument -> {operator: value}`` (``conditions.input``, ``approval.when``)."""
    if not isinstance(spec, Mapping):
        c.error(path, "expected a mapping of argument name -> constraints")
        return ()
    inputs: list[tuple[str, Constraint]] = []
    for arg, rule in spec.items():
        where = f"{path}.{arg}"
        if not isinstance(rule, Mapping) or not rule:
            c.error(where, "expected a non-empty mapping of operators, e.g. {type: string}")
            continue
        compiled = compile_constraint(c, where, rule)
        if compiled is not None:
            inputs.append((str(arg), compiled))
    return tuple(inputs)


def _conditions(
    c: _Checker, path: str, raw: object
) -> tuple[tuple[tuple[str, Constraint], ...], OutputRules | None, bool]:
    if not isinstance(raw, Mapping):
        c.error(path, "expected a mapping with 'input' and/or 'output'")
        return (), None, False
    c.keys(path, raw, ("input", "output", "audit"))
    audit = audit_flag(c, path, raw)
    inputs = _input_rules(c, f"{path}.input", raw.get("input", {}))
    output = None
    if "output" in raw:
        output = OutputRules.compile(c, f"{path}.output", raw["output"])
        if output is not None:
            output.audit = audit
    return inputs, output, audit


def _limits(c: _Checker, path: str, raw: object) -> tuple[Limit, ...]:
    if not isinstance(raw, list) or not raw:
        c.error(path, "expected a non-empty list like [{max: 5, per: request}]")
        return ()
    limits: list[Limit] = []
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            c.error(where, f"expected a mapping like {{max: 5, per: request}}, got {short(item)}")
            continue
        before = len(c.errors)
        c.keys(where, item, _LIMIT_KEYS)
        top = item.get("max")
        if isinstance(top, bool) or not isinstance(top, int) or top <= 0:
            c.error(f"{where}.max", f"expected a positive integer, got {short(top)}")
        per = item.get("per")
        window: int | None = None
        if per not in ("request", "user"):
            c.error(
                f"{where}.per",
                f"expected 'request' or 'user', got {short(per)}"
                + (suggest(per, ("request", "user")) if isinstance(per, str) else ""),
            )
        elif per == "user":
            if "window" not in item:
                c.error(where, "a 'per: user' limit needs a 'window' (like 1h or 1d)")
            else:
                window = parse_duration(item["window"])
                if window is None:
                    c.error(
                        f"{where}.window",
                        f"expected a duration like 30s, 15m, 2h or 1d, got {short(item['window'])}",
                    )
        elif "window" in item:
            c.error(
                f"{where}.window",
                "a 'per: request' limit has no window (it resets with the request)",
            )
        if len(c.errors) == before:
            limits.append(Limit(int(top or 0), str(per), window, where))
    return tuple(limits)


def _approval(c: _Checker, path: str, raw: object) -> Approval | None:
    if not isinstance(raw, Mapping):
        c.error(path, "expected a mapping like {approvers: [finance_lead], ttl: 15m}")
        return None
    before = len(c.errors)
    c.keys(path, raw, _APPROVAL_KEYS)
    when = _input_rules(c, f"{path}.when", raw.get("when", {}))
    approvers = raw.get("approvers")
    names: tuple[str, ...] = ()
    if isinstance(approvers, str):
        approvers = [approvers]
    if not isinstance(approvers, list) or not approvers:
        c.error(f"{path}.approvers", f"expected a non-empty list of roles, got {short(approvers)}")
    else:
        for i, role in enumerate(approvers):
            if not isinstance(role, str) or not role.strip(ASCII_SPACE):
                c.error(f"{path}.approvers[{i}]", f"expected a role name, got {short(role)}")
        names = tuple(dict.fromkeys(r.strip(ASCII_SPACE) for r in approvers if isinstance(r, str)))
    ttl: int | None = DEFAULT_APPROVAL_TTL
    if "ttl" in raw:
        ttl = parse_duration(raw["ttl"])
        if ttl is None:
            c.error(
                f"{path}.ttl", f"expected a duration like 15m, 2h or 1d, got {short(raw['ttl'])}"
            )
        elif ttl > MAX_APPROVAL_TTL:
            c.error(f"{path}.ttl", f"{short(raw['ttl'])} is longer than the 7d maximum")
    if len(c.errors) > before or ttl is None:
        return None
    return Approval(when, names, ttl, path)


def _covers(outer: str, inner: str, groups: Mapping[str, tuple[str, ...]]) -> bool:
    """Does every tool id ``inner`` can match also match ``outer``?"""
    if outer in ("*", inner):
        return True
    if inner == "*":
        return False
    members = groups.get(inner[1:], ()) if inner.startswith("@") else None
    if outer.startswith("@"):
        group = set(groups.get(outer[1:], ()))
        if members is not None:
            return set(members) <= group
        return not inner.endswith("*") and inner in group
    if outer.endswith("*"):
        prefix = outer[:-1]
        if members is not None:
            return all(m.startswith(prefix) for m in members)
        return inner.startswith(prefix)
    return members is not None and bool(members) and set(members) == {outer}


def _shadowed_budgets(
    c: _Checker, entries: list[RoleEntry], groups: Mapping[str, tuple[str, ...]]
) -> None:
    """The first granting entry (policy order) decides a call, so ``limits`` or an
    ``approval`` behind an earlier unconditional grant of the same role for the
    same tools would never apply: refuse it rather than fail open."""
    grants = [g for e in entries for g in e.grants if g.allow]
    for later in grants:
        if not (later.limits or later.approval):
            continue
        for earlier in grants:
            if earlier.order >= later.order:
                break
            shared = sorted(set(earlier.roles) & set(later.roles))
            if shared and not earlier.input and _covers(earlier.pattern, later.pattern, groups):
                what = " and ".join(
                    k for k, v in (("limits", later.limits), ("approval", later.approval)) if v
                )
                c.error(
                    later.path,
                    f"its {what} would never apply to role(s) {', '.join(shared)}: the earlier "
                    f"grant {earlier.path} ({short(earlier.pattern)}) admits the same calls "
                    "first (the first granting entry decides); move this entry above it, "
                    "or narrow the earlier one",
                )
                break


def compile_policy(
    document: object,
    *,
    source: str = "<memory>",
    raw: bytes | None = None,
    version: int | None = None,
    expires_at: float | None = None,
    namespace: str | None = None,
) -> CompiledPolicy:
    """Validate ``document`` (the parsed policy) and compile it.

    ``raw`` is the document's bytes (for the digest; the canonical JSON of the
    document is used otherwise). ``expires_at`` is a bundle's ``exp``: the policy
    expires at the earlier of it and ``metadata.expires``. ``namespace`` scopes the
    app's keys in a store (``cloud:<account>:<app>`` for a cloud app); default:
    ``local:`` and ``metadata.name`` (``None`` for an unnamed policy).
    Raises :class:`InvalidPolicyError` listing every problem with its path.
    """
    try:
        policy = _compile(document, source=source, raw=raw, version=version, expires_at=expires_at)
    except (RecursionError, MemoryError) as exc:
        raise InvalidPolicyError(
            source, [f"<root>: nested too deeply: {type(exc).__name__}"]
        ) from None
    if namespace:
        policy.namespace = namespace
    return policy


def _compile(
    document: object,
    *,
    source: str = "<memory>",
    raw: bytes | None = None,
    version: int | None = None,
    expires_at: float | None = None,
) -> CompiledPolicy:
    c = _Checker()
    if not isinstance(document, Mapping):
        raise InvalidPolicyError(
            source, [f"<root>: expected a mapping with 'policies', got {_type_name(document)}"]
        )
    c.keys("", document, _TOP_KEYS)
    meta = document.get("metadata", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, Mapping):
        c.error("metadata", f"expected a mapping, got {_type_name(meta)}")
        meta = {}
    c.keys("metadata", meta, _METADATA_KEYS)
    for key in ("name", "description"):
        if key in meta and not isinstance(meta[key], str):
            c.error(f"metadata.{key}", f"expected a string, got {_type_name(meta[key])}")
    mode = meta.get("mode", "enforce")
    if mode not in ("enforce", "audit"):
        c.error("metadata.mode", f"expected 'enforce' or 'audit', got {short(mode)}")
    exp = expires_at
    if exp is not None and (math.isnan(exp) or exp == float("-inf")):  # NaN never expires
        c.error("metadata.expires", f"expected a finite expiry time, got {exp!r}")
    if "expires" in meta:  # also inside a bundle: the earlier of it and the bundle's exp
        meta_exp = parse_expires(meta["expires"])
        if meta_exp is None:
            c.error(
                "metadata.expires",
                "expected an RFC 3339 time like '2026-12-01T00:00:00Z', got "
                f"{short(meta['expires'])}",
            )
        elif exp is None or meta_exp < exp:
            exp = meta_exp
    groups = _groups_of(c, meta.get("tool_groups"))
    flow_labels, flow_blocks = compile_data_flow(c, meta.get("data_flow"), groups)
    sequence_specs: list[tuple[str, tuple[str, ...], object]] = []

    entries: list[RoleEntry] = []
    approvals: list[Approval] = []
    policies = document.get("policies")
    if not isinstance(policies, list):
        c.error("policies", f"expected a list of role entries, got {_type_name(policies)}")
        policies = []
    order = 0
    for i, entry in enumerate(policies):
        path = f"policies[{i}]"
        if not isinstance(entry, Mapping):
            c.error(path, f"expected a mapping with 'role' and 'permissions', got {short(entry)}")
            continue
        c.keys(path, entry, _ENTRY_KEYS)
        c.description(path, entry)
        roles = _roles_of(c, path, entry)
        perms = entry.get("permissions", [])
        if not isinstance(perms, list):
            c.error(f"{path}.permissions", f"expected a list, got {_type_name(perms)}")
            perms = []
        if "sequence" in entry:
            sequence_specs.append((path, roles, entry["sequence"]))
        grants: list[Grant] = []
        for j, perm in enumerate(perms):
            ppath = f"{path}.permissions[{j}]"
            allow = True
            inputs: tuple[tuple[str, Constraint], ...] = ()
            output = None
            audit = False
            limits: tuple[Limit, ...] = ()
            approval = None
            if isinstance(perm, Mapping):
                c.keys(ppath, perm, _GRANT_KEYS)
                c.description(ppath, perm)
                if "tool" not in perm:
                    c.error(ppath, "missing 'tool'")
                    continue
                pattern = c.tool_pattern(f"{ppath}.tool", perm["tool"], groups)
                allow = perm.get("allow", True)
                if not isinstance(allow, bool):
                    c.error(f"{ppath}.allow", f"expected true or false, got {short(allow)}")
                    continue
                if "conditions" in perm:
                    if not allow:
                        c.error(
                            f"{ppath}.conditions",
                            "an 'allow: false' entry takes no "
                            "conditions (it denies whatever the arguments)",
                        )
                    inputs, output, audit = _conditions(
                        c, f"{ppath}.conditions", perm["conditions"]
                    )
                for key in ("limits", "approval"):
                    if key in perm and not allow:
                        c.error(
                            f"{ppath}.{key}",
                            f"an 'allow: false' entry takes no {key} (it never admits a call)",
                        )
                if "limits" in perm:
                    limits = _limits(c, f"{ppath}.limits", perm["limits"])
                if "approval" in perm:
                    approval = _approval(c, f"{ppath}.approval", perm["approval"])
                    if approval is not None:
                        approvals.append(approval)
            else:
                pattern = c.tool_pattern(ppath, perm, groups)
            if pattern is None:
                continue
            grants.append(
                Grant(order, pattern, allow, roles, ppath, inputs, output, limits, approval, audit)
            )
            order += 1
        entries.append(RoleEntry(roles, tuple(grants), path))

    sequences, tracked = compile_sequences(c, sequence_specs, groups)
    _shadowed_budgets(c, entries, groups)
    known_roles = tuple(sorted({r for e in entries for r in e.roles}))
    for approval in approvals:
        for i, role in enumerate(approval.approvers):
            if role not in known_roles:
                c.error(
                    f"{approval.path}.approvers[{i}]",
                    f"no policy entry names role {short(role)}{suggest(role, known_roles)}: "
                    "approvers must be roles of this policy",
                )
    if c.errors:
        raise InvalidPolicyError(source, c.errors)
    if raw is None:
        raw = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str).encode()
    name = meta.get("name")
    description = meta.get("description")
    return CompiledPolicy(
        document=document,
        entries=tuple(entries),
        groups=groups,
        name=name if isinstance(name, str) else None,
        description=description if isinstance(description, str) else None,
        expires_at=exp if exp is not None else float("inf"),
        raw=raw,
        source=source,
        version=version,
        mode=str(mode),
        sequences=sequences,
        tracked=tracked,
        flow_labels=flow_labels,
        flow_blocks=flow_blocks,
    )
