"""d2-core: a fast, default-deny authorization guard for the functions an LLM agent
(or any app) can call.

Guard a function with :func:`d2_guard`, set the user per request with
:func:`set_user`, and configure once at startup with :func:`configure_rbac_sync` (or
``await configure_rbac_async()``). Anything the policy does not allow is denied.
"""

from ._version import __version__
from .approvals import (
    ApprovalRequest,
    approve,
    approve_async,
    pending_approvals,
    pending_approvals_async,
    reject,
    reject_async,
)
from .context import (
    UserContext,
    attach,
    clear_context,
    clear_context_async,
    clear_user_context,
    detach,
    get_facts,
    get_user_context,
    has_any_fact,
    has_fact,
    record_fact,
    record_facts,
    set_user,
    set_user_context,
    warn_if_context_set,
)
from .errors import (
    STATUS_MAP,
    ApprovalRequiredError,
    BundleExpiredError,
    ConfigurationError,
    ContextLeakWarning,
    D2Error,
    D2NoContextError,
    D2PlanLimitError,
    InvalidPolicyError,
    InvalidSignatureError,
    MissingPolicyError,
    PermissionDeniedError,
    PolicyError,
    PolicyTooLargeError,
    TooManyToolsError,
)
from .evaluate import Decision, TraceStep
from .guard import d2, d2_guard
from .limits import Limits
from .local import InMemorySource, LocalFileSource, PolicySource
from .manager import (
    PolicyManager,
    allowed_tools,
    configure_rbac_async,
    configure_rbac_sync,
    explain,
    get_policy_manager,
    is_allowed,
    shutdown_all_rbac,
    shutdown_rbac,
)
from .threads import run_in_thread, submit_with_context, thread_entrypoint

__all__ = [
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
    "__version__",
    "allowed_tools",
    "approve",
    "approve_async",
    "attach",
    "clear_context",
    "clear_context_async",
    "clear_user_context",
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
    "is_allowed",
    "pending_approvals",
    "pending_approvals_async",
    "record_fact",
    "record_facts",
    "reject",
    "reject_async",
    "run_in_thread",
    "set_user",
    "set_user_context",
    "shutdown_all_rbac",
    "shutdown_rbac",
    "submit_with_context",
    "thread_entrypoint",
    "warn_if_context_set",
]
