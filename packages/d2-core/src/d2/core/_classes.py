"""What a class is, and what its instances hold, read without running the app's code.

The digest (:mod:`d2.core._canonical`) and the approver's view
(:mod:`d2.core._display`) both read values through these helpers:

* A class's layout, namespace, MRO and name are read through ``type``'s own
  descriptors (``vars(type)``), never attributes a metaclass defines, and classes
  are compared by identity, never ``==`` or ``hash``.
* An instance's dictionary is read through the interpreter's own ``__dict__``
  descriptor, each slot through its own member descriptor.
* :func:`_overridden` says whether a subclass of a built-in type changes how its
  built-in value reads (an override of the built-in's methods, a protocol hook):
  such a value is shown and digested as nothing, never as its built-in value.
* :func:`_enum_member` says whether a value is a member its enum lists, by name
  and identity only (no value of the app is hashed or compared).

It imports nothing of D2.
"""

from __future__ import annotations

import sys
import types
import weakref
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["NoCanonicalForm"]

_POINTER = 8 if sys.maxsize > 2**32 else 4  # sizeof(PyObject *): Py_ssize_t's size
_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement (or type())
_MANAGED_WEAKREF = 1 << 3  # CPython 3.12+: __weakref__ kept outside the instance's memory
_MANAGED_DICT = 1 << 4  # CPython 3.11+: __dict__ kept outside the instance's memory
_MISSING = object()

# What a class is, read through ``type``'s own descriptors: a metaclass may define
# ``__dict__``, ``__mro__``, ``__basicsize__``... for its classes, and ``==`` and
# ``hash`` too, so classes are never compared by ``==`` nor looked up by hash here
# (tables of types are keyed by ``id``).
_TYPE = vars(type)
_namespace: Callable[[type], Mapping[str, Any]] = _TYPE["__dict__"].__get__
_base: Callable[[type], type | None] = _TYPE["__base__"].__get__
_mro: Callable[[type], tuple[type, ...]] = _TYPE["__mro__"].__get__
_flags: Callable[[type], int] = _TYPE["__flags__"].__get__
_basicsize: Callable[[type], int] = _TYPE["__basicsize__"].__get__
_itemsize: Callable[[type], int] = _TYPE["__itemsize__"].__get__
_dictoffset: Callable[[type], int] = _TYPE["__dictoffset__"].__get__
_module: Callable[[type], Any] = _TYPE["__module__"].__get__
_qualname_of: Callable[[type], str] = _TYPE["__qualname__"].__get__
_name_of: Callable[[type], str] = _TYPE["__name__"].__get__
_module_dict: Callable[[types.ModuleType], dict[str, Any]] = vars(types.ModuleType)[
    "__dict__"
].__get__
_proxy_keys: Callable[[Any], Any] = types.MappingProxyType.keys


class NoCanonicalForm(ValueError):
    """An argument has no exact, stable form to digest (an approval of such a call
    could be reused for another call, so none is given)."""


def _qualname(cls: type) -> str:
    """``module.qualname`` of ``cls`` for a message (``_named`` tells classes apart);
    a name that is not exactly a ``str`` is never formatted (its code would run)."""
    module, qualname = _module(cls), _qualname_of(cls)
    if type(module) is str and type(qualname) is str:
        return f"{module}.{qualname}"
    return "<a class without a name>"


_SPACES: dict[int, weakref.ref[type]] = {}  # id -> a class whose namespace keys are all str


def _space(cls: type) -> Mapping[str, Any]:
    """The namespace of ``cls`` (read through ``type``'s own descriptor), once every
    key in it is exactly a ``str``; else :class:`NoCanonicalForm`. ``type(name,
    bases, ns)`` keeps the keys of ``ns``: a key of the app's type (a ``str``
    subclass) would run its own ``__hash__`` and ``__eq__`` in any lookup or
    comparison, and could answer as another name than the one the interpreter
    stored. Names set later are always exact strings (``type.__setattr__`` copies
    them), so a class is checked once."""
    space = _namespace(cls)
    known = _SPACES.get(id(cls))
    if known is not None and known() is cls:
        return space
    for key in _proxy_keys(space):
        if type(key) is not str:
            raise NoCanonicalForm(
                f"a {_qualname(cls)} value has no canonical form: its class has an "
                "attribute named by an object that is not a str (a class made by type() "
                "with such a name); define the class with a class statement"
            )
    key = id(cls)
    _SPACES[key] = weakref.ref(cls, lambda _, key=key: _SPACES.pop(key, None))  # type: ignore[misc]
    return space


def _module_named(name: str) -> Any:
    """``sys.modules[name]`` (else :data:`_MISSING`), never comparing ``name`` with
    a key of the app's type (:func:`_lookup`)."""
    return _lookup(sys.modules, name)


def _leads_to(cls: type, memo: dict[int, tuple[bool, type]] | None = None) -> bool:
    """Whether ``module.qualname`` of ``cls``, read from the module's and classes'
    own dictionaries (no code run), leads to ``cls`` itself. ``memo``: answers
    already found in this digest or view (by class)."""
    if memo is not None:
        known = memo.get(id(cls))
        if known is not None and known[1] is cls:
            return known[0]
    module, qualname = _module(cls), _qualname_of(cls)
    found: Any = None
    if type(module) is str and type(qualname) is str:
        found = _module_named(module)
        for part in qualname.split("."):
            kind = type(found)
            if issubclass(kind, type):
                try:
                    found = _space(found).get(part)
                except NoCanonicalForm:
                    found = None
            elif issubclass(kind, types.ModuleType):
                found = _lookup(_module_dict(found), part)
            else:
                found = None
                break
    answer = found is cls
    if memo is not None:
        memo[id(cls)] = (answer, cls)
    return answer


def _named(cls: type, memo: dict[int, tuple[bool, type]] | None = None) -> str:
    """``module.qualname`` of ``cls``, when that name leads to ``cls`` itself. A
    class made by a factory, inside a function, or replaced since (a reloaded
    module) shares its name with other classes: its instances have no canonical
    form."""
    if not _leads_to(cls, memo):
        raise NoCanonicalForm(
            f"a value of class {_qualname(cls)} has no canonical form: that name does not "
            "lead to its class (a class made inside a function, by a factory or type(), "
            "or replaced since), so other classes may share it; define the class at "
            "module level"
        )
    module = _module(cls)
    # the module's length first: "a.b" + "C" and "a" + "b.C" are different classes
    return f"{len(module)}:{module}.{_qualname_of(cls)}"


_KNOWN: dict[tuple[str, str], type] = {}  # the standard library's classes, by identity
_MISSED: dict[tuple[str, str], int] = {}  # not found: how many modules were loaded then


def _known(module: str, name: str, misses: set[tuple[str, str]] | None = None) -> type | None:
    """The class ``module.name`` of the standard library (or pydantic), itself: found
    the first time its module is loaded, then kept (by identity). A class that only
    takes a standard-library name, or is written into such a module later
    (``string.Cmd = Cmd``), is never it. Not found, it is looked for again only once
    more modules are loaded, or (``misses``: the classes not found so far in this
    digest or view) in another digest or view: each look scans ``sys.modules``."""
    found = _KNOWN.get((module, name))
    if found is None:
        if misses is not None and (module, name) in misses:
            return None
        loaded_now = len(sys.modules)  # (a module loaded since: looked for again)
        if _MISSED.get((module, name)) == loaded_now:
            return None
        if misses is not None:
            misses.add((module, name))  # (removed below when found)
        _MISSED[(module, name)] = loaded_now
        loaded = _module_named(module)
        if type(loaded) is not types.ModuleType:
            return None  # not loaded: no value can be of it
        held = _lookup(_module_dict(loaded), name)
        if not issubclass(type(held), type):
            return None
        found = _KNOWN[(module, name)] = held
        _MISSED.pop((module, name), None)
        if misses is not None:
            misses.discard((module, name))
    return found


def _stdlib(cls: type, module: str, *names: str) -> bool:
    """Whether ``cls`` is exactly the class ``module.name`` (one of ``names``) of the
    standard library (by identity: :func:`_known`)."""
    claimed, qualname = _module(cls), _qualname_of(cls)
    if type(claimed) is not str or type(qualname) is not str:
        return False
    if claimed != module or qualname not in names:  # (exact strings: no code run)
        return False
    return _known(module, qualname) is cls


def _declared_slots(cls: type) -> list[str]:
    """The slot names ``cls`` itself declares, as stored (private names mangled),
    without ``__dict__`` and ``__weakref__``. ``__slots__`` is whatever object the
    class statement gave: it is read only when it is exactly a ``str``, or a
    ``tuple``, ``list`` or ``dict`` of exact strings (iterating any other would run
    its code, and an iterator is spent once the class is made); else
    :class:`NoCanonicalForm`."""
    slots = _space(cls).get("__slots__", ())
    kind = type(slots)
    if kind is str:
        names = [slots]
    elif kind is tuple or kind is list or kind is dict:
        names = list(slots)  # (an exact container: its own iteration, no code of the app)
    else:
        names = [_MISSING]
    owner = _name_of(cls)
    if any(type(name) is not str for name in names) or type(owner) is not str:
        raise NoCanonicalForm(
            f"a {_qualname(cls)} value has no canonical form: its class's __slots__ is not "
            "a str or a tuple, list or dict of str; declare __slots__ as a tuple of names"
        )
    owner = owner.lstrip("_")
    return [
        f"_{owner}{name}" if name.startswith("__") and not name.endswith("__") and owner else name
        for name in names
        if name not in ("__dict__", "__weakref__")
    ]


def _slot_values(value: Any, cls: type) -> list[tuple[str, Any]]:
    """Every set slot of ``value`` (of every class of its MRO), each read through
    its own member descriptor: (name, value), in MRO order."""
    found: list[tuple[str, Any]] = []
    for klass in _mro(cls):
        space = _space(klass)
        for name in _declared_slots(klass):
            held = space.get(name)
            if type(held) is not types.MemberDescriptorType:
                continue
            try:
                found.append((name, held.__get__(value, cls)))
            except AttributeError:  # unset
                continue
    return found


def _layout_is_python(cls: type) -> bool:
    """Whether ``cls`` adds nothing to its base's instance memory but what Python
    declares and D2 can read: slots, a ``__dict__``, a ``__weakref__``. A class
    written in C (a file, a lock, a socket, ``io.StringIO``) keeps state no
    attribute shows, and fails."""
    base = _base(cls)
    flags = _flags(cls)
    if base is None or not flags & _HEAP_TYPE or _itemsize(cls) != _itemsize(base):
        return False
    own = _space(cls)
    slots = _declared_slots(cls)
    members = []
    for key, held in own.items():
        if type(held) is types.MemberDescriptorType:
            if held.__name__ != key or held.__objclass__ is not cls:  # moved or copied
                return False
            members.append(key)
    if sorted(members) != sorted(slots):
        return False
    size = _basicsize(base) + _POINTER * len(slots)
    if "__dict__" in own and not flags & _MANAGED_DICT:
        size += _POINTER
    if "__weakref__" in own and not flags & _MANAGED_WEAKREF:
        size += _POINTER
    return bool(_basicsize(cls) == size)


def _dict_descriptor(cls: type) -> Any:
    """The interpreter's own ``__dict__`` descriptor through which attribute access
    finds the instance dictionary of a ``cls`` value (the first of its MRO), or
    ``None`` when a class attribute named ``__dict__`` hides it."""
    for klass in _mro(cls):
        held = _space(klass).get("__dict__", _MISSING)
        if held is _MISSING:
            continue
        return held if type(held) is types.GetSetDescriptorType else None
    return None


def _instance_dict(value: Any, cls: type) -> dict[Any, Any]:
    """The instance dictionary of ``value`` (its class has one), where attribute
    access reads it: through the interpreter's own ``__dict__`` descriptor, never
    ``value.__dict__``, which a class attribute named ``__dict__`` (a property)
    answers instead. When such an attribute hides the descriptor, the value has no
    canonical form (``object.__getstate__`` would read it, but runs the app's
    ``__getattribute__`` for each slot)."""
    held = _dict_descriptor(cls)
    if held is not None:
        try:
            found = held.__get__(value, cls)
        except TypeError:  # another type's descriptor, copied in: not this one
            found = None
        if type(found) is dict:
            return found
    raise NoCanonicalForm(
        f"a {_qualname(cls)} value has no canonical form: a class attribute named "
        "__dict__ hides where its attributes are kept"
    )


def _compared_by_identity(cls: type) -> bool:
    """Whether a ``cls`` value is equal only to itself: the first ``__eq__`` of its
    MRO is ``object``'s."""
    for klass in _mro(cls):
        if _space(klass).get("__eq__", _MISSING) is not _MISSING:
            return klass is object
    return True


def _entry(mapping: dict[Any, Any], key: str) -> Any:
    """``mapping[key]`` for a string ``key`` (else :data:`_MISSING`), found by
    scanning (a copy of its entries: another thread may change it): a lookup would
    compare ``key`` with a colliding key of the app's type, running its ``__eq__``."""
    for found, held in list(dict.items(mapping)):
        if type(found) is str and found == key:
            return held
    return _MISSING


_STR_KEYED: dict[int, tuple[int, dict[Any, Any]]] = {}  # id -> (size, dict) checked


def _lookup(mapping: dict[Any, Any], key: str) -> Any:
    """``mapping[key]`` (else :data:`_MISSING`) in a dict that lives long and is
    looked up often (``sys.modules``, a module's globals, an enum's members): looked
    up directly once every key in it was found to be exactly a ``str`` (then no code
    of the app runs), checked again whenever its size changes; scanned otherwise."""
    size = len(mapping)
    known = _STR_KEYED.get(id(mapping))
    if known is None or known[1] is not mapping or known[0] != size:
        if any(type(found) is not str for found in list(mapping)):
            return _entry(mapping, key)
        if len(_STR_KEYED) >= 4096:
            _STR_KEYED.clear()
        _STR_KEYED[id(mapping)] = (size, mapping)  # (kept: its id is never reused)
    return dict.get(mapping, key, _MISSING)


def _enum_member(value: Any, cls: type) -> tuple[bool, Any, Any]:
    """Whether ``value`` is a member its enum ``cls`` lists, and its ``_name_`` and
    ``_value_`` (:data:`_MISSING` when absent). By name and identity only: the
    member under its name in ``_member_map_``, or (a composite flag) one of the
    members ``_value2member_map_`` holds; never a lookup by value, which would hash
    an object of the app (a forged member's value)."""
    state = _instance_dict(value, cls) if _dictoffset(cls) else {}
    name, raw = _entry(state, "_name_"), _entry(state, "_value_")
    space = _space(cls)
    by_name, by_value = space.get("_member_map_"), space.get("_value2member_map_")
    member = type(by_name) is dict and type(name) is str and _lookup(by_name, name) is value
    if not member and type(by_value) is dict:
        member = any(held is value for held in dict.values(by_value))
    return member, name, raw


# -- subclasses of built-in types that change how their value reads -------------------

# Names a subclass of a built-in type may define without changing how the value it
# holds reads: where the class comes from, how a value is made (an approval binds
# the value made: ``__new__`` and ``__init__`` run before the call), and pydantic's
# hooks that say how a value is validated into the class.
_HARMLESS = frozenset(
    {
        "__module__",
        "__qualname__",
        "__doc__",
        "__slots__",
        "__annotations__",
        "__annotate__",
        "__annotate_func__",
        "__annotations_cache__",
        "__orig_bases__",
        "__parameters__",
        "__type_params__",
        "__static_attributes__",
        "__firstlineno__",
        "__classcell__",
        "__match_args__",
        "__abstractmethods__",
        "__init__",
        "__new__",
        "__init_subclass__",
        "__class_getitem__",
        "__subclasshook__",
        "__get_validators__",
        "__get_pydantic_core_schema__",
        "__get_pydantic_json_schema__",
        "__modify_schema__",
    }
)
_DESCRIBED = ("__dict__", "__weakref__")  # harmless when the interpreter's own descriptors
_NAMES: dict[int, frozenset[str]] = {}  # id(built-in type) -> its attribute names


def _made_by_namedtuple(held: Any) -> bool:
    """Whether ``held`` is a method ``collections.namedtuple`` writes for every named
    tuple (``__repr__``, ``__getnewargs__``): its code is the standard library's."""
    collections = _module_named("collections")
    maker = (
        _lookup(_module_dict(collections), "namedtuple")
        if type(collections) is types.ModuleType
        else None
    )
    code = held.__code__ if type(held) is types.FunctionType else None
    return (
        code is not None
        and type(maker) is types.FunctionType
        and held.__globals__ is _module_dict(collections)
        and any(code is const for const in maker.__code__.co_consts)
    )


def _slot_names(cls: type) -> list[str]:
    """The slot names of ``cls`` and its bases, as ``copyreg`` lists them (in the
    ``__slotnames__`` it caches on a class the first time one of its values is
    copied or pickled)."""
    return [name for klass in _mro(cls) for name in _declared_slots(klass)]


def _is_slot_names(held: Any, klass: type) -> bool:
    """Whether ``held`` is the list of ``klass``'s slot names (strings only: no
    ``__eq__`` of the app's is run to compare them)."""
    return (
        type(held) is list
        and all(type(name) is str for name in held)
        and held == _slot_names(klass)
    )


# the standard library's subclasses of built-in types whose methods are trusted (by
# identity, never by the name a class gives itself)
_TRUSTED = (("collections", "Counter"),)


def _trusted(klass: type, base: type) -> bool:
    """Whether what ``klass`` defines is the built-in's or the standard library's:
    a class of ``base``'s own MRO, or one of :data:`_TRUSTED` itself."""
    if any(klass is known for known in _mro(base)):
        return True
    return any(klass is _known(module, name) for module, name in _TRUSTED)


def _overridden(cls: type, base: type) -> str | None:
    """The first name by which ``cls``, a subclass of the built-in type ``base``,
    changes how its value reads (else ``None``): a name of ``base``'s (a method such
    as ``__str__``, ``__format__``, ``__eq__``, ``__iter__``, ``__getitem__`` or
    ``strip``, shadowed), or any other special name (``__fspath__``, ``__index__``,
    ``__buffer__``, ``__getattr__``, ``__html__``, ``__reduce__``...), defined by a
    class of its MRO that is neither the built-in's nor the standard library's.
    Names that say where the class comes from and how a value is made
    (:data:`_HARMLESS`) and the methods ``namedtuple`` writes are allowed; other
    methods of the app's own (``def shell(self)``) are too: the view shows the class."""
    names = _NAMES.get(id(base))
    if names is None:
        names = _NAMES[id(base)] = frozenset(dir(base))
    seen: set[str] = set()
    for klass in _mro(cls):
        trusted = None
        for name, held in _space(klass).items():
            if name in seen:
                continue
            seen.add(name)
            special = name.startswith("__") and name.endswith("__")
            if name in _HARMLESS or not (special or name in names):
                continue
            if name in _DESCRIBED and type(held) is types.GetSetDescriptorType:
                continue
            if name in ("__repr__", "__getnewargs__") and _made_by_namedtuple(held):
                continue
            if name == "__slotnames__" and _is_slot_names(held, klass):  # copyreg's cache
                continue
            if trusted is None:
                trusted = _trusted(klass, base)
            if not trusted:
                return name
    return None
