"""The per-request user context, kept in a ``contextvars.ContextVar``.

Each asyncio task and each thread sees its own value, so concurrent requests never
see each other's user. ``set_user`` starts a new request scope (history and facts
of later issues live there); ``clear_user_context`` ends it.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import os
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from ._functions import forwards_unchanged, is_coroutine_function
from .errors import ConfigurationError

if TYPE_CHECKING:
    import logging

__all__ = [
    "RequestScope",
    "UserContext",
    "attach",
    "clear_context",
    "clear_context_async",
    "clear_user_context",
    "detach",
    "get_facts",
    "get_user_context",
    "has_any_fact",
    "has_fact",
    "record_fact",
    "record_facts",
    "set_user",
    "set_user_context",
    "warn_if_context_set",
]

P = ParamSpec("P")
R = TypeVar("R")
_request_numbers = itertools.count(1)


class RequestScope:
    """Mutable state of one request, shared by everything that runs under the same
    ``set_user``: child tasks, ``d2.threads`` helpers, ``.aio``.

    ``history``: ids of the allowed calls, in order. ``facts``: data-flow labels ->
    what recorded them. ``progress``: per policy, what it has read of the history
    (sequence progress, labels). ``spent``: calls counted by ``per: request``
    budgets. ``number``: this request's number in the process (decision logs).
    ``version``: bumped whenever the history or the facts change. ``lock``: see
    :func:`request_lock`.
    """

    __slots__ = ("facts", "forks", "history", "lock", "number", "progress", "spent", "version")

    def __init__(self) -> None:
        self.history: list[str] = []
        self.facts: dict[str, str] = {}
        self.progress: dict[object, Any] = {}
        self.spent: dict[str, int] = {}
        self.number = next(_request_numbers)
        self.version = 0
        self.lock = threading.Lock()
        self.forks = _forks[0]


_forks = [0]  # bumped in a forked child: request locks made before are replaced


def request_lock(scope: RequestScope) -> threading.Lock:
    """The lock held while a call of a policy that keeps history is judged on the
    request's history and recorded in it (two threads of one request never both
    pass on the same history). Nothing that runs app code runs under it. In a
    process forked since the request began, a fresh one (the thread that may have
    held it is not in the child)."""
    if scope.forks != _forks[0]:
        with _swapping[0]:  # two threads of the child replace it once, together
            if scope.forks != _forks[0]:
                scope.lock = threading.Lock()
                scope.forks = _forks[0]
    return scope.lock


_swapping = [threading.Lock()]


def _forked() -> None:
    _forks[0] += 1
    _swapping[0] = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class UserContext:
    """Who is calling: ``user_id`` (``None`` when no user is set) and ``roles``
    (an immutable, normalised ``frozenset``), plus the request they act in.

    Read-only views of the request: ``request_id`` (unique in this process, the
    same as the decision log's), ``call_history`` (the allowed calls so far, in
    order) and ``facts`` (the data-flow labels recorded). ``UserContext()`` and
    ``UserContext(user_id="bob", roles=["viewer"])`` build one, for example as
    the ``actor=`` of :mod:`d2.threads`; it starts a request of its own.
    """

    __slots__ = ("roles", "scope", "user_id")

    user_id: str | None
    roles: frozenset[str]
    scope: RequestScope

    def __init__(
        self,
        user_id: str | int | None = None,
        roles: Iterable[str] | str | None = None,
        scope: RequestScope | None = None,
    ) -> None:
        object.__setattr__(self, "user_id", _normalise_user_id(user_id))
        object.__setattr__(self, "roles", normalise_roles(roles))
        object.__setattr__(self, "scope", scope if scope is not None else RequestScope())

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("UserContext is immutable; call set_user() to change the user")

    def __reduce__(self) -> tuple[type[UserContext], tuple[str | None, frozenset[str]]]:
        # copies and pickles carry the user, not the request scope (history, facts)
        return (UserContext, (self.user_id, self.roles))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UserContext):
            return NotImplemented
        return self.user_id == other.user_id and self.roles == other.roles

    def __hash__(self) -> int:
        return hash((self.user_id, self.roles))

    def __repr__(self) -> str:
        return f"UserContext(user_id={self.user_id!r}, roles={sorted(self.roles)!r})"

    @property
    def is_set(self) -> bool:
        """True when a user id is set."""
        return self.user_id is not None

    @property
    def request_id(self) -> str:
        """This request's id: unique in the process, as in the decision log."""
        return request_id_of(self.scope)

    @property
    def call_history(self) -> tuple[str, ...]:
        """The tool ids of this request's allowed calls, oldest first."""
        return tuple(self.scope.history)

    @property
    def facts(self) -> frozenset[str]:
        """The data-flow labels recorded in this request."""
        return frozenset(self.scope.facts)


_process_tag = [os.urandom(4).hex()]


def process_tag() -> str:
    """Random hex naming this process in request ids (new after ``fork``)."""
    return _process_tag[0]


def request_id_of(scope: RequestScope) -> str:
    """The id of a request scope as logs show it: ``<process tag>-<number>``."""
    return f"{_process_tag[0]}-{scope.number}"


ASCII_SPACE = " \t\n\r\f\v"  # what "stripped" strips: never Unicode or control characters
_ANONYMOUS_ROLES: frozenset[str] = frozenset()


def normalise_roles(roles: Iterable[str] | str | None) -> frozenset[str]:
    """Strip each role, drop empties and duplicates; a lone string is one role."""
    if roles is None:
        return _ANONYMOUS_ROLES
    if isinstance(roles, str):
        roles = (roles,)
    out: set[str] = set()
    for role in roles:
        if not isinstance(role, str):
            raise ConfigurationError(
                f"role {role!r} is a {type(role).__name__}; roles must be strings, "
                "for example set_user('alice', roles=['analyst'])"
            )
        role = role.strip(ASCII_SPACE)
        if role:
            out.add(role)
    return frozenset(out)


def _normalise_user_id(user_id: object) -> str | None:
    if user_id is None or isinstance(user_id, str):
        return user_id or None
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        return str(user_id)
    raise ConfigurationError(
        f"user_id {user_id!r} is a {type(user_id).__name__}; pass a string (or int) id"
    )


_DEFAULT = UserContext(None, _ANONYMOUS_ROLES)  # shared: never write to its scope
_current: contextvars.ContextVar[UserContext] = contextvars.ContextVar(
    "d2_user_context", default=_DEFAULT
)
# Read by the guard on every call: one C-level lookup.
current_context = _current.get


def _forget_user_after_fork() -> None:
    # A forked worker (process pools) starts with the context of whatever thread
    # forked it: another request's user. Start it with no user instead, and with
    # request ids of its own.
    _current.set(_DEFAULT)
    _process_tag[0] = os.urandom(4).hex()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_user_after_fork)


def set_user(user_id: str | int | None, roles: Iterable[str] | str | None = None) -> UserContext:
    """Set the current user for this request and start a fresh request scope.

    Returns the new context. Call ``clear_user_context()`` (or use
    ``@clear_context``) when the request ends.
    """
    ctx = UserContext(user_id, roles)
    _current.set(ctx)
    return ctx


class set_user_context(UserContext):
    """Set the current user, as :func:`set_user` does, and return the new context.

    Used as ``with set_user_context(user_id, roles):`` (or ``async with``) it also
    restores the previous context (user and request) when the block ends, even on
    an error; blocks nest. Called without ``with`` the user stays set until
    ``clear_user_context()``, as with :func:`set_user`.
    """

    __slots__ = ("_token",)

    _token: contextvars.Token[UserContext] | None

    def __init__(
        self, user_id: str | int | None = None, roles: Iterable[str] | str | None = None
    ) -> None:
        super().__init__(user_id, roles)
        object.__setattr__(self, "_token", _current.set(self))

    def __enter__(self) -> UserContext:
        return self

    def __exit__(self, *exc_info: object) -> None:
        token = self._token
        if token is None:
            return
        object.__setattr__(self, "_token", None)
        try:
            _current.reset(token)
        except ValueError:  # the block ended in another context (task, thread): clear
            _current.set(UserContext(None, _ANONYMOUS_ROLES))

    async def __aenter__(self) -> UserContext:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__(*exc_info)


def attach(ctx: UserContext) -> contextvars.Token[UserContext]:
    """Make ``ctx`` current again (same user, roles and request scope: its history
    and facts continue), e.g. for the next message of a long agent session. Returns
    the token :func:`detach` needs to restore what was current before."""
    if not isinstance(ctx, UserContext):
        raise ConfigurationError(f"attach() takes a UserContext, got {type(ctx).__name__}")
    return _current.set(ctx)


def detach(token: contextvars.Token[UserContext]) -> None:
    """Restore the context that was current before the matching :func:`attach`."""
    _current.reset(token)


def get_user_context() -> UserContext:
    """The current context; ``user_id`` is ``None`` when no user is set."""
    return _current.get()


def clear_user_context() -> None:
    """Forget the current user and end the request scope (history, facts)."""
    _current.set(UserContext(None, _ANONYMOUS_ROLES))


def _label(fact: object) -> str:
    if not isinstance(fact, str) or not fact.strip():
        raise ConfigurationError(f"a fact is a non-empty string label, got {fact!r}")
    return fact.strip()


def _writable_scope() -> RequestScope:
    ctx = _current.get()
    if ctx is _DEFAULT:  # no request started in this context: start an anonymous one
        ctx = UserContext(None, _ANONYMOUS_ROLES)
        _current.set(ctx)
    return ctx.scope


def record_fact(fact: str) -> None:
    """Record a data-flow label (e.g. ``"UNTRUSTED_INPUT"``) in this request: tools
    that ``metadata.data_flow.blocks`` lists for it are denied from now on."""
    scope = _writable_scope()
    scope.facts.setdefault(_label(fact), "record_fact")
    scope.version += 1


def record_facts(facts: Iterable[str]) -> None:
    """Record several labels (see :func:`record_fact`)."""
    labels = [_label(f) for f in ([facts] if isinstance(facts, str) else facts)]
    scope = _writable_scope()
    for label in labels:
        scope.facts.setdefault(label, "record_fact")
    scope.version += 1


def get_facts() -> frozenset[str]:
    """The labels recorded in this request (by tools' data-flow labels or by hand)."""
    return frozenset(_current.get().scope.facts)


def has_fact(fact: str) -> bool:
    """Whether ``fact`` was recorded in this request."""
    return fact in _current.get().scope.facts


def has_any_fact(facts: Iterable[str]) -> bool:
    """Whether any of ``facts`` was recorded in this request."""
    recorded = _current.get().scope.facts
    return any(f in recorded for f in ([facts] if isinstance(facts, str) else facts))


def warn_if_context_set(*, logger: logging.Logger | None = None) -> bool:
    """Return True, and log a warning, when a user context is still set: a cheap
    leak detector for the end of a request, a worker task or a test. False when no
    user is set. Never raises.

    The warning goes to ``logger`` (default: the ``d2`` logger).
    """
    ctx = _current.get()
    if ctx.user_id is None and not ctx.roles:
        return False
    try:
        if logger is None:
            import logging

            logger = logging.getLogger("d2")
        logger.warning(
            "D2 user context leaked: %r is still set; clear it at the end of each request "
            "with clear_user_context() or @clear_context",
            ctx,
        )
    except Exception:
        pass
    return True


def clear_context(func: Callable[P, R]) -> Callable[P, R]:
    """Decorator: clear the user context when ``func`` returns or raises.

    Works on sync and async functions (for async ones it is the same as
    :func:`clear_context_async`).
    """
    if is_coroutine_function(func):
        return cast("Callable[P, R]", clear_context_async(cast("Callable[P, Awaitable[R]]", func)))

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        finally:
            clear_user_context()

    return forwards_unchanged(wrapper)


def clear_context_async(
    func: Callable[P, Awaitable[R]],
) -> Callable[P, Awaitable[R]]:
    """Decorator for ``async def`` handlers: clear the user context when the
    coroutine returns or raises."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await func(*args, **kwargs)
        finally:
            clear_user_context()

    return forwards_unchanged(wrapper)
