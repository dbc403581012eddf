"""Output rules of one grant (``conditions.output``): compiled once at load, applied
to a tool's result on the hot path (decision step 8).

Three keys are special; they are checked on the *sanitized* result and deny with
reason ``output_validation``:

- ``max_bytes``: size of the JSON encoding (UTF-8, ``ensure_ascii=False``; models and
  dataclasses as their dumped form, other objects as ``str``). A result that cannot
  be encoded (circular, unsupported keys) is denied.
- ``deny_if_patterns``: regexes searched in every string leaf and every mapping key
  (as ``str(key)``) at any depth, through lists, tuples and sets; bytes are searched
  decoded as UTF-8 (``errors="replace"``), other scalars except numbers, booleans and
  null (datetimes, ...) as ``str(value)``.
- ``require_fields_absent``: dotted paths; a field present at one denies.

Every other key is a dotted field path (``a.b.c``; names cannot contain dots) whose
rule holds constraint operators and an optional ``action``. A path reaches nested
mappings; wherever a list, tuple or set is met with path left (the result itself
included), the rest of the path applies to each item. Scalars on the way (strings,
numbers, bytes, datetimes, enum members, ...) are skipped: the field is missing there.
Pydantic models (a callable ``model_dump``), dataclass instances and namedtuples
(``_asdict()``) are read, at any depth, as their dumped form (also a field's value,
for its constraints); when a rule changes one, the result holds that form as plain
dicts (a sanitized namedtuple becomes a dict). Any other object where a path must
look into it (``SimpleNamespace``, instances of other classes, generators) cannot be
checked and denies (``output_validation``): fail closed.

A field name matches a mapping key that equals it (``key == name``), or whose
``value`` or ``name`` attribute equals it (enum members as keys). Keys are the
mapping's own: a mapping other than a dict (``MappingProxyType``, a case-insensitive
dict) is walked with ``for key in mapping`` and copied from those keys; when its
``get(name)`` finds a value that no key equals (a case-insensitive mapping), the rule
applies to every key whose ``str(key).lower()`` equals ``name.lower()``, and if none
does, the result denies. A dict (the fast path) is looked up with ``name in dict``;
its keys are compared one by one only when that finds nothing and some key is not a
string, so a dict holding both ``"ssn"`` and an enum key named ``ssn`` may keep the
enum one.

1. Validation rules (no ``action``): any violation denies the whole result
   (``output_validation``). A missing field (a key missing at any level of the path,
   or a scalar where the path goes on) violates only ``required: true``.
2. Action rules, in the order written, on present fields only. The action applies to
   a value iff
   - the rule has no operator other than ``required`` (it always applies), or
   - the rule has ``matches`` and the value matches: a string itself, any other
     value when one of its strings (the ``deny_if_patterns`` walk, plus numbers other
     than booleans as ``str``) matches (for an action rule ``matches`` is a
     *selector*, not a requirement), or
   - another operator is violated (``required: true`` is violated by ``null``).
   ``filter`` removes the field. ``redact`` replaces the value with ``"[REDACTED]"``,
   except that when ``matches`` alone selected a string, only the matching spans are
   replaced (the whole string if the result still matches, e.g. the replacement made
   a new match). ``truncate`` cuts a string, list or tuple to ``maxLength`` (other
   values stay). ``deny`` denies (``output_sanitization``).
3. The special keys, on the sanitized result.

The tool's return value is never mutated: containers along a changed path are copied
(a tuple stays a tuple, a set becomes a list, any mapping becomes a dict of its own
keys), unchanged subtrees are shared, and a result no rule changes is returned as the
same object. A result nested too deeply (or circular) to walk, or that fails in any
other way while it is checked (a value whose ``str`` or comparison raises, an int too
large to convert), is denied (``output_validation``). Messages name the field and the
rule, never the value.
"""

from __future__ import annotations

import enum
import json
import re
import sys
from collections.abc import Mapping
from operator import is_
from typing import Any

from ._text import short, suggest
from .constraints import MISSING, Constraint, compile_constraint

__all__ = ["ACTIONS", "REDACTED", "OutputRules", "OutputViolation"]

ACTIONS = ("filter", "redact", "truncate", "deny")
REDACTED = "[REDACTED]"
_REMOVE: Any = object()  # a decision to remove the field
_SCALARS = frozenset({str, int, float, bool, type(None)})
# values a path cannot look into: where it needs a mapping, the field is missing
_LEAVES = (str, bytes, bytearray, memoryview, int, float, complex, enum.Enum, type, re.Pattern)
_MORE_LEAVES = (  # looked up only once their module is imported (no cold-import cost)
    ("numbers", "Number"), ("datetime", "date"), ("datetime", "time"),
    ("datetime", "timedelta"), ("datetime", "tzinfo"), ("uuid", "UUID"), ("pathlib", "PurePath"),
)  # fmt: skip
_ITEMS = (list, tuple, set, frozenset)  # the path applies to each item
_join = "".join  # raises TypeError unless every key of a dict is a string


class OutputViolation(Exception):
    """A result the output rules deny. Internal: the guard turns it into a
    ``PermissionDeniedError``. ``reason`` is ``output_validation`` or
    ``output_sanitization``; ``detail`` names the field and the rule, never the
    value; ``path`` is the rule's path in the policy document."""

    def __init__(self, reason: str, detail: str, path: str | None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.path = path


def _unchecked(node: object, path: str | None) -> OutputViolation:
    detail = (
        f"result of type {type(node).__name__} cannot be checked by the output rules; "
        "return a dict, a dataclass or a pydantic model"
    )
    return OutputViolation("output_validation", detail, path)


def _plain(node: Any) -> Any:
    """The dumped form of a pydantic model, dataclass instance or namedtuple, else
    ``node``."""
    if type(node) in _SCALARS or isinstance(node, (Mapping, list, type)):
        return node
    if isinstance(node, tuple):
        asdict = getattr(type(node), "_asdict", None)  # a namedtuple
        return asdict(node) if callable(asdict) else node
    dump = getattr(node, "model_dump", None)
    if callable(dump):
        return dump(mode="python")
    if hasattr(type(node), "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(node)
    return node


def _leaf(node: object) -> bool:
    """Whether ``node`` is a scalar that a path cannot look into (the field is missing
    there). A type whose module is not imported has no instances."""
    if isinstance(node, _LEAVES):
        return True
    for module, name in _MORE_LEAVES:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(node, cls):
            return True
    return False


def _named(key: Any, name: str) -> bool:
    """Whether the field ``name`` names ``key`` (itself, or its enum value or name)."""
    if type(key) is str:
        return key == name
    return bool(
        key == name or getattr(key, "value", None) == name or getattr(key, "name", None) == name
    )


def _strkeys(node: dict[Any, Any]) -> bool:
    """Whether every key of a dict is a string."""
    try:
        _join(node)
    except TypeError:
        return False
    return True


def _keys(node: Mapping[Any, Any], name: str, path: str | None) -> list[Any]:
    """The keys of ``node`` that the field ``name`` names (a dict: when it holds no
    key ``name``)."""
    if type(node) is dict:
        if _strkeys(node):
            return [name] if name in node else []
        return [k for k in node if _named(k, name)]
    keys = [k for k in node if _named(k, name)]
    if not keys and node.get(name, MISSING) is not MISSING:
        low = name.lower()  # a case-insensitive mapping: the keys it resolves to
        keys = [k for k in node if str(k).lower() == low]
        if not keys:
            raise _unchecked(node, path)
    return keys


def _copy(node: Mapping[Any, Any]) -> dict[Any, Any]:
    """A dict of ``node``'s own keys."""
    return dict(node) if type(node) is dict else {k: node[k] for k in node}


def _rewrite(node: Any, parts: tuple[str, ...], i: int, rules: tuple[_Rule, ...]) -> Any:
    """``node`` with ``rules`` applied to the mappings ``parts[i:]`` reaches, copied
    on write."""
    t = type(node)
    if t is list or t is tuple:
        return _items(node, parts, i, rules)
    if t is dict or (t not in _SCALARS and isinstance(node, Mapping)):
        return _at(rules, node) if i == len(parts) else _down(node, parts, i, rules)
    if t in _SCALARS or _leaf(node):
        return node
    plain = _plain(node)
    if plain is not node:
        new = _rewrite(plain, parts, i, rules)
        return node if new is plain else new
    if isinstance(node, _ITEMS):
        return _items(node, parts, i, rules)
    raise _unchecked(node, rules[0].path)


def _items(node: Any, parts: tuple[str, ...], i: int, rules: tuple[_Rule, ...]) -> Any:
    """A list, tuple or set with the path applied to each item."""
    last = i == len(parts)
    items = [
        _at(rules, item) if last and type(item) is dict else _rewrite(item, parts, i, rules)
        for item in node
    ]
    if all(map(is_, items, node)):
        return node
    return tuple(items) if isinstance(node, tuple) else items


def _down(node: Mapping[Any, Any], parts: tuple[str, ...], i: int,
          rules: tuple[_Rule, ...]) -> Any:  # fmt: skip
    """A mapping with the path going on into its field ``parts[i]``."""
    name = parts[i]
    out: Any = node
    keys = [name] if type(node) is dict and name in node else _keys(node, name, rules[0].path)
    for key in keys:
        child = node[key]
        new = _rewrite(child, parts, i + 1, rules)
        if new is not child:
            if out is node:
                out = _copy(node)
            out[key] = new
    return out


def _at(rules: tuple[_Rule, ...], node: Mapping[Any, Any]) -> Any:
    """``node`` with each rule applied to its field, in order, copied on write."""
    if type(node) is not dict:
        return _at_keys(rules, node)
    out: Any = node
    missed = False
    for rule in rules:
        value = out.get(rule.key, MISSING)
        if value is MISSING:
            missed = True
            continue
        new = _REMOVE if rule.drop else rule.decide(value)
        if new is value:
            continue
        if out is node:
            out = dict(node)
        if new is _REMOVE:
            del out[rule.key]
        else:
            out[rule.key] = new
    if missed and not _strkeys(node):  # other keys (enum members) may name a field
        return _at_keys(rules, node)
    return out


def _at_keys(rules: tuple[_Rule, ...], node: Mapping[Any, Any]) -> Any:
    """:func:`_at` for any mapping: the rules match its own keys."""
    out: Any = node
    for rule in rules:
        for key in _keys(node, rule.key, rule.path):
            if out is not node and key not in out:
                continue  # an earlier rule removed it
            value = out[key]
            new = rule.decide(value)
            if new is value:
                continue
            if out is node:
                out = _copy(node)
            if new is _REMOVE:
                del out[key]
            else:
                out[key] = new
    return out


def _reach(node: Any, parts: tuple[str, ...], i: int, rule: _Rule) -> None:
    """Check ``rule`` on every value (or MISSING) that ``parts[i:]`` reaches. A
    scalar where the path needs a mapping counts as MISSING (fail closed for
    ``required``)."""
    t = type(node)
    if t is list or t is tuple:
        for item in node:
            _reach(item, parts, i, rule)
    elif t is dict or (t not in _SCALARS and isinstance(node, Mapping)):
        name = parts[i]
        keys = [name] if t is dict and name in node else _keys(node, name, rule.path)
        if not keys:
            rule.check(MISSING)
        for key in keys:
            if i == len(parts) - 1:
                rule.check(node[key])
            else:
                _reach(node[key], parts, i + 1, rule)
    elif t in _SCALARS or _leaf(node):
        rule.check(MISSING)
    elif (plain := _plain(node)) is not node:
        _reach(plain, parts, i, rule)
    elif isinstance(node, _ITEMS):
        for item in node:
            _reach(item, parts, i, rule)
    else:
        raise _unchecked(node, rule.path)


def _strings(node: Any, out: list[str], numbers: bool = False) -> None:
    """Append to ``out`` every string leaf and mapping key (``str(key)``) of ``node``;
    bytes decoded, other scalars that are not numbers, booleans or null as
    ``str(value)``; with ``numbers``, numbers (not booleans) as ``str(value)`` too."""
    t = type(node)
    if t is dict or (t is not list and isinstance(node, Mapping)):
        out.extend(map(str, node))
        values: Any = node.values()
    elif t is list or isinstance(node, _ITEMS):
        values = node
    elif isinstance(node, str):
        out.append(node)
        return
    elif t in _SCALARS:
        if numbers and t is not bool and node is not None:
            out.append(str(node))
        return
    elif isinstance(node, (bytes, bytearray, memoryview)):
        out.append(bytes(node).decode("utf-8", "replace"))
        return
    else:
        plain = _plain(node)
        _strings(str(node) if plain is node else plain, out, numbers)
        return
    for value in values:
        kind = type(value)
        if kind is str:
            out.append(value)
        elif kind is int or kind is float:  # inline: a list of a million numbers
            if numbers:
                out.append(repr(value))
        elif kind not in _SCALARS:
            _strings(value, out, numbers)


def _default(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return dict(obj)
    plain = _plain(obj)
    return str(obj) if plain is obj else plain


def _split(c: Any, where: str, text: object) -> tuple[str, ...] | None:
    parts = tuple(text.split(".")) if isinstance(text, str) else ()
    if not parts or not all(parts):
        c.error(where, f"expected a dotted field path like 'a.b.c', got {short(text)}")
        return None
    return parts


class _Rule:
    """One field rule: a validation rule (``action`` None) or an action rule."""

    __slots__ = (
        "action", "always", "con", "drop", "field", "key", "others", "parts", "path", "selector",
    )  # fmt: skip

    def __init__(self, path: str, field: str, parts: tuple[str, ...], con: Constraint,
                 action: str | None) -> None:  # fmt: skip
        self.path, self.field, self.parts, self.con, self.action = path, field, parts, con, action
        self.key = parts[-1]
        # a selector picks the values an action (deny, redact...) acts on: Python's
        # own "$" (also before a final newline) only makes it pick more
        picks = action and con.regex is not None
        self.selector = re.compile(con.spec["matches"]) if picks else None
        checks = tuple(ch for ch in con.checks if ch[0] != "matches" or not action)
        self.others = Constraint(checks, con.required, con.spec, None) if checks else None
        self.always = not checks and self.selector is None
        self.drop = self.always and action == "filter"  # removes any value

    def check(self, value: Any) -> None:
        """Validation: raise when ``value`` (or MISSING) violates the rule."""
        op = self.con.failure(_plain(value))
        if op is not None:
            what = f"violates {self.con.describe(op)}"
            raise OutputViolation("output_validation", f"output field {self.field!r} {what}",
                                  self.path)  # fmt: skip

    def decide(self, value: Any) -> Any:
        """The field's new value: ``_REMOVE`` to filter, ``value`` itself when the
        action does not apply. Raises for ``deny``."""
        op = None if self.others is None else self.others.failure(_plain(value))
        selector, action = self.selector, self.action
        if op is None and not self.always:
            if selector is None:
                return value
            if not isinstance(value, str):
                texts: list[str] = []
                _strings(value, texts, numbers=True)
                if not any(map(selector.search, texts)):
                    return value
            elif action == "redact":
                new, count = selector.subn(REDACTED, value)
                if not count:
                    return value
                return REDACTED if selector.search(new) is not None else new
            elif selector.search(value) is None:
                return value
        if action == "filter":
            return _REMOVE
        if action == "redact":
            return value if isinstance(value, str) and value == REDACTED else REDACTED
        if action == "truncate":
            n = self.con.spec["maxLength"]
            cut = isinstance(value, (str, list, tuple)) and len(value) > n
            return value[:n] if cut else value
        what = "is present"
        if op is not None and self.others is not None:
            what = f"violates {self.others.describe(op)}"
        elif selector is not None:
            what = f"matches {selector.pattern!r}"
        detail = f"output field {self.field!r} {what} (action deny)"
        raise OutputViolation("output_sanitization", detail, self.path)

    @classmethod
    def compile(cls, c: Any, where: str, field: object, rule: object) -> _Rule | None:
        """The rule at ``where``; problems go to ``c.error``."""
        parts = _split(c, where, field)
        if not isinstance(rule, Mapping):
            c.error(where, f"expected a mapping of operators, got {short(rule)}")
            return None
        if not rule:
            c.error(where, "empty rule: give constraint operators and/or an 'action'")
        action = rule.get("action")
        if "action" in rule and action not in ACTIONS:
            c.error(
                f"{where}.action", f"unknown action {short(action)}{suggest(str(action), ACTIONS)}"
            )
        if action == "truncate" and "maxLength" not in rule:
            c.error(where, "action 'truncate' needs 'maxLength' in the same rule")
        con = compile_constraint(c, where, rule, extra_keys=("action",))
        if con is None or parts is None or not rule:
            return None
        return cls(where, str(field), parts, con, action if isinstance(action, str) else None)


def _absent(where: str, parts: tuple[str, ...]) -> _Rule:
    """A validation rule that any present value violates."""
    spec = {"require_fields_absent": ".".join(parts)}
    never = Constraint((("require_fields_absent", lambda v: False),), False, spec, None)
    return _Rule(where, ".".join(parts), parts, never, None)


class OutputRules:
    """The compiled ``conditions.output`` of one grant. ``sanitizes``: whether any
    rule has an action (the result may be changed)."""

    __slots__ = (
        "absent", "audit", "groups", "max_bytes", "path", "patterns", "sanitizes", "validations",
    )  # fmt: skip

    def __init__(self, path: str) -> None:
        self.path = path
        self.audit = False  # set for audited conditions: checked, result never changed
        self.validations: list[_Rule] = []
        self.groups: list[tuple[tuple[str, ...], tuple[_Rule, ...]]] = []  # by parent path
        self.max_bytes: int | None = None
        self.patterns: tuple[re.Pattern[str], ...] = ()
        self.absent: list[_Rule] = []
        self.sanitizes = False

    @classmethod
    def compile(cls, c: Any, path: str, spec: object) -> OutputRules | None:
        """Compile ``spec`` (``path`` ends in ``conditions.output``). Every problem
        goes to ``c.error`` with the path of the bad entry; ``None`` if any."""
        if not isinstance(spec, Mapping):
            c.error(path, f"expected a mapping of output rules, got {short(spec)}")
            return None
        before, rules, patterns = len(c.errors), cls(path), []
        for key, value in spec.items():
            where = f"{path}.{key}"
            if key == "max_bytes":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    c.error(where, f"expected a non-negative integer, got {short(value)}")
                rules.max_bytes = value
            elif key in ("deny_if_patterns", "require_fields_absent"):
                if not isinstance(value, list):
                    c.error(where, f"expected a list, got {short(value)}")
                for n, item in enumerate(value if isinstance(value, list) else ()):
                    at = f"{where}[{n}]"
                    if key == "require_fields_absent":
                        parts = _split(c, at, item)
                        rules.absent += [_absent(at, parts)] if parts else []
                    elif not isinstance(item, str):
                        c.error(at, f"expected a regular expression, got {short(item)}")
                    else:
                        try:
                            patterns.append(re.compile(item))
                        except re.error as exc:
                            c.error(at, f"bad regular expression {short(item)}: {exc}")
            elif (rule := _Rule.compile(c, where, key, value)) is None:
                pass
            elif rule.action is None:
                rules.validations.append(rule)
            elif rules.groups and rules.groups[-1][0] == rule.parts[:-1]:
                # consecutive rules on the same mappings: one walk, same effect
                rules.groups[-1] = (rule.parts[:-1], (*rules.groups[-1][1], rule))
            else:
                rules.groups.append((rule.parts[:-1], (rule,)))
        rules.patterns, rules.sanitizes = tuple(patterns), bool(rules.groups)
        return None if len(c.errors) > before else rules

    def apply(self, result: object) -> object:
        """Validate, sanitize and check ``result``; the result to return (the same
        object when nothing changed). Raises :class:`OutputViolation`."""
        try:
            for rule in self.validations:
                _reach(result, rule.parts, 0, rule)
            for parent, rules in self.groups:
                result = _rewrite(result, parent, 0, rules)
            if self.max_bytes is not None and _size(result) > self.max_bytes:
                detail = f"output is larger than max_bytes {self.max_bytes} (or not JSON)"
                raise OutputViolation("output_validation", detail, f"{self.path}.max_bytes")
            if self.patterns:  # strings, keys and numbers: a card number is one either way
                texts: list[str] = []
                _strings(result, texts, numbers=True)
                if len(texts) > 64:  # each distinct value searched once (a list of zeros)
                    texts = list(dict.fromkeys(texts))
                for n, pattern in enumerate(self.patterns):
                    if not any(map(pattern.search, texts)):
                        continue
                    detail = f"output matches deny_if_patterns[{n}] {pattern.pattern!r}"
                    where = f"{self.path}.deny_if_patterns[{n}]"
                    raise OutputViolation("output_validation", detail, where)
            for rule in self.absent:
                _reach(result, rule.parts, 0, rule)
        except OutputViolation:
            raise
        except RecursionError:
            detail = "output is nested too deeply (or circular) to check"
            raise OutputViolation("output_validation", detail, None) from None
        except Exception as exc:  # odd data must deny, never escape (fail closed)
            detail = f"output cannot be checked by the output rules ({type(exc).__name__})"
            raise OutputViolation("output_validation", detail, None) from None
        return result


def _size(result: object) -> float:
    """Bytes of the JSON encoding; infinite when it cannot be encoded."""
    try:
        text = json.dumps(result, ensure_ascii=False, default=_default)
    except (TypeError, ValueError):
        return float("inf")
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
