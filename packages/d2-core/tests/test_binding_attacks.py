"""Attacks on argument binding (input rules, approvals) through decorators and unusual
callables, from a hostile review: each test is a call that once checked, or got
approved for, other values than the function received (docs/security.md, "Input
rules through forwarding decorators" and "An approval of one call that runs
another"), or a defence the review found holding."""

from __future__ import annotations

import functools
import inspect
from typing import Any, ClassVar

import pytest
from d2.core import (
    ApprovalRequiredError,
    InMemorySource,
    PermissionDeniedError,
    approve,
    configure_rbac_sync,
    d2_guard,
    set_user,
)
from d2.core.testing import policy_document

MAX_100 = {"amount": {"type": "int", "max": 100}}


def _pay_policy(*tools: str, input: dict[str, Any] | None = None) -> None:
    configure_rbac_sync(
        source=InMemorySource(
            policy_document(
                {
                    "role": "r",
                    "permissions": [
                        {"tool": t, "conditions": {"input": input or MAX_100}} for t in tools
                    ],
                }
            )
        )
    )
    set_user("u", roles=["r"])


class TransparentProxy:
    """A decorator built the way ``wrapt`` builds them (``wrapt.FunctionWrapper`` /
    ``ObjectProxy``): a transparent proxy that forwards every attribute it does not
    define, ``__code__``, ``__defaults__``, ``__name__``..., to the wrapped function,
    and has ``__wrapped__``. Tracing/instrumentation libraries wrap functions this
    way. This one injects the first argument, as the decorator in
    docs/security.md ("Input rules through forwarding decorators") does."""

    def __init__(self, wrapped: Any, inject: Any) -> None:
        object.__setattr__(self, "__wrapped__", wrapped)
        object.__setattr__(self, "_inject", inject)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__wrapped__, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(self._inject, *args, **kwargs)


def test_a_transparent_proxy_decorator_that_injects_an_argument_is_not_bound_as_the_function() -> (
    None
):
    """Attack: the documented injecting-decorator bypass, with the decorator written as
    a transparent proxy instead of ``functools.wraps``. ``_resolve`` reads the proxy's
    forwarded ``__code__`` and treats it as a plain function of the wrapped signature
    (``forwarding`` is only set for a ``*args``/``**kwargs`` code), so the caller's
    5000 is bound to ``account`` and ``amount`` reads its default 0 under ``max: 100``;
    the proxy then calls ``transfer("acct-1", 5000)``: 5,000 moves."""
    _pay_policy("pay")
    moved: list[int] = []

    def transfer(account: str, amount: int = 0) -> str:
        moved.append(amount)
        return account

    tool = d2_guard("pay")(TransparentProxy(transfer, "acct-1"))
    try:
        tool(5000)
    except PermissionDeniedError as err:
        assert err.reason == "input_validation"
    assert moved == [], f"max: 100 was checked against the wrong parameter; moved {moved}"


class StaticCall:
    """A callable object whose ``__call__`` is a ``staticmethod``: Python calls it
    without the instance (``obj(a, b)`` -> ``__call__(a, b)``)."""

    ran: ClassVar[list[tuple[int, int]]] = []

    @staticmethod
    def __call__(quantity: int, amount: int) -> None:
        StaticCall.ran.append((quantity, amount))


def test_a_static_call_method_binds_to_its_own_parameters() -> None:
    """Attack: ``_resolve`` always puts the object in front of ``type(obj).__call__``
    (as if it were a method), so for a static ``__call__`` every argument is read one
    parameter to the right: the rule on ``amount`` reads ``quantity`` (1), while the
    function receives ``amount=5000``."""
    _pay_policy("buy")
    StaticCall.ran.clear()
    tool = d2_guard("buy")(StaticCall())
    try:
        tool(1, 5000)
    except PermissionDeniedError as err:
        assert err.reason == "input_validation"
    assert StaticCall.ran == [], f"amount 5000 ran under max: 100: {StaticCall.ran}"


class ClassCall:
    """A callable object whose ``__call__`` is a ``classmethod``."""

    ran: ClassVar[list[tuple[int, int]]] = []

    @classmethod
    def __call__(cls, quantity: int, amount: int) -> None:
        cls.ran.append((quantity, amount))


def test_a_class_call_method_binds_to_its_own_parameters() -> None:
    """Same shift with a ``classmethod`` ``__call__``: the object *and* the class are
    put in front, so ``amount`` reads ``quantity``."""
    _pay_policy("buy")
    ClassCall.ran.clear()
    tool = d2_guard("buy")(ClassCall())
    try:
        tool(1, 5000)
    except PermissionDeniedError as err:
        assert err.reason == "input_validation"
    assert ClassCall.ran == [], f"amount 5000 ran under max: 100: {ClassCall.ran}"


# -- approvals: the digest and what an approver is shown ------------------------------

SEND = {
    "role": "agent",
    "permissions": [{"tool": "send", "approval": {"approvers": ["lead"], "ttl": "15m"}}],
}
LEAD = {"role": "lead", "permissions": ["send"]}


def _approved_request(tool: Any, *args: Any, **kwargs: Any) -> Any:
    set_user("agent-7", roles=["agent"])
    with pytest.raises(ApprovalRequiredError) as info:
        tool(*args, **kwargs)
    request = info.value.request
    set_user("dana", roles=["lead"])
    approve(request.id)
    set_user("agent-7", roles=["agent"])
    return request


def test_an_approver_sees_every_argument_a_positional_only_tool_receives() -> None:
    """Attack: ``def send(to, /, **headers)``. A call ``send("alice@x", to="evil@x")``
    gives the function ``to="alice@x"`` and ``headers={"to": "evil@x"}``, but
    ``bound_arguments`` drops every ``**kwargs`` key already bound by name, so the
    approver is shown ``{"to": "alice@x"}`` only and the approval id is that of the
    harmless ``send("alice@x")``: an approval of one call runs another."""
    configure_rbac_sync(source=InMemorySource(policy_document(SEND, LEAD)))
    received: list[dict[str, Any]] = []

    @d2_guard("send")
    def send(to: str, /, **headers: str) -> None:
        received.append({"to": to, **{f"header:{k}": v for k, v in headers.items()}})

    request = _approved_request(send, "alice@x")  # what the approver agreed to
    assert request.arguments == {"to": "alice@x"}
    set_user("agent-7", roles=["agent"])
    with pytest.raises(ApprovalRequiredError) as info:  # a different call
        send("alice@x", to="evil@x")
    assert info.value.request.id != request.id
    assert received == []


def test_an_approval_for_no_items_does_not_cover_an_items_keyword() -> None:
    """Same collision with ``*items, **options``: ``notify()`` and
    ``notify(items=[...])`` (which the function receives as ``options["items"]``)
    digest the same, because the ``**kwargs`` key equal to the ``*args`` name is
    dropped."""
    configure_rbac_sync(
        source=InMemorySource(
            policy_document(
                {
                    "role": "agent",
                    "permissions": [
                        {"tool": "notify", "approval": {"approvers": ["lead"], "ttl": "15m"}}
                    ],
                },
                {"role": "lead", "permissions": ["notify"]},
            )
        )
    )
    received: list[Any] = []

    @d2_guard("notify")
    def notify(*items: str, **options: Any) -> None:
        received.append((items, options))

    _approved_request(notify)
    with pytest.raises(ApprovalRequiredError):
        notify(items=["everyone@x"])
    assert received == []


# -- defences that held ---------------------------------------------------------------


def test_a_class_based_decorator_with_update_wrapper_is_not_bound_positionally() -> None:
    """A class-based injecting decorator (``functools.update_wrapper(self, f)``,
    ``__call__(self, *args, **kwargs)``): a positional amount is unbindable and
    refused. The object has ``__wrapped__``, so it is a forwarding wrapper like a
    ``functools.wraps`` function: ``amount`` is refused by keyword too, whatever its
    value (changed from the review, which let ``amount=50`` run: the rule for
    wrappers is the same whether the wrapper is a function or an object); declaring
    the signature, the documented fix, binds exactly."""
    _pay_policy("pay")
    moved: list[int] = []

    class with_account:
        def __init__(self, f: Any, honest: bool = False) -> None:
            functools.update_wrapper(self, f)
            self.f = f
            if honest:  # what the caller passes is what f gets after "acct-1"
                sig = inspect.signature(f)
                self.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:])

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return self.f("acct-1", *args, **kwargs)

    @d2_guard("pay")
    @with_account
    def transfer(account: str, amount: int = 0) -> None:
        moved.append(amount)

    with pytest.raises(PermissionDeniedError):
        transfer(5000)
    with pytest.raises(PermissionDeniedError):
        transfer(amount=5000)
    with pytest.raises(PermissionDeniedError, match="forwarding wrapper"):
        transfer(amount=50)
    assert moved == []

    def pay(account: str, amount: int = 0) -> None:
        moved.append(amount)

    declared = d2_guard("pay")(with_account(pay, honest=True))
    for call in (lambda: declared(5000), lambda: declared(amount=5000)):
        with pytest.raises(PermissionDeniedError, match="fails max 100"):
            call()
    declared(amount=50)
    declared(50)
    assert moved == [50, 50]


def test_partials_of_methods_and_positional_only_defaults_bind_exactly() -> None:
    """``partial`` of a bound method with a keyword, and a positional-only default
    shadowed by a same-named keyword: the rule reads what the function gets."""
    _pay_policy("pay")
    moved: list[int] = []

    class Account:
        def pay(self, amount: int = 0, /, **extra: Any) -> None:
            moved.append(amount)

    tool = d2_guard("pay")(functools.partial(Account().pay))
    tool(amount=5000)  # Python: amount=0 (the default), extra={"amount": 5000}
    with pytest.raises(PermissionDeniedError):
        tool(5000)
    assert moved == [0]


def test_an_approver_is_shown_a_keyword_named_like_a_parameter_apart_from_it() -> None:
    """What the approver of ``send("alice@x", to="evil@x")`` sees: the positional
    ``to`` and, apart from it, the ``to`` that ``**headers`` collects."""
    configure_rbac_sync(source=InMemorySource(policy_document(SEND, LEAD)))

    @d2_guard("send")
    def send(to: str, /, **headers: str) -> None:
        raise AssertionError("ran without an approval")

    set_user("agent-7", roles=["agent"])
    with pytest.raises(ApprovalRequiredError) as info:
        send("alice@x", to="evil@x", cc="bob@x")
    assert info.value.request.arguments == {
        "to": "alice@x",
        "cc": "bob@x",
        "**kwargs": {"to": "evil@x"},
    }


def test_a_rule_on_a_positional_only_parameter_reads_it_not_a_keyword_of_the_same_name() -> None:
    """``def send(to, /, **headers)``: a rule on ``to`` checks the ``to`` the function
    receives (the positional one), never ``headers["to"]``, in both directions."""
    _pay_policy("send", input={"to": {"in": ["alice@x"]}})
    sent: list[str] = []

    @d2_guard("send")
    def send(to: str, /, **headers: str) -> None:
        sent.append(to)

    send("alice@x", to="evil@x")  # the function receives to="alice@x"
    with pytest.raises(PermissionDeniedError) as info:
        send("evil@x", to="alice@x")
    assert info.value.reason == "input_validation"
    assert sent == ["alice@x"]


class QuietProxy:
    """A proxy that forwards every attribute to the function it wraps, but keeps it
    under another name than ``__wrapped__``, and injects the first argument."""

    def __init__(self, target: Any) -> None:
        object.__setattr__(self, "_target", target)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target("acct-1", *args, **kwargs)


class InjectingPartial(functools.partial):  # type: ignore[type-arg]
    """A ``partial`` subclass whose ``__call__`` injects the first argument."""

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        return super().__call__("acct-1", *args, **kwargs)


def test_a_callable_is_bound_by_how_python_calls_it_not_by_what_it_forwards() -> None:
    """Attack variants of the transparent proxy: a proxy (no ``__wrapped__``) that
    forwards a declared ``__signature__``, a proxy of a bound method (it forwards
    ``__func__`` and ``__self__``), and a ``partial`` subclass with its own
    ``__call__``. Each looked like the function it wraps; Python calls their
    ``__call__``, which injects ``account``, so ``amount`` is bound to nothing the
    guard can read and a positional 5000 is refused."""
    _pay_policy("pay")
    moved: list[int] = []

    def transfer(account: str, amount: int = 0) -> None:
        moved.append(amount)

    transfer.__signature__ = inspect.signature(transfer)  # type: ignore[attr-defined]

    class Account:
        def transfer(self, account: str, amount: int = 0) -> None:
            moved.append(amount)

    for tool in (
        QuietProxy(transfer),
        QuietProxy(Account().transfer),
        InjectingPartial(transfer),
    ):
        guarded = d2_guard("pay")(tool)
        with pytest.raises(PermissionDeniedError) as info:
            guarded(5000)
        assert info.value.reason == "input_validation"
    assert moved == []


class OpaqueWrapper:
    """A wrapper whose ``__call__`` has no Python signature to read (``dict``'s
    constructor stands in for a C-implemented proxy such as ``wrapt``'s)."""

    __call__ = staticmethod(dict)

    def __init__(self, wrapped: Any) -> None:
        self.__wrapped__ = wrapped


def test_a_wrapper_of_unknown_signature_can_neither_pass_a_rule_nor_skip_an_approval() -> None:
    """Through a wrapper whose own signature is unknown, even a keyword is not read:
    the rule denies and ``approval.when`` asks a person (``amount=50`` would
    otherwise skip the approval, whatever the wrapper passes on)."""
    configure_rbac_sync(
        source=InMemorySource(
            policy_document(
                {
                    "role": "r",
                    "permissions": [
                        {"tool": "pay", "conditions": {"input": MAX_100}},
                        {
                            "tool": "refund",
                            "approval": {"approvers": ["r"], "when": {"amount": {"min": 101}}},
                        },
                    ],
                }
            )
        )
    )
    set_user("u", roles=["r"])

    def transfer(account: str, amount: int = 0) -> None:
        raise AssertionError("never called: dict() stands in for the wrapper")

    for tool_id, reason in (("pay", "input_validation"), ("refund", "approval_required")):
        guarded = d2_guard(tool_id)(OpaqueWrapper(transfer))
        with pytest.raises(PermissionDeniedError) as info:
            guarded(amount=50)
        assert info.value.reason == reason
    assert d2_guard("refund")(OpaqueWrapper.__call__)(amount=50) == {"amount": 50}
