"""Standard-library values written in Python, digested and shown by their text.

A path, an ``ipaddress`` value, a ``Fraction`` or a ``UUID`` is one value the
digest and the view write as its text. But these classes are written in Python:
they keep their state in slots and a ``__dict__`` anyone holding the object can
set, and much of it is caches. A path's text is a cache (``_str``) beside the parts
that ``p.parent`` and ``p / x`` read; a network's ``broadcast_address`` is a cache
``hosts()`` reads. Set by hand, a cache makes the text describe another value than
the one the tool acts on.

:func:`atom_text` gives the text only when it describes the whole value:

* every value its state holds is plain (an exact ``str``, ``int``, ``bytes``...,
  a tuple or list of such, a value of these classes, the class's own method
  bound to it, a function of the standard library over plain values, a member of
  a standard-library enum): reading the text then runs no code of the app;
* every slot and ``__dict__`` entry it has is what the class itself builds from
  that text: a fresh value is made from the text, its caches are filled (its
  text, parts, hash, order, every ``cached_property``), and each entry of the
  value must equal the fresh value's (a ``_raw_paths`` list must join to the same
  path). An entry the fresh value does not have, or holds otherwise, refuses it.

So a value used before the call (printed, hashed, ``broadcast_address`` read) is
the same call as a fresh one, and a value whose caches lie has no canonical form.

It imports nothing of D2 but :mod:`d2.core._classes`.
"""

from __future__ import annotations

import functools
import sys
import types
from typing import Any

from ._classes import (
    NoCanonicalForm,
    _dictoffset,
    _enum_member,
    _instance_dict,
    _known,
    _module,
    _module_dict,
    _module_named,
    _mro,
    _qualname,
    _qualname_of,
    _slot_values,
    _space,
    _stdlib,
)

__all__ = ["atom_copy", "atom_text", "is_python_atom"]

_PATHS = ("PurePosixPath", "PureWindowsPath", "PosixPath", "WindowsPath")
# (module, qualname) of the classes this module vouches for (pathlib's classes live in
# pathlib._local on Python 3.13)
_PYTHON = frozenset(
    [("pathlib", name) for name in _PATHS]
    + [("pathlib._local", name) for name in _PATHS]
    + [
        ("ipaddress", name)
        for name in (
            "IPv4Address",
            "IPv6Address",
            "IPv4Network",
            "IPv6Network",
            "IPv4Interface",
            "IPv6Interface",
        )
    ]
    + [("fractions", "Fraction"), ("uuid", "UUID")]
)
_SCALARS = frozenset(id(t) for t in (str, int, bool, float, bytes, type(None)))  # by identity
_NESTED = 4  # values of these classes inside one another (interface -> network -> address)
_LEVELS = 8  # lists and tuples inside one another in a value's state, at most
_MAX_ITEMS = 10_000  # items of lists and tuples read to check one value, at most
_ENUMS = (("uuid", "SafeUUID"),)  # the standard library's enums a value's state may hold
# what reading a path fills: its parts, drive, root, name (3.12+: parsed lazily)
_PATH_PARTS = ("parts", "drive", "root", "anchor", "name")


def is_python_atom(cls: type) -> bool:
    """Whether ``cls`` is exactly one of the standard-library classes written in
    Python that :func:`atom_text` writes (by module, qualname and identity)."""
    module, qualname = _module(cls), _qualname_of(cls)
    return (
        type(module) is str
        and type(qualname) is str
        and (module, qualname) in _PYTHON
        and _stdlib(cls, module, qualname)
    )


def _state(value: Any, cls: type) -> dict[str, Any]:
    """Every set slot and ``__dict__`` entry of ``value``, by name (a ``__dict__``
    key is prefixed ``.``: a slot and an entry never share a name)."""
    state = dict(_slot_values(value, cls))
    if _dictoffset(cls):
        for key, held in dict.items(_instance_dict(value, cls)):
            if type(key) is not str:
                raise NoCanonicalForm(
                    f"a {_qualname(cls)} value has an attribute that is not named"
                )
            state["." + key] = held
    return state


def _own_method(method: types.MethodType, owner: Any) -> bool:
    """Whether ``method`` is a function of ``owner``'s class's MRO, bound to it."""
    if method.__self__ is not owner:
        return False
    func = method.__func__
    return any(held is func for klass in _mro(type(owner)) for held in _space(klass).values())


def _stdlib_function(func: types.FunctionType, budget: _Budget) -> bool:
    """Whether ``func`` is a function of a standard-library module (its globals are
    that module's) over plain values (its closure and defaults)."""
    name = func.__module__
    module = _module_named(name) if type(name) is str else None
    if type(module) is not types.ModuleType or func.__globals__ is not _module_dict(module):
        return False
    if name.partition(".")[0] not in sys.stdlib_module_names:
        return False
    cells = func.__closure__ or ()
    try:
        held = [cell.cell_contents for cell in cells]
    except ValueError:  # an empty cell
        return False
    return (
        _plain(held, None, 0, budget)
        and _plain(func.__defaults__, None, 0, budget)
        and not func.__kwdefaults__
    )


class _Budget:
    """One check's memory of the lists and tuples read (each is read once: a value
    sharing one list many times, ``x = [x, x]`` nested, is read in linear time) and
    its budget of items: past it, the value has no canonical form."""

    __slots__ = ("left", "plain", "same")

    def __init__(self) -> None:
        self.left = _MAX_ITEMS
        self.plain: dict[int, tuple[bool, Any]] = {}
        self.same: dict[tuple[int, int], tuple[bool, Any, Any]] = {}

    def spend(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise NoCanonicalForm(
                f"a standard-library value holds more than {_MAX_ITEMS:,} items in its state "
                "(set by hand): pass a value made afresh"
            )


def _plain(held: Any, owner: Any, depth: int, budget: _Budget, level: int = 0) -> bool:
    """Whether ``held`` (found in the state of ``owner``) can be read, compared and
    written by the standard library without running any code of the app."""
    cls = type(held)
    if id(cls) in _SCALARS:
        return True
    if cls is tuple or cls is list:
        known = budget.plain.get(id(held))
        if known is not None:
            return known[0]
        if level >= _LEVELS:
            return False
        budget.spend(len(held))
        budget.plain[id(held)] = (True, held)  # (met again inside itself: as it is)
        found = all(_plain(item, owner, depth, budget, level + 1) for item in held)
        budget.plain[id(held)] = (found, held)
        return found
    if cls is types.MethodType:
        return owner is not None and _own_method(held, owner)
    if cls is types.FunctionType:
        return _stdlib_function(held, budget)
    if is_python_atom(cls):
        return depth < _NESTED and all(
            _plain(item, held, depth + 1, budget) for item in _state(held, cls).values()
        )
    # a member of one of the standard library's enums (a UUID's is_safe), by identity
    return any(cls is _known(module, name) for module, name in _ENUMS) and bool(
        _enum_member(held, cls)[0]
    )


def _fill(fresh: Any, cls: type) -> None:
    """Fill the caches of ``fresh`` (a value just made by its class from a text)
    the way using it would: its text, hash, order, parts, every ``cached_property``."""
    twin = fresh  # compared with itself: equality and order fill their caches
    for step in (str, hash, repr, lambda v: v == twin, lambda v: v < twin):
        try:
            step(fresh)
        except Exception:  # a cache this class does not have
            continue
    path = _module(cls).startswith("pathlib")
    names = list(_PATH_PARTS) if path else []
    for klass in _mro(cls):
        for name, held in _space(klass).items():
            if type(held) is functools.cached_property:
                names.append(name)
    for name in names:
        try:
            getattr(fresh, name)
        except Exception:
            continue
    if path:
        try:
            fresh.match("*")  # 3.12: the lines a pattern is matched against
        except Exception:
            pass


def _same(
    one: Any, other: Any, owner: Any, fresh: Any, depth: int, budget: _Budget, level: int = 0
) -> bool:
    """Whether ``one`` (held by ``owner``) is what ``other`` (held by ``fresh``) is,
    both plain (:func:`_plain`)."""
    if one is other:
        return True
    cls = type(one)
    if cls is not type(other):
        return False
    if id(cls) in _SCALARS:
        return bool(one == other)  # exact built-ins: their own equality
    if cls is tuple or cls is list:
        pair = (id(one), id(other))
        known = budget.same.get(pair)
        if known is not None:
            return known[0]
        if level >= _LEVELS or len(one) != len(other):
            return False
        budget.spend(len(one))
        budget.same[pair] = (True, one, other)  # (met again inside itself: as it is)
        found = all(
            _same(a, b, owner, fresh, depth, budget, level + 1)
            for a, b in zip(one, other, strict=True)
        )
        budget.same[pair] = (found, one, other)
        return found
    if cls is types.MethodType:  # the class's own method, bound to each
        return one.__self__ is owner and other.__self__ is fresh and one.__func__ is other.__func__
    if cls is types.FunctionType:  # the class's own code (a network's hosts()): what it
        if one.__code__ is not other.__code__ or one.__code__.co_argcount:  # gives
            return False
        return _same(one(), other(), owner, fresh, depth, budget, level)
    if is_python_atom(cls) and depth < _NESTED:
        mine = _checked_copy(one, cls, depth + 1, budget)[0]
        return mine == _checked_copy(other, cls, depth + 1, budget)[0]
    return False


def _rebuilt(value: Any, cls: type, text: str) -> Any:
    """A fresh value of ``cls`` made from ``text``, its caches filled."""
    if _module(cls) == "uuid":  # is_safe is not in the text: it is carried over
        safe = dict(_slot_values(value, cls)).get("is_safe")
        fresh = cls(text, is_safe=safe) if safe is not None else cls(text)
    else:
        fresh = cls(text)
    _fill(fresh, cls)
    return fresh


def _checked_copy(value: Any, cls: type, depth: int, budget: _Budget) -> tuple[str, Any]:
    """The text of ``value`` when it describes the whole value, and the fresh value
    made from that text (else :class:`NoCanonicalForm`)."""
    state = _state(value, cls)
    if not all(_plain(held, value, depth, budget) for held in state.values()):
        raise NoCanonicalForm(
            f"a {_qualname(cls)} value holds an object of the app's in its state: its "
            "text would run that object's code"
        )
    text = str(value)  # the standard library's code, over plain values only
    if type(text) is not str:
        raise NoCanonicalForm(f"a {_qualname(cls)} value has no text")
    try:
        fresh = _rebuilt(value, cls, text)
    except Exception:
        raise NoCanonicalForm(f"a {_qualname(cls)} value cannot be made from its text") from None
    rebuilt = _state(fresh, cls)
    for name, held in state.items():
        try:
            if name == "_raw_paths":  # the segments a path was made from (3.12+)
                same = (
                    type(held) is list
                    and all(type(part) is str for part in held)
                    and str(cls(*held)) == text
                )
            else:
                same = name in rebuilt and _same(held, rebuilt[name], value, fresh, depth, budget)
        except NoCanonicalForm:
            raise
        except Exception:
            same = False
        if not same:
            raise NoCanonicalForm(
                f"a {_qualname(cls)} value whose {name.lstrip('.')} is not what its text "
                f"{text[:80]!r} makes: what it shows is not what it holds (a cache set by "
                "hand); pass a value made afresh"
            )
    safe = state.get("is_safe")  # a UUID's: a member of uuid.SafeUUID (checked plain)
    if safe is not None and _module(cls) == "uuid":
        name = _enum_member(safe, type(safe))[1]
        if name != "unknown":
            return f"{text} ({name})", fresh
    return text, fresh


def atom_text(value: Any, cls: type) -> str:
    """The text of ``value``, of the class ``cls`` (:func:`is_python_atom`), when it
    describes the whole value; else :class:`NoCanonicalForm`. A ``UUID`` whose
    ``is_safe`` is known carries it after its text (``... (safe)``)."""
    return _checked_copy(value, cls, 0, _Budget())[0]


def atom_copy(value: Any, cls: type) -> Any:
    """A fresh value of ``cls`` made from the text of ``value`` (its caches filled),
    when that text describes the whole value; else :class:`NoCanonicalForm`. Its
    text, and so its digest and its view, are those of ``value``; no other code
    holds it."""
    return _checked_copy(value, cls, 0, _Budget())[1]
