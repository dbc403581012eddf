"""Approval data: the exact form of a call, and the request that waits for a person.

The bottom of the approvals stack (the stores and the evaluator build on it; it
imports nothing of D2):

* :func:`canonical_arguments` and :func:`call_digest` say which call an approval
  is for: the SHA-256 of the tool id, the canonical JSON of the bound arguments,
  the user id and the policy version. Two calls share a digest only when they are
  the same call.
* :class:`ApprovalRequest` is one request for such a call. Its ``id`` is random
  (:func:`new_request_id`), never derived from the call: once the request is used,
  rejected or expired, its id is dead, and the next identical call opens a new
  request with a new id.
* :func:`json_arguments` shows arguments to approvers and the decision log
  (secrets hidden).
"""

from __future__ import annotations

import collections
import enum
import json
import math
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

__all__ = [
    "ApprovalRequest",
    "NoCanonicalForm",
    "call_digest",
    "canonical_arguments",
    "json_arguments",
    "new_request_id",
]


_MAX_DEPTH = 64
_POINTER = 8 if sys.maxsize > 2**32 else 4  # sizeof(PyObject *): Py_ssize_t's size
_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement (or type())
_MANAGED_WEAKREF = 1 << 3  # CPython 3.12+: __weakref__ kept outside the instance's memory
_MANAGED_DICT = 1 << 4  # CPython 3.11+: __dict__ kept outside the instance's memory
_UNSET = {"__t": "unset"}  # a slot that holds nothing (no value has this form)
_MISSING = object()

# Exact stdlib value types digested by an exact text: (module, qualname) -> how.
# Looked up by name so that digesting never imports a module the app did not.
_ATOMS: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("datetime", "date"): lambda v: v.isoformat(),
    ("datetime", "timedelta"): lambda v: [v.days, v.seconds, v.microseconds],
    ("datetime", "timezone"): repr,  # offset and name
    ("decimal", "Decimal"): str,  # exact: sign, digits, exponent, NaN payloads
    ("fractions", "Fraction"): str,
    ("uuid", "UUID"): str,
    ("pathlib", "PurePosixPath"): str,
    ("pathlib", "PureWindowsPath"): str,
    ("pathlib", "PosixPath"): str,
    ("pathlib", "WindowsPath"): str,
    ("ipaddress", "IPv4Address"): str,
    ("ipaddress", "IPv6Address"): str,  # with its scope id
    ("ipaddress", "IPv4Network"): str,
    ("ipaddress", "IPv6Network"): str,
    ("ipaddress", "IPv4Interface"): str,
    ("ipaddress", "IPv6Interface"): str,
}


class NoCanonicalForm(ValueError):
    """An argument has no exact, stable form to digest (an approval of such a call
    could be reused for another call, so none is given)."""


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _text(value: Any, depth: int) -> str:
    return json.dumps(_canon(value, depth), sort_keys=True, separators=(",", ":"))


def _pairs(items: Iterable[tuple[Any, Any]], depth: int) -> list[list[Any]]:
    """Key/value pairs of a mapping, each key as its canonical text (in order)."""
    return [[_text(k, depth), _canon(v, depth)] for k, v in items]


def _int(value: int) -> Any:
    return value if -(2**63) <= value < 2**63 else {"__t": "int", "v": format(value, "x")}


def _float(value: float) -> Any:
    return value if math.isfinite(value) else {"__t": "float", "v": repr(value)}


def _dict(value: dict[Any, Any], depth: int) -> Any:
    if all(type(k) is str for k in value):
        return {"__t": "dict", "v": {k: _canon(v, depth) for k, v in value.items()}}
    return {"__t": "map", "v": sorted(_pairs(value.items(), depth))}


def _defaultdict(value: Any, depth: int) -> Any:
    factory = value.default_factory
    if factory is not None and factory not in _EXACT:  # a function: its behaviour is code
        raise NoCanonicalForm("a defaultdict whose default_factory is not a built-in type")
    name = None if factory is None else factory.__name__
    return {"__t": "defaultdict", "f": name, "v": _dict(dict.copy(value), depth)}


def _zone(value: Any) -> Any:
    if not isinstance(value.key, str):  # ZoneInfo.from_file(): no name to tell it by
        raise NoCanonicalForm("a ZoneInfo made from a file has no canonical form")
    return {"__t": "zoneinfo.ZoneInfo", "v": value.key}


def _clock(value: Any, depth: int) -> Any:
    """A datetime or time: its fields, ``fold`` and its time zone (``None``, a
    ``datetime.timezone`` or a ``ZoneInfo``; any other is refused)."""
    zone = value.tzinfo
    return {
        "__t": _qualname(type(value)),
        "v": value.replace(tzinfo=None).isoformat(),
        "f": value.fold,
        "z": None if zone is None else _canon(zone, depth),
    }


def _stdlib(cls: type, module: str, *names: str) -> bool:
    """Whether ``cls`` is exactly the class ``module.name`` (one of ``names``)."""
    return (
        cls.__module__ == module
        and cls.__qualname__ in names
        and (getattr(sys.modules.get(module), cls.__qualname__, None) is cls)
    )


def _enum(value: enum.Enum, depth: int) -> Any:
    try:
        inner = _canon(value._value_, depth)
    except NoCanonicalForm:  # members are singletons: the name tells them apart
        inner = None
    return {"__t": f"enum:{_qualname(type(value))}", "n": value._name_, "v": inner}


_EXACT: dict[type, Callable[[Any, int], Any]] = {
    type(None): lambda v, d: None,
    str: lambda v, d: v,
    bool: lambda v, d: v,
    int: lambda v, d: _int(v),
    float: lambda v, d: _float(v),
    complex: lambda v, d: {"__t": "complex", "v": [_float(v.real), _float(v.imag)]},
    list: lambda v, d: [_canon(x, d) for x in v],
    tuple: lambda v, d: {"__t": "tuple", "v": [_canon(x, d) for x in v]},
    dict: _dict,
    set: lambda v, d: {"__t": "set", "v": sorted(_text(x, d) for x in v)},
    frozenset: lambda v, d: {"__t": "frozenset", "v": sorted(_text(x, d) for x in v)},
    bytes: lambda v, d: {"__t": "bytes", "v": v.hex()},
    bytearray: lambda v, d: {"__t": "bytearray", "v": bytes(v).hex()},
    collections.OrderedDict: lambda v, d: {"__t": "odict", "v": _pairs(v.items(), d)},
    collections.defaultdict: _defaultdict,
}

# Built-in types an app's class may extend: digested as their built-in value (read
# through the built-in's own methods, never an override) plus the instance's state.
_BUILTIN_VALUE: dict[type, Callable[[Any], Any]] = {
    str: str.__str__,
    int: int.__int__,
    float: float.__float__,
    complex: lambda v: complex(complex.real.__get__(v), complex.imag.__get__(v)),
    list: list.copy,
    tuple: lambda v: tuple(tuple.__iter__(v)),
    dict: dict.copy,
    set: set.copy,
    frozenset: frozenset.copy,
    bytes: lambda v: bytes(memoryview(v)),
    bytearray: lambda v: bytearray(memoryview(v)),
}


def _declared_slots(cls: type) -> list[str]:
    """The slot names ``cls`` itself declares, as stored (private names mangled),
    without ``__dict__`` and ``__weakref__``."""
    slots = vars(cls).get("__slots__", ())
    names = [slots] if isinstance(slots, str) else list(slots)
    owner = cls.__name__.lstrip("_")
    return [
        f"_{owner}{name}" if name.startswith("__") and not name.endswith("__") and owner else name
        for name in names
        if name not in ("__dict__", "__weakref__")
    ]


def _layout_is_python(cls: type) -> bool:
    """Whether ``cls`` adds nothing to its base's instance memory but what Python
    declares and D2 can read: slots, a ``__dict__``, a ``__weakref__``. A class
    written in C (a file, a lock, a socket, ``io.StringIO``) keeps state no
    attribute shows, and fails."""
    base = cls.__base__
    if base is None or not cls.__flags__ & _HEAP_TYPE or cls.__itemsize__ != base.__itemsize__:
        return False
    own = vars(cls)
    slots = _declared_slots(cls)
    members = [k for k, v in own.items() if type(v) is types.MemberDescriptorType]
    if sorted(members) != sorted(slots):
        return False
    size = base.__basicsize__ + _POINTER * len(slots)
    if "__dict__" in own and not cls.__flags__ & _MANAGED_DICT:
        size += _POINTER
    if "__weakref__" in own and not cls.__flags__ & _MANAGED_WEAKREF:
        size += _POINTER
    return bool(cls.__basicsize__ == size)


def _state(value: Any, chain: list[type], depth: int, hide: str | None = None) -> Any:
    """Everything an instance holds: its ``__dict__`` and every slot of the classes
    of ``chain`` (an unset slot as such). ``hide``: a ``__dict__`` key left out."""
    state: dict[str, Any] = {}
    if type(value).__dictoffset__:
        found = object.__getattribute__(value, "__dict__")
        if type(found) is not dict:
            raise NoCanonicalForm(f"a {_qualname(type(value))} has an unreadable __dict__")
        if hide is not None:
            found = {k: v for k, v in found.items() if k != hide}
        state["__dict__"] = _dict(found, depth)
    for i, cls in enumerate(chain):
        for name in _declared_slots(cls):
            try:
                held = vars(cls)[name].__get__(value, type(value))
            except AttributeError:
                state[f"{i}:{name}"] = _UNSET
                continue
            state[f"{i}:{name}"] = _canon(held, depth)
    return state


def _secret_base() -> type | None:
    """pydantic's secret base class, when pydantic is loaded (else no value is one)."""
    found = getattr(sys.modules.get("pydantic.types"), "_SecretBase", None)
    return found if isinstance(found, type) else None


def _instance(value: Any, cls: type, depth: int) -> Any:
    """An instance of an app's class: its type and its whole state. Accepted only
    when every class between it and ``object`` (or the built-in type it extends)
    keeps its state where Python shows it."""
    chain: list[type] = []
    base: type = cls
    while base is not object and base not in _BUILTIN_VALUE:
        if not _layout_is_python(base):
            raise NoCanonicalForm(
                f"a {_qualname(cls)} value has no canonical form (its class "
                f"{_qualname(base)} keeps state Python does not show)"
            )
        chain.append(base)
        base = base.__base__ or object  # (never None past the layout check)
    if base is object and callable(value):
        raise NoCanonicalForm(f"a {_qualname(cls)} value is callable: its behaviour is code")
    secret = _secret_base()
    if secret is not None and isinstance(value, secret):  # digested, never in the text
        import hashlib  # off the cold path: loaded on first use

        hidden = vars(value).get("_secret_value", _MISSING)
        if hidden is _MISSING:
            raise NoCanonicalForm(f"a {_qualname(cls)} value holds no secret value")
        digest = hashlib.sha256(_text(hidden, depth).encode()).hexdigest()
        return {
            "__t": f"secret:{_qualname(cls)}",
            "h": digest,
            "v": _state(value, chain, depth, hide="_secret_value"),
        }
    state = _state(value, chain, depth)
    if base is object:
        return {"__t": f"object:{_qualname(cls)}", "v": state}
    inner = _canon(_BUILTIN_VALUE[base](value), depth)
    return {"__t": f"{base.__name__}:{_qualname(cls)}", "v": inner, "s": state}


def _canon(value: Any, depth: int = 0) -> Any:
    """An exact, typed stand-in for ``value`` (JSON values; other types tagged
    with ``__t``) or :class:`NoCanonicalForm`. Two values get the same stand-in
    only when they are the same type with the same content, all the way down."""
    if depth > _MAX_DEPTH:
        raise NoCanonicalForm("nested too deeply")
    depth += 1
    cls = type(value)
    exact = _EXACT.get(cls)
    if exact is not None:
        return exact(value, depth)
    atom = _ATOMS.get((cls.__module__, cls.__qualname__))
    if atom is not None and _stdlib(cls, cls.__module__, cls.__qualname__):
        return {"__t": _qualname(cls), "v": atom(value)}
    if _stdlib(cls, "datetime", "datetime", "time"):
        return _clock(value, depth)
    if _stdlib(cls, "zoneinfo", "ZoneInfo"):
        return _zone(value)
    if isinstance(value, enum.Enum):
        return _enum(value, depth)
    return _instance(value, cls, depth)


def canonical_arguments(arguments: Any) -> str:
    """Exact canonical JSON of bound arguments (sorted keys, ASCII, types tagged),
    as digested by :func:`call_digest`. Raises :class:`NoCanonicalForm` for a value
    whose state cannot be read exactly (a file, a lock, a socket, a function, an
    instance of a class written in C...)."""
    try:
        return _text(arguments, 0)
    except NoCanonicalForm:
        raise
    except Exception as exc:  # anything unexpected: no approval can be tied to it
        raise NoCanonicalForm(f"{type(exc).__name__}: {exc}") from None


_SAFE_INT = 2**53  # beyond this, JSON readers (JavaScript) round: shown as text


def _shown_key(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= 200 else text[:200] + "..."


def _shown_mapping(value: Mapping[Any, Any], depth: int) -> dict[str, Any]:
    """A mapping for display. String keys as they are; when any key is not a
    string, every key as its ``repr`` (``1`` and ``'1'``), so keys of different
    types never merge into one entry; reprs that repeat get a ``#n`` suffix."""
    items = list(value.items())
    if all(type(k) is str for k, _ in items):
        return {k: _shown(v, depth) for k, v in items}
    shown: dict[str, Any] = {}
    for k, v in items:
        name = base = _shown_key(k)
        n = 1
        while name in shown:
            n += 1
            name = f"{base} #{n}"
        shown[name] = _shown(v, depth)
    return shown


def _shown_int(value: int) -> Any:
    value = int.__int__(value)
    if -_SAFE_INT <= value <= _SAFE_INT:
        return value
    try:
        return str(value)  # the exact decimal digits
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        return hex(value)


def _shown(value: Any, depth: int = 0) -> Any:
    """A JSON value for display (approvers, decision logs): never raises; secrets
    and excluded model fields stay hidden (``model_dump(mode="json")``)."""
    if depth > _MAX_DEPTH:
        return "<nested too deeply>"
    depth += 1
    try:
        if value is None or type(value) in (bool, str):
            return value
        if isinstance(value, str):
            return str.__str__(value)
        if isinstance(value, float):
            return float.__float__(value)
        if isinstance(value, int):
            return _shown_int(value)
        if isinstance(value, (list, tuple)):
            return [_shown(v, depth) for v in value]
        if isinstance(value, Mapping):
            return _shown_mapping(value, depth)
        if isinstance(value, (set, frozenset)):
            return sorted((_shown(v, depth) for v in value), key=repr)
        if isinstance(value, (bytes, bytearray)):
            return {"bytes": bytes(value).hex()}
        dump = getattr(value, "model_dump", None)
        if callable(dump):
            return _shown(dump(mode="json"), depth)
        fields = getattr(type(value), "__dataclass_fields__", None)
        if isinstance(fields, dict):
            shown = {name: _shown(getattr(value, name), depth) for name in fields}
            extra = getattr(value, "__dict__", None)  # attributes set outside the fields
            if isinstance(extra, dict):
                for name, v in extra.items():
                    if isinstance(name, str) and name not in shown:
                        shown[name] = _shown(v, depth)
            return shown
        text = repr(value)
    except Exception:  # a display must never fail the call
        text = f"<{type(value).__qualname__}>"
    return text if len(text) <= 1000 else text[:1000] + "..."


def json_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``arguments`` as plain JSON values (what an approver and the decision log
    are shown); never raises. Keys of different types never merge; integers
    beyond 2**53 are shown as their decimal digits (a string)."""
    return _shown_mapping(arguments, 0)


def call_digest(tool_id: str, arguments: Mapping[str, Any], user_id: str, version: str) -> str:
    """What identifies this exact call for approvals (hex SHA-256 of the tool id,
    the canonical arguments, the user id and the policy version). Raises
    :class:`NoCanonicalForm` when an argument cannot be digested exactly."""
    import hashlib  # off the cold path: loaded on first use

    text = json.dumps(
        [tool_id, canonical_arguments(dict(arguments)), user_id, version],
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def new_request_id() -> str:
    """A fresh, unguessable request id: 64 hex characters (256 random bits)."""
    import secrets  # off the cold path: loaded on first use

    return secrets.token_hex(32)


class ApprovalRequest(NamedTuple):
    """A call waiting for approval.

    ``id``: the request's random id (what ``approve`` takes); ``tool_id``,
    ``user_id``: who asked for what; ``arguments``: the bound arguments, as JSON
    values; ``policy_version``: the version (cloud) or file digest (local) it was
    asked under; ``expires_at``: Unix seconds after which approving or using it
    fails; ``approver_roles``: the roles that may approve it.
    """

    id: str
    tool_id: str
    user_id: str
    arguments: dict[str, Any]
    policy_version: str
    expires_at: float
    approver_roles: tuple[str, ...]

    def to_json(self) -> str:
        """The request as one JSON object (how shared stores keep it)."""
        return json.dumps(
            {**self._asdict(), "approver_roles": list(self.approver_roles)},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ApprovalRequest:
        """Read a request written by :meth:`to_json`."""
        data = json.loads(text)
        return cls(
            id=str(data["id"]),
            tool_id=str(data["tool_id"]),
            user_id=str(data["user_id"]),
            arguments=dict(data["arguments"]),
            policy_version=str(data["policy_version"]),
            expires_at=float(data["expires_at"]),
            approver_roles=tuple(str(r) for r in data["approver_roles"]),
        )
