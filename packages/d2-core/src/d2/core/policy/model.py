"""The compiled policy: immutable data built once at load, read by every decision.

``CompiledPolicy.rules_for(tool_id)`` answers, for one tool id, which entries of the
policy can match it, which roles they grant and which they deny. The answer is
computed once per tool id and memoised (a plain dict write, no lock: two threads
racing compute the same immutable value), so a decision costs the same for a policy
of 10 or of 10,000 tools.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .constraints import Constraint
    from .output import OutputRules
    from .sequence import Matcher, RoleSequences, SequenceRule

__all__ = ["Approval", "CompiledPolicy", "Grant", "Limit", "RoleEntry", "ToolRules"]

_MEMO_CAP = 100_000  # beyond this many distinct ids, answers are computed, not stored
_NO_LABELS: frozenset[str] = frozenset()
_NO_BLOCKS: dict[str, str] = {}  # shared, never written


class Limit:
    """One call budget of a grant: at most ``max`` calls ``per`` request, or per
    user in fixed ``window``-second windows aligned to the Unix epoch. ``key``
    names its counter (shared by every tool the grant matches); ``path`` locates it
    in the document."""

    __slots__ = ("key", "keys", "max", "path", "per", "window")

    def __init__(self, max: int, per: str, window: float | None, path: str) -> None:
        self.keys: dict[tuple[str, str | None, int], str] = {}  # store keys, memoised
        self.max = max
        self.per = per
        self.window = window
        self.path = path
        self.key = path  # the grant renames it by what it counts (see Grant)

    def describe(self) -> str:
        """``5 per request`` / ``200 per user per 1d``, for messages."""
        if self.per == "request":
            return f"{self.max} per request"
        return f"{self.max} per user per {_duration_text(self.window or 0)}"


def _duration_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


class Approval:
    """A grant's ``approval``: calls for which ``when`` holds (always, when it is
    empty) wait for a user holding one of ``approvers``; an approval lasts ``ttl``
    seconds."""

    __slots__ = ("approvers", "input", "input_path", "path", "ttl")

    def __init__(
        self,
        when: tuple[tuple[str, Constraint], ...],
        approvers: tuple[str, ...],
        ttl: float,
        path: str,
    ) -> None:
        self.input = when  # read like a grant's conditions.input
        self.input_path = f"{path}.when"
        self.approvers = approvers
        self.ttl = ttl
        self.path = path


class Grant:
    """One permission of one policy entry (read-only).

    ``pattern`` is as written (``billing:read``, ``reports:*``, ``*``, ``@group``);
    ``path`` locates it in the document (``policies[1].permissions[2]``);
    ``order`` is its position in policy order. ``limits`` and ``approval`` are the
    grant's budgets and approval rule; ``audit`` means its ``conditions`` are only
    recorded, never enforced.
    """

    __slots__ = (
        "allow",
        "approval",
        "audit",
        "input",
        "input_path",
        "limits",
        "order",
        "output",
        "path",
        "pattern",
        "request_limits",
        "roles",
        "user_limits",
    )

    def __init__(
        self,
        order: int,
        pattern: str,
        allow: bool,
        roles: tuple[str, ...],
        path: str,
        input: tuple[tuple[str, Constraint], ...] = (),
        output: OutputRules | None = None,
        limits: tuple[Limit, ...] = (),
        approval: Approval | None = None,
        audit: bool = False,
    ) -> None:
        self.limits = limits
        seen: dict[tuple[str, float | None], int] = {}
        for limit in limits:
            # a counter is named by what it counts, not by where the limit sits in the
            # file: reordering or inserting entries keeps every budget where it was
            n = seen[(limit.per, limit.window)] = seen.get((limit.per, limit.window), -1) + 1
            limit.key = "\x1f".join(
                (pattern, ",".join(sorted(roles)), limit.per, f"{limit.window or 0:g}", str(n))
            )
        self.request_limits = tuple(lim for lim in limits if lim.per == "request")
        self.user_limits = tuple(lim for lim in limits if lim.per == "user")
        self.approval = approval
        self.audit = audit
        self.order = order
        self.pattern = pattern
        self.allow = allow
        self.roles = roles
        self.path = path
        self.input = input  # (argument name, constraint) pairs of conditions.input
        self.input_path = f"{path}.conditions.input"
        self.output = output  # compiled conditions.output, if any

    def __repr__(self) -> str:
        return (
            f"Grant({self.pattern!r}, allow={self.allow}, roles={list(self.roles)!r}, "
            f"path={self.path!r})"
        )


class RoleEntry:
    """One item of ``policies`` (read-only): the roles it applies to and its grants."""

    __slots__ = ("grants", "path", "roles")

    def __init__(self, roles: tuple[str, ...], grants: tuple[Grant, ...], path: str) -> None:
        self.roles = roles
        self.grants = grants
        self.path = path

    def __repr__(self) -> str:
        return (
            f"RoleEntry(roles={list(self.roles)!r}, grants={len(self.grants)}, path={self.path!r})"
        )


class ToolRules:
    """Everything the policy says about one tool id.

    ``grants``: the matching grants in policy order (allows and denies);
    ``allow_roles`` / ``deny_roles``: roles with a matching grant / ``allow: false``.
    ``known`` is False when no entry of the policy can match the id.
    ``guarded`` is True when a layer beyond RBAC applies (conditions, sequences,
    data flow, budgets, approvals): only then does a call take the slower path.
    ``blocked_by`` maps a data-flow label to the (path, audit) of the block on it.
    ``history`` is True when calls of the tool read or write the request's
    history or facts (sequences, data-flow labels, a data-flow block on it).
    """

    __slots__ = (
        "advance",
        "allow_roles",
        "approvals",
        "blocked_by",
        "budgeted",
        "by_roles",
        "completes",
        "conditional",
        "deny_roles",
        "firsts",
        "follows",
        "grants",
        "guarded",
        "history",
        "known",
        "labels",
        "policy",
        "request_only",
        "stored",
        "tool_id",
    )

    def __init__(self, tool_id: str, grants: tuple[Grant, ...], policy: CompiledPolicy) -> None:
        self.tool_id = tool_id
        self.grants = grants
        self.policy = policy
        self.known = bool(grants)
        self.allow_roles = frozenset(r for g in grants if g.allow for r in g.roles)
        self.deny_roles = frozenset(r for g in grants if not g.allow for r in g.roles)
        self.by_roles: dict[frozenset[str], tuple[Grant, ...]] = {}
        self.conditional = any(g.allow and (g.input or g.output) for g in grants)
        self.budgeted = any(g.allow and (g.limits or g.approval) for g in grants)
        self.approvals = any(g.allow and g.approval for g in grants)
        # a store may be asked: per-user budgets or approvals
        self.stored = any(g.allow and (g.user_limits or g.approval) for g in grants)
        # data flow: labels this tool adds, and label -> path of the block on it
        self.labels: frozenset[str] = _NO_LABELS
        self.blocked_by: dict[str, tuple[str, bool]] = _NO_BLOCKS  # type: ignore[assignment]
        if policy.flow_labels or policy.flow_blocks:
            self.labels = frozenset(
                label for m, labels, _ in policy.flow_labels if m(tool_id) for label in labels
            )
            blocked: dict[str, tuple[str, bool]] = {}
            for m, label, p, audit in policy.flow_blocks:
                # several blocks on one label: an enforced one wins over audited ones
                if m(tool_id) and (label not in blocked or blocked[label][1]):
                    blocked[label] = (p, audit)
            self.blocked_by = blocked
        # sequences (see policy/sequence.py)
        self.advance: tuple[tuple[int, frozenset[int], int], ...] = ()
        self.completes: dict[str, tuple[SequenceRule, ...]] = _NO_BLOCKS  # type: ignore[assignment]
        self.firsts: frozenset[str] = _NO_LABELS
        self.follows: dict[str, tuple[Matcher, ...]] = _NO_BLOCKS  # type: ignore[assignment]
        if policy.sequences:
            self._index_sequences(policy)
        # budgets are the only layer and only per request: admit() takes a short cut
        self.request_only = (
            self.budgeted
            and not (self.conditional or policy.sequences or self.labels or self.blocked_by)
            and all(not (g.user_limits or g.approval) for g in grants if g.allow)
        )
        # the policy keeps a history (sequences, data-flow labels): calls are judged
        # on it and recorded in it under the request's lock
        self.history = bool(policy.sequences or policy.flow_labels or self.blocked_by)
        self.guarded = bool(
            self.conditional or self.budgeted or policy.sequences or self.labels or self.blocked_by
        )

    def _index_sequences(self, policy: CompiledPolicy) -> None:
        tool_id = self.tool_id
        advance = []
        for rule in policy.tracked:
            hits = frozenset(i for i, m in enumerate(rule.matchers[:-1]) if m(tool_id))
            if hits:
                advance.append((rule.slot, hits, len(rule.steps) - 1))
        self.advance = tuple(advance)
        completes: dict[str, tuple[SequenceRule, ...]] = {}
        firsts: set[str] = set()
        follows: dict[str, tuple[Matcher, ...]] = {}
        for role in self.allow_roles:
            seq = policy.sequences.get(role)
            if seq is None:
                continue
            if seq.mode == "allow":
                completes[role] = tuple(r for r in seq.rules if r.matchers[-1](tool_id))
            else:
                if any(r.matchers[0](tool_id) for r in seq.rules):
                    firsts.add(role)
                follows[role] = tuple(
                    r.matchers[i]
                    for r in seq.rules
                    for i in range(len(r.steps) - 1)
                    if r.matchers[i + 1](tool_id)
                )
        self.completes, self.firsts, self.follows = completes, frozenset(firsts), follows

    def deny_grant(self, roles: frozenset[str]) -> Grant | None:
        """The first ``allow: false`` grant that applies to one of ``roles``."""
        for g in self.grants:
            if not g.allow and not roles.isdisjoint(g.roles):
                return g
        return None

    def allow_grants(self, roles: frozenset[str]) -> tuple[Grant, ...]:
        """The allowing grants that apply to one of ``roles``, in policy order
        (memoised per role set)."""
        found = self.by_roles.get(roles)
        if found is None:
            found = tuple(g for g in self.grants if g.allow and not roles.isdisjoint(g.roles))
            if len(self.by_roles) < 256:
                self.by_roles[roles] = found
        return found


class CompiledPolicy:
    """A validated policy document, indexed for decisions. Never mutated after
    compile, except for the per-tool memo (see module docstring)."""

    __slots__ = (
        "_digest",
        "_exact",
        "_memo",
        "_prefixes",
        "_star",
        "audit",
        "concrete_tools",
        "description",
        "document",
        "entries",
        "expires_at",
        "flow_blocks",
        "flow_labels",
        "groups",
        "mode",
        "name",
        "namespace",
        "patterns",
        "raw",
        "roles",
        "sequences",
        "source",
        "tracked",
        "version",
    )

    def __init__(
        self,
        *,
        document: Mapping[str, Any],
        entries: tuple[RoleEntry, ...],
        groups: Mapping[str, tuple[str, ...]],
        name: str | None,
        description: str | None,
        expires_at: float,
        raw: bytes,
        source: str,
        version: int | None = None,
        mode: str = "enforce",
        sequences: Mapping[str, RoleSequences] | None = None,
        tracked: tuple[SequenceRule, ...] = (),
        flow_labels: tuple[tuple[Matcher, frozenset[str], str], ...] = (),
        flow_blocks: tuple[tuple[Matcher, str, str, bool], ...] = (),
    ) -> None:
        self.document = document
        self.entries = entries
        self.groups = groups
        self.name = name
        # what scopes the app's keys in a store: "local:<name>" (cloud mode sets
        # "cloud:<account>:<app>"), so a local name never reaches a cloud app's keys
        self.namespace: str | None = f"local:{name}" if name else None
        self.description = description
        self.expires_at = expires_at
        self.raw = raw
        self._digest: str | None = None
        self.source = source
        self.version = version
        self.mode = mode
        self.audit = mode == "audit"
        self.sequences: Mapping[str, RoleSequences] = sequences or {}
        self.tracked = tracked
        self.flow_labels = flow_labels
        self.flow_blocks = flow_blocks

        exact: dict[str, list[Grant]] = {}
        prefixes: list[tuple[str, Grant]] = []
        star: list[Grant] = []
        patterns: set[str] = set()
        for entry in entries:
            for g in entry.grants:
                p = g.pattern
                if p == "*":
                    star.append(g)
                elif p.startswith("@"):
                    for tool in groups[p[1:]]:
                        exact.setdefault(tool, []).append(g)
                elif p.endswith("*"):
                    prefixes.append((p[:-1], g))
                    patterns.add(p)
                else:
                    exact.setdefault(p, []).append(g)
        self._exact = {k: tuple(v) for k, v in exact.items()}
        self._prefixes = tuple(prefixes)
        self._star = tuple(star)
        self.concrete_tools = frozenset(exact)
        self.patterns = frozenset(patterns)
        self.roles = frozenset(r for e in entries for r in e.roles)
        self._memo: dict[str, ToolRules] = {}

    def rules_for(self, tool_id: str, remember: bool = True) -> ToolRules:
        """What the policy says about ``tool_id`` (memoised unless ``remember`` is
        False and the id is not one the policy names)."""
        rules = self._memo.get(tool_id)
        if rules is None:
            grants = list(self._exact.get(tool_id, ()))
            grants.extend(g for prefix, g in self._prefixes if tool_id.startswith(prefix))
            grants.extend(self._star)
            grants.sort(key=lambda g: g.order)
            rules = ToolRules(tool_id, tuple(grants), self)
            if len(self._memo) < _MEMO_CAP and (remember or tool_id in self._exact):
                self._memo[tool_id] = rules
        return rules

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the document's bytes: the local policy's version."""
        if self._digest is None:
            import hashlib  # off the cold path: computed when first asked for

            self._digest = hashlib.sha256(self.raw).hexdigest()
        return self._digest

    @property
    def version_text(self) -> str:
        """The policy's version as recorded in approvals and decision logs: the
        bundle version (cloud) or the file's SHA-256 (local)."""
        return str(self.version) if self.version is not None else self.digest

    @property
    def tool_count(self) -> int:
        """Distinct tool ids and prefix patterns the policy names (``*`` excluded)."""
        return len(self.concrete_tools) + len(self.patterns)

    def __repr__(self) -> str:
        return (
            f"CompiledPolicy(name={self.name!r}, source={self.source!r}, "
            f"roles={len(self.roles)}, tools={self.tool_count}, digest={self.digest[:12]!r})"
        )
