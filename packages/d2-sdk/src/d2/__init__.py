__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__doc__ = """D2: a fast, default-deny authorization guard for the functions an LLM agent (or
any app) can call.

The stable public API. Add ``@d2_guard("tool-id")`` to each tool, call
``configure_rbac_sync()`` (or ``await configure_rbac_async()``) once at startup, and
``set_user(user_id, roles=[...])`` per request. Anything the policy does not allow is
denied.

Names that live in optional distributions (``ASGIMiddleware``, ``headers_extractor``)
are imported on first use; when the distribution is missing the ``ImportError``
names the extra to install.
"""

import typing as _typing

from d2.core import (
    STATUS_MAP,
    ApprovalRequest,
    ApprovalRequiredError,
    BundleExpiredError,
    ConfigurationError,
    ContextLeakWarning,
    D2Error,
    D2NoContextError,
    D2PlanLimitError,
    Decision,
    InMemorySource,
    InvalidPolicyError,
    InvalidSignatureError,
    Limits,
    LocalFileSource,
    MissingPolicyError,
    PermissionDeniedError,
    PolicyError,
    PolicyManager,
    PolicySource,
    PolicyTooLargeError,
    TooManyToolsError,
    TraceStep,
    UserContext,
    __version__,
    allowed_tools,
    approve,
    approve_async,
    attach,
    clear_context,
    clear_context_async,
    clear_user_context,
    configure_rbac_async,
    configure_rbac_sync,
    d2,
    d2_guard,
    detach,
    explain,
    get_facts,
    get_policy_manager,
    get_user_context,
    has_any_fact,
    has_fact,
    is_allowed,
    pending_approvals,
    pending_approvals_async,
    record_fact,
    record_facts,
    reject,
    reject_async,
    restore_request,
    restore_request_async,
    run_in_thread,
    set_user,
    set_user_context,
    shutdown_all_rbac,
    shutdown_rbac,
    submit_with_context,
    thread_entrypoint,
    warn_if_context_set,
)

from . import threads  # noqa: F401 - d2.threads, as in 1.x

configure_rbac = configure_rbac_async  # the 1.x name of configure_rbac_async

# name -> (module, attribute, extra that installs it)
_LAZY = {
    "ASGIMiddleware": ("d2.asgi", "ASGIMiddleware", "asgi"),
    "headers_extractor": ("d2.asgi", "headers_extractor", "asgi"),
    "WSGIMiddleware": ("d2.asgi", "WSGIMiddleware", "wsgi"),
    "wsgi_headers_extractor": ("d2.asgi", "wsgi_headers_extractor", "wsgi"),
    "add_permission_denied_handler": ("d2.asgi", "add_permission_denied_handler", "asgi"),
    "permission_denied_handler": ("d2.asgi", "permission_denied_handler", "asgi"),
}


def __getattr__(name: str) -> _typing.Any:
    try:
        module_name, attr, extra = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'd2' has no attribute {name!r}") from None
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f'd2.{name} needs the {extra!r} extra: pip install "d2-sdk[{extra}]"',
            name=module_name,
        ) from exc
    value = getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(_LAZY))


def _installed(name: str) -> bool:
    """Whether the distribution behind a lazy name is installed (found, not imported)."""
    from importlib.machinery import PathFinder  # already loaded: importlib.util is not

    try:
        if PathFinder.find_spec(_LAZY[name][0], __path__) is None:
            return False
        return name not in _NEEDS_STARLETTE or PathFinder.find_spec("starlette") is not None
    except (ImportError, ValueError):
        return False


_NEEDS_STARLETTE = frozenset({"add_permission_denied_handler", "permission_denied_handler"})

# ``from d2 import *`` binds every name of ``__all__``: names whose extra is not
# installed are left out (importing one by name says which extra to install).
__all__ = [
    "ASGIMiddleware",
    "ApprovalRequest",
    "ApprovalRequiredError",
    "BundleExpiredError",
    "ConfigurationError",
    "ContextLeakWarning",
    "D2Error",
    "D2NoContextError",
    "D2PlanLimitError",
    "Decision",
    "InMemorySource",
    "InvalidPolicyError",
    "InvalidSignatureError",
    "Limits",
    "LocalFileSource",
    "MissingPolicyError",
    "PermissionDeniedError",
    "PolicyError",
    "PolicyManager",
    "PolicySource",
    "PolicyTooLargeError",
    "STATUS_MAP",
    "TooManyToolsError",
    "TraceStep",
    "UserContext",
    "WSGIMiddleware",
    "__version__",
    "add_permission_denied_handler",
    "allowed_tools",
    "approve",
    "approve_async",
    "attach",
    "clear_context",
    "clear_context_async",
    "clear_user_context",
    "configure_rbac",
    "configure_rbac_async",
    "configure_rbac_sync",
    "d2",
    "d2_guard",
    "detach",
    "explain",
    "get_facts",
    "get_policy_manager",
    "get_user_context",
    "has_any_fact",
    "has_fact",
    "headers_extractor",
    "is_allowed",
    "pending_approvals",
    "pending_approvals_async",
    "permission_denied_handler",
    "record_fact",
    "record_facts",
    "reject",
    "reject_async",
    "restore_request",
    "restore_request_async",
    "run_in_thread",
    "set_user",
    "set_user_context",
    "shutdown_all_rbac",
    "shutdown_rbac",
    "submit_with_context",
    "thread_entrypoint",
    "warn_if_context_set",
    "wsgi_headers_extractor",
]
__all__ = [n for n in __all__ if n not in _LAZY or _installed(n)]
