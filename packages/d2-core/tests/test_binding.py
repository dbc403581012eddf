"""Binding a call's arguments for input rules: always to the signature of the
callable actually called, never through a wrapper that may move them (docs/security.md,
"Input rules through forwarding decorators")."""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any

import pytest
from d2.core import PermissionDeniedError, clear_context, d2_guard, set_user
from d2.core._functions import UNBOUND, Arguments, bound_arguments
from d2.core.approval_data import NoCanonicalForm, call_digest
from d2.core.evaluate import Evaluator
from d2.core.policy import compile_policy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MAX_100 = {"amount": {"type": "int", "max": 100}}


def _pay_policy(configure: Any, *tools: str, input: dict[str, Any] | None = None) -> None:
    configure(
        {
            "role": "r",
            "permissions": [{"tool": t, "conditions": {"input": input or MAX_100}} for t in tools],
        }
    )
    set_user("u", roles=["r"])


def with_account(f: Any) -> Any:
    """An honest-looking decorator that injects the first argument."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return f("acct-1", *args, **kwargs)

    return wrapper


def test_an_injecting_decorator_never_gets_the_wrong_parameter_checked(configure: Any) -> None:
    _pay_policy(configure, "pay")
    moved: list[int] = []

    @d2_guard("pay")
    @with_account
    def transfer(account: str, amount: int = 0) -> str:
        moved.append(amount)
        return account

    # Bound through __wrapped__, 5000 would land on `account` and `amount` would read
    # its default 0 under max 100: the money moves. Every call shape is refused.
    for args, kwargs in [((5000,), {}), ((), {"amount": 5000}), ((5000, 1), {}), ((), {})]:
        with pytest.raises(PermissionDeniedError) as info:
            transfer(*args, **kwargs)
        assert info.value.reason == "input_validation"
        assert "forwarding wrapper" in str(info.value) and "innermost" in str(info.value)
    assert moved == []


def test_an_injecting_decorator_cannot_skip_an_approval(configure: Any) -> None:
    configure(
        {
            "role": "r",
            "permissions": [
                {
                    "tool": "pay",
                    "approval": {"approvers": ["r"], "when": {"amount": {"min": 101}}},
                }
            ],
        }
    )
    set_user("u", roles=["r"])

    @d2_guard("pay")
    @with_account
    def transfer(account: str, amount: int = 0) -> None:
        raise AssertionError("ran without an approval")

    with pytest.raises(PermissionDeniedError) as info:
        transfer(5000)  # `when` cannot be judged: a person is asked, it is never skipped
    assert info.value.reason == "approval_required"


def test_the_guard_innermost_or_an_honest_signature_binds_exactly(configure: Any) -> None:
    _pay_policy(configure, "inner", "declared")

    @with_account
    @d2_guard("inner")
    def transfer(account: str, amount: int = 0) -> int:
        return amount

    def honest(f: Any) -> Any:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return f(*args, **kwargs)

        wrapper.__signature__ = inspect.signature(f)  # type: ignore[attr-defined]
        return wrapper

    @d2_guard("declared")
    @honest
    def pay(account: str, amount: int = 0) -> int:
        return amount

    assert transfer(50) == 50 and pay("a", 50) == 50 and pay("a", amount=7) == 7
    for call in (lambda: transfer(5000), lambda: pay("a", 5000), lambda: pay("a", amount=5000)):
        with pytest.raises(PermissionDeniedError, match="fails max 100"):
            call()


def test_a_signature_copied_by_functools_wraps_is_not_trusted(configure: Any) -> None:
    _pay_policy(configure, "pay")

    def pay(account: str, amount: int = 0) -> int:
        return amount

    pay.__signature__ = inspect.signature(pay)  # type: ignore[attr-defined]
    injecting = with_account(pay)  # wraps() copies __dict__, __signature__ included
    assert injecting.__signature__ is pay.__signature__
    guarded = d2_guard("pay")(injecting)
    with pytest.raises(PermissionDeniedError, match="forwarding wrapper"):
        guarded(5000)


def test_tools_without_argument_rules_keep_working_through_any_wrapper(configure: Any) -> None:
    configure({"role": "r", "permissions": ["plain"]})
    set_user("u", roles=["r"])

    @d2_guard("plain")
    @with_account
    def transfer(account: str, amount: int = 0) -> str:
        return f"{account}:{amount}"

    assert transfer(5000) == "acct-1:5000"


def test_d2s_own_wrappers_bind_like_the_function_they_wrap(configure: Any) -> None:
    configure(
        {
            "role": "r",
            "permissions": [
                "free",  # the inner guards check nothing: the outer ones must bind right
                *(
                    {"tool": t, "conditions": {"input": MAX_100}}
                    for t in ("outer", "ctx", "method")
                ),
            ],
        }
    )
    set_user("u", roles=["r"])

    def pay(account: str, amount: int = 0) -> int:
        return amount

    twice = d2_guard("outer")(d2_guard("free")(pay))
    cleared = d2_guard("ctx")(clear_context(pay))

    class Payer:
        @d2_guard("free")
        def pay(self, account: str, amount: int = 0) -> int:
            return amount

    class Teller:
        @d2_guard("free")
        def __call__(self, account: str, amount: int = 0) -> int:
            return amount

    payer = Payer()
    method = d2_guard("method")(payer.pay)  # a guarded bound method, guarded again
    teller = d2_guard("method")(Teller())  # an object whose __call__ is guarded
    for tool in (twice, cleared, method, teller):
        assert tool("a", 50) == 50
        set_user("u", roles=["r"])  # clear_context cleared it
        with pytest.raises(PermissionDeniedError, match="fails max 100"):
            tool("a", 5000)


def test_the_honest_patterns_bind_exactly(configure: Any) -> None:
    _pay_policy(configure, "pay")

    class Till:
        @d2_guard("pay")
        def method(self, account: str, amount: int = 0) -> int:
            return amount

        @d2_guard("pay")
        @classmethod
        def klass(cls, account: str, amount: int = 0) -> int:
            return amount

        @d2_guard("pay")
        @staticmethod
        def static(account: str, amount: int = 0) -> int:
            return amount

    @d2_guard("pay")
    async def coroutine(account: str, amount: int = 0) -> int:
        return amount

    @d2_guard("pay")
    async def stream(account: str, amount: int = 0) -> Any:
        yield amount

    def plain(account: str, amount: int = 0) -> int:
        return amount

    partial = d2_guard("pay")(functools.partial(plain, "acct-1"))

    async def first(gen: Any) -> Any:
        return [item async for item in gen]

    till = Till()
    sync = [till.method, Till.klass, till.klass, Till.static]
    for tool in sync:
        assert tool("a", 50) == 50 and tool("a", amount=50) == 50
        with pytest.raises(PermissionDeniedError, match="fails max 100"):
            tool("a", 5000)
    assert partial(50) == 50
    with pytest.raises(PermissionDeniedError, match="fails max 100"):
        partial(5000)
    assert asyncio.run(coroutine("a", 50)) == 50
    assert asyncio.run(first(stream("a", 50))) == [50]
    with pytest.raises(PermissionDeniedError, match="fails max 100"):
        asyncio.run(coroutine("a", 5000))
    with pytest.raises(PermissionDeniedError, match="fails max 100"):
        asyncio.run(first(stream("a", amount=5000)))


def test_the_approval_digest_and_log_show_the_call_as_the_wrapper_got_it() -> None:
    arguments = Arguments(with_account(lambda account, amount=0: None))
    assert arguments.forwarding
    assert bound_arguments(arguments, (5000,), {"memo": "x"}) == {"args": [5000], "memo": "x"}
    assert arguments.value("amount", (5000,), {}, None) is UNBOUND


# --- Python's own call semantics, over generated signatures ------------------------

NAMES = ["a", "b", "c", "d", "e"]
KINDS = ["posonly", "plain", "kwonly"]


@st.composite
def signatures(draw: st.DrawFn) -> str:
    """The parameter list of a ``def``, valid Python."""
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=5))
    kinds = sorted(
        ((draw(st.sampled_from(KINDS)), n) for n in names), key=lambda k: KINDS.index(k[0])
    )
    params: list[str] = []
    defaulted = False
    for i, (kind, name) in enumerate(kinds):
        if kind == "kwonly" and (i == 0 or kinds[i - 1][0] != "kwonly"):
            params.append("*rest" if draw(st.booleans()) else "*")
        default = draw(st.booleans()) or (defaulted and kind != "kwonly")
        defaulted = defaulted or (default and kind != "kwonly")
        params.append(f"{name}={1000 + i}" if default else name)
        if kind == "posonly" and (i + 1 == len(kinds) or kinds[i + 1][0] != "posonly"):
            params.append("/")
    if not any(p.startswith("*") for p in params) and draw(st.booleans()):
        params.append("*rest")
    if draw(st.booleans()):
        params.append("**kw")
    return ", ".join(params)


def _make(params: str, is_async: bool) -> Any:
    namespace: dict[str, Any] = {}
    source = f"{'async ' if is_async else ''}def f({params}):\n    return dict(locals())"
    exec(source, namespace)
    return namespace["f"]


def _honest(f: Any) -> Any:
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return f(*args, **kwargs)

    wrapper.__signature__ = inspect.signature(f)  # type: ignore[attr-defined]
    return wrapper


def _called(kind: str, f: Any, lead: tuple[int, ...], fixed: dict[str, int]) -> tuple[Any, Any]:
    """The callable of this kind, and one that Python calls the same way without
    a policy in force (the callable itself, but for the guard's own wrapper)."""
    if kind == "partial":
        p = functools.partial(f, *lead, **fixed)
        return p, p
    if kind in ("method", "classmethod"):
        owner = type("Owner", (), {"m": f if kind == "method" else classmethod(f)})
        bound = owner().m
        return bound, bound
    if kind == "object":
        obj = type("Callable", (), {"__call__": f})()
        return obj, obj
    if kind in ("static call", "class call", "partial call"):  # no self, cls, the partial's
        call = {
            "static call": lambda: staticmethod(f),
            "class call": lambda: classmethod(f),
            "partial call": lambda: functools.partial(f, *lead, **fixed),
        }[kind]()
        obj = type("Callable", (), {"__call__": call})()
        return obj, obj
    if kind == "declared":
        w = _honest(f)
        return w, w
    if kind == "guarded":
        return d2_guard("gen.tool")(f), f  # D2's own wrapper passes everything to f
    return f, f


@st.composite
def calls(draw: st.DrawFn, sig: inspect.Signature) -> tuple[tuple[int, ...], dict[str, int]]:
    """A call that mostly fits ``sig``: required parameters given, some optional ones,
    extra positional or keyword arguments now and then (which may not bind)."""
    values = iter(range(100, 200))
    args: list[int] = []
    kwargs: dict[str, int] = {}
    positional = True
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            if positional:
                args += [next(values) for _ in range(draw(st.integers(0, 2)))]
            continue
        if p.kind is p.VAR_KEYWORD:
            for extra in draw(st.lists(st.sampled_from(["x", "y", *NAMES]), max_size=2)):
                kwargs.setdefault(extra, next(values))
            continue
        skip = p.default is not p.empty and draw(st.booleans())
        if skip:
            positional = False
            continue
        by_position = p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and positional
        if by_position and (p.kind is p.POSITIONAL_ONLY or draw(st.booleans())):
            args.append(next(values))
        else:
            positional = False
            kwargs[p.name] = next(values)
    if draw(st.integers(0, 9)) == 0:  # noise: usually a TypeError for Python too
        args.append(next(values))
    return tuple(args), kwargs


def _received(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """What each parameter of the generated function receives when Python calls
    ``fn`` (its ``locals()``), or None when Python refuses the call."""
    try:
        result = fn(*args, **kwargs)
    except TypeError:
        return None
    if inspect.iscoroutine(result):
        try:
            result.send(None)
        except StopIteration as done:
            return done.value
    return result


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    params=signatures(),
    kind=st.sampled_from(
        [
            "plain",
            "async",
            "partial",
            "method",
            "classmethod",
            "object",
            "static call",
            "class call",
            "partial call",
            "declared",
            "guarded",
        ]
    ),
    lead=st.lists(st.integers(500, 510), unique=True, max_size=2).map(tuple),
    fixed=st.dictionaries(st.sampled_from(NAMES), st.integers(600, 610), max_size=1),
)
def test_binding_agrees_with_pythons_own_binding(
    data: st.DataObject,
    params: str,
    kind: str,
    lead: tuple[int, ...],
    fixed: dict[str, int],
) -> None:
    f = _make(params, is_async=kind == "async")
    called, reference = _called(kind, f, lead, fixed)
    try:
        sig = inspect.signature(reference, follow_wrapped=False)
    except ValueError:  # e.g. a method of a function without parameters
        return
    args, kwargs = data.draw(calls(sig))
    expected = _received(reference, args, kwargs)
    if expected is None:
        return  # Python refuses the call: the tool never runs, whatever D2 reads
    arguments = Arguments(called)
    assert not arguments.opaque and not arguments.forwarding
    for name, value in expected.items():
        got = arguments.value(name, args, kwargs, UNBOUND)
        assert got == value, (params, kind, name, args, kwargs)
    varkw = next((p.name for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD), None)
    if varkw is not None:  # a keyword **kw collects reads under its own name too
        for extra, value in expected[varkw].items():
            if extra not in expected:
                assert arguments.value(extra, args, kwargs, UNBOUND) == value
    # the evaluator's planned reads (what input rules check) see the same values
    scalars = {n: v for n, v in expected.items() if isinstance(v, int)}
    if varkw is not None:
        scalars.update({n: v for n, v in expected[varkw].items() if n not in expected})
    ev = Evaluator("binding-prop")
    set_user("u", roles=["r"])
    for name, value in scalars.items():
        for rule, admitted in ((value, True), (-1, False)):
            ev.policy = compile_policy(
                {
                    "policies": [
                        {
                            "role": "r",
                            "permissions": [
                                {
                                    "tool": "t",
                                    "conditions": {"input": {name: {"required": True, "eq": rule}}},
                                }
                            ],
                        }
                    ]
                }
            )
            try:
                ev.admit(ev.check("t"), args, kwargs, arguments)
                ok = True
            except PermissionDeniedError:
                ok = False
            assert ok == admitted, (params, kind, name, rule, args, kwargs)


class Proxy:
    """A transparent proxy, as ``wrapt`` builds decorators: every attribute it does not
    define (``__code__``, ``__defaults__``, ``__signature__``...) is the wrapped
    function's, and it injects the first argument."""

    def __init__(self, wrapped: Any) -> None:
        object.__setattr__(self, "__wrapped__", wrapped)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__wrapped__, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__("acct-1", *args, **kwargs)


class ClassDecorator:
    """A class-based decorator: ``functools.update_wrapper(self, f)``."""

    def __init__(self, f: Any) -> None:
        functools.update_wrapper(self, f)
        self.f = f

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.f("acct-1", *args, **kwargs)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    params=signatures(),
    wrap=st.sampled_from([with_account, Proxy, ClassDecorator]),
    declared=st.booleans(),
)
def test_through_a_forwarding_wrapper_a_value_is_exact_or_unbound(
    data: st.DataObject, params: str, wrap: Any, declared: bool
) -> None:
    """The wrapper's own signature is ``(*args, **kwargs)``, whether it is a function,
    a transparent proxy or an object: every parameter of the wrapped function reads
    as UNBOUND (so its rules deny), never as another value, even when the wrapped
    function declares a ``__signature__`` (a proxy forwards it; ``wraps`` copies it)."""
    f = _make(params, is_async=False)
    if declared:
        f.__signature__ = inspect.signature(f)
    wrapper = wrap(f)
    args, kwargs = data.draw(calls(inspect.signature(f)))
    arguments = Arguments(wrapper)
    assert arguments.forwarding
    for name in inspect.signature(f).parameters:
        assert arguments.value(name, args, kwargs, None) is UNBOUND
    # what the wrapper's own (*args, **kwargs) receive
    assert arguments.value("args", args, kwargs, None) == args
    assert arguments.value("kwargs", args, kwargs, None) == kwargs


# --- approvals: one digest, one call ------------------------------------------------

SMALL = st.sampled_from([0, 1])  # few values: different calls often look alike


@st.composite
def alike_calls(draw: st.DrawFn, sig: inspect.Signature) -> tuple[tuple[int, ...], dict[str, int]]:
    """A call of ``sig`` with values from a tiny set, whose ``**kwargs`` (if any)
    may get keywords named like the parameters (positional-only ones, the ``*args``
    name, the ``**kwargs`` name itself): two such calls often differ only there."""
    names = ["x", *NAMES, *sig.parameters]
    args: list[int] = []
    kwargs: dict[str, int] = {}
    positional = True
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            if positional:
                args += draw(st.lists(SMALL, max_size=2))
            continue
        if p.kind is p.VAR_KEYWORD:
            for extra in draw(st.lists(st.sampled_from(names), unique=True, max_size=3)):
                kwargs.setdefault(extra, draw(SMALL))
            continue
        if p.default is not p.empty and draw(st.booleans()):
            positional = False
            continue
        by_position = p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and positional
        if by_position and (p.kind is p.POSITIONAL_ONLY or draw(st.booleans())):
            args.append(draw(SMALL))
        else:
            positional = False
            kwargs[p.name] = draw(SMALL)
    return tuple(args), kwargs


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    params=signatures(),
    kind=st.sampled_from(["plain", "partial", "method", "classmethod", "declared", "guarded"]),
    lead=st.lists(st.integers(500, 510), unique=True, max_size=2).map(tuple),
    fixed=st.dictionaries(st.sampled_from(NAMES), st.integers(600, 610), max_size=1),
)
def test_calls_with_one_approval_digest_give_the_function_the_same_arguments(
    data: st.DataObject,
    params: str,
    kind: str,
    lead: tuple[int, ...],
    fixed: dict[str, int],
) -> None:
    """An approval runs the call whose digest it was given for: two calls with equal
    digests must give the function identical arguments (its ``locals()``), whatever
    the signature (positional-only, ``*args``, keyword-only, ``**kwargs``). And what
    an approver is shown under a parameter's name is what an input rule on it reads."""
    f = _make(params, is_async=False)
    called, reference = _called(kind, f, lead, fixed)
    try:
        sig = inspect.signature(reference, follow_wrapped=False)
    except ValueError:
        return
    arguments = Arguments(called)
    seen: dict[str, Any] = {}
    for _ in range(2):
        args, kwargs = data.draw(alike_calls(sig))
        received = _received(reference, args, kwargs)
        if received is None:
            continue  # Python refuses the call: it never runs
        bound = bound_arguments(arguments, args, kwargs, keep_self=True)
        try:
            digest = call_digest("t", bound, "u", "v1")
        except NoCanonicalForm:  # a class as cls: refused (approval_unsupported)
            continue
        if digest in seen:
            assert seen[digest] == received, (params, kind, args, kwargs)
        seen[digest] = received
        for name, shown in bound.items():
            if name == "**kwargs":
                assert all(arguments.declares(k) or not k.isidentifier() for k in shown)
                continue
            value = arguments.value(name, args, kwargs, UNBOUND)
            assert (list(value) if isinstance(value, tuple) else value) == shown, (name, bound)


def test_a_keyword_passed_under_the_name_of_kwargs_is_what_its_rule_reads(
    configure: Any,
) -> None:
    # review 20 (high, through d2-gateway): the gate is `def call(**arguments)`;
    # a client argument named "arguments" was read by its rule as the whole dict
    configure(
        {
            "role": "r",
            "permissions": [
                {
                    "tool": "run",
                    "conditions": {
                        "input": {"arguments": {"maxLength": 16, "not_contains": "--force"}}
                    },
                }
            ],
        }
    )

    @d2_guard("run")
    def run(**arguments: Any) -> str:
        return "ran"

    set_user("u", roles=["r"])
    assert run(**{"arguments": "-n"}) == "ran"
    for hostile in ("--force -r /", "x" * 17):
        with pytest.raises(PermissionDeniedError) as info:
            run(**{"arguments": hostile, "other": 1})
        assert info.value.reason == "input_validation"

    # the dict itself is what the name reads when no keyword of that name is passed
    def plain(**arguments: Any) -> None:
        return None

    spec = Arguments(plain)
    assert spec.value("arguments", (), {"other": 1}, UNBOUND) == {"other": 1}
    assert spec.value("arguments", (), {"arguments": "x", "other": 1}, UNBOUND) == "x"
    shown = bound_arguments(spec, (), {"arguments": "x", "other": 1})
    assert shown == {"other": 1, "**kwargs": {"arguments": "x"}}
