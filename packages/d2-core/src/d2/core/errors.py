"""Every error D2 raises.

The hierarchy::

    D2Error
    ├── ConfigurationError            configure/setup problems; fix the setup
    │   └── InvalidPolicyError        a policy document that does not follow the language (*)
    ├── PermissionDeniedError         a guarded call was refused (every denial is one)
    │   ├── ApprovalRequiredError     the call waits for a person's approval (``.request``)
    │   ├── D2NoContextError          no user is set (reason ``no_user``)
    │   ├── MissingPolicyError        no policy in force, or the tool is in no entry
    │   └── BundleExpiredError        the policy in force is past ``metadata.expires`` (*)
    ├── PolicyError                   a policy (file or bundle) cannot be used
    │   ├── TooManyToolsError         a local policy names more tools than ``Limits`` allow
    │   ├── PolicyTooLargeError       a local policy file is bigger than ``Limits`` allow
    │   └── InvalidSignatureError     a signed bundle failed verification (cloud mode)
    └── D2PlanLimitError              the control plane refused for a plan limit (cloud mode)

    ContextLeakWarning (a Warning)    a user context outlived its request

(*) ``InvalidPolicyError`` and ``BundleExpiredError`` are ``PolicyError`` s too, so an
``except PolicyError`` written for the 1.x releases catches every unusable policy.

``MissingPolicyError``, ``BundleExpiredError`` and ``D2NoContextError`` are denials
(fail closed), so an ``except PermissionDeniedError`` around a guarded call catches
every refusal. When they are raised while loading a policy, ``tool_id`` is ``None``.

Every constructor of the 1.x releases keeps working next to the 2.x form (a message
first, the rest by keyword): ``PermissionDeniedError(tool_id, user_id, roles,
reason=...)``, ``MissingPolicyError(tool_id)``, ``D2NoContextError(tool_id)``,
``BundleExpiredError(reason, expiry_date)``, ``TooManyToolsError(tool_count, limit)``,
``PolicyTooLargeError(bundle_size, size_limit)`` and ``D2PlanLimitError(reason)``.
``STATUS_MAP`` maps the HTTP statuses of the control plane to the error raised for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .approval_data import ApprovalRequest

__all__ = [
    "ApprovalRequiredError",
    "BundleExpiredError",
    "ConfigurationError",
    "ContextLeakWarning",
    "D2Error",
    "D2NoContextError",
    "D2PlanLimitError",
    "InvalidPolicyError",
    "InvalidSignatureError",
    "MissingPolicyError",
    "PermissionDeniedError",
    "PolicyError",
    "PolicyTooLargeError",
    "STATUS_MAP",
    "TooManyToolsError",
]


class D2Error(Exception):
    """Root of every error raised by D2."""


class ConfigurationError(D2Error):
    """D2 is set up wrongly (bad argument, missing extra, bad environment variable)."""


class PolicyError(D2Error):
    """A policy (a local file or a signed bundle) cannot be used: too many tools, too
    large, a bad signature, invalid or expired. Subclasses say which."""


class ContextLeakWarning(Warning):
    """A user context is still set where none should be (for example at the end of
    a request): clear it with ``clear_user_context()`` or ``@clear_context``."""


class InvalidPolicyError(ConfigurationError, PolicyError):
    """A policy document does not follow the policy language; it was refused whole.

    ``source`` names the file (or ``<memory>``), ``errors`` holds one line per
    problem, each starting with the path inside the document.
    """

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.source = source
        self.errors: tuple[str, ...] = tuple(errors)
        shown = "\n".join(f"  - {e}" for e in self.errors[:20])
        more = f"\n  ... and {len(self.errors) - 20} more" if len(self.errors) > 20 else ""
        super().__init__(
            f"invalid policy {source} ({len(self.errors)} problem"
            f"{'s' if len(self.errors) != 1 else ''}); fix it and reload:\n{shown}{more}"
        )


_UNSET: Any = object()


def _role_set(roles: Any) -> frozenset[str]:
    if roles is None:
        return frozenset()
    if isinstance(roles, str):
        return frozenset((roles,))
    return frozenset(roles)


class PermissionDeniedError(D2Error):
    """A guarded call was refused; the tool did not run.

    ``reason`` is machine-readable (for example ``not_granted``, ``explicit_deny``,
    ``no_user``, ``missing_policy``, ``policy_expired``, ``unknown_tool``).
    ``trace`` lists, in order, the decision steps that ran and what each concluded
    (:class:`~d2.core.evaluate.TraceStep`); ``message`` says what to do.
    ``retry_after``: for ``budget_exceeded``, seconds until the exhausted window
    resets (``None`` for a ``per: request`` budget, and for other reasons).

    Two ways to build one: ``PermissionDeniedError(message, tool_id=..., user_id=...,
    roles=..., reason=...)``, or the 1.x form ``PermissionDeniedError(tool_id,
    user_id, roles, reason=...)`` (two or more positional arguments, or the fields by
    keyword without a message), whose message is written from the fields.
    """

    reason_default = "denied"
    retry_after: float | None = None

    def __init__(
        self,
        message: str | None = None,
        user_id_1x: Any = _UNSET,
        roles_1x: Any = _UNSET,
        /,
        *,
        tool_id: str | None = None,
        user_id: str | None = None,
        roles: Any = frozenset(),
        reason: str | None = None,
        trace: Sequence[Any] = (),
        retry_after: float | None = None,
    ) -> None:
        if user_id_1x is not _UNSET:  # 1.x: (tool_id, user_id, roles)
            tool_id, message = message, None
            user_id = user_id_1x
            if roles_1x is not _UNSET:
                roles = roles_1x
        roles = _role_set(roles)
        self.retry_after = retry_after
        self.tool_id = tool_id
        self.user_id = user_id
        self.roles = roles
        self.reason = reason or self.reason_default
        if message is None:
            message = self._default_message()
        super().__init__(message)
        self._message: str | None = message
        self._trace: tuple[Any, ...] | None = tuple(trace)
        self._explain: Callable[[], tuple[str, tuple[Any, ...]]] | None = None

    def _default_message(self) -> str:
        shown = ", ".join(sorted(self.roles)) or "none"
        return f"{self.tool_id!r} denied for user {self.user_id!r} (roles [{shown}]): {self.reason}"

    @classmethod
    def deferred(
        cls,
        reason: str,
        tool_id: str,
        user_id: str | None,
        roles: frozenset[str],
        explain: Callable[[], tuple[str, tuple[Any, ...]]],
    ) -> PermissionDeniedError:
        """A denial whose message and trace are built by ``explain`` on first use,
        so refusing a call stays cheap (internal: used by the evaluator)."""
        err = cls.__new__(cls)
        err.tool_id = tool_id
        err.user_id = user_id
        err.roles = roles
        err.reason = reason
        err._message = None
        err._trace = None
        err._explain = explain
        return err

    def _resolve(self) -> None:
        explain, self._explain = self._explain, None
        if explain is None:  # pragma: no cover - defensive
            self._message, self._trace = self._message or "", self._trace or ()
            return
        self._message, self._trace = explain()
        self.args = (self._message,)

    @property
    def message(self) -> str:
        """What was refused, why, and what to do."""
        if self._message is None:
            self._resolve()
        return self._message or ""

    @property
    def trace(self) -> tuple[Any, ...]:
        """The decision steps that ran, in order."""
        if self._trace is None:
            self._resolve()
        return self._trace or ()

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"

    def __reduce__(self) -> Any:  # keep attributes across pickling (process pools)
        state = {
            "tool_id": self.tool_id,
            "user_id": self.user_id,
            "roles": self.roles,
            "reason": self.reason,
            "trace": self.trace,
            "retry_after": self.retry_after,
        }
        extra = {k: v for k, v in vars(self).items() if not k.startswith("_") and k not in state}
        return (_rebuild_denial, (type(self), self.message, state, extra))


def _rebuild_denial(
    cls: type[PermissionDeniedError], message: str, state: dict[str, Any], extra: dict[str, Any]
) -> PermissionDeniedError:
    err = cls.__new__(cls)
    PermissionDeniedError.__init__(err, message, **state)
    vars(err).update(extra)  # subclass fields (request, expiry_date, ...)
    return err


class ApprovalRequiredError(PermissionDeniedError):
    """The call needs a person's approval first (a grant's ``approval`` rule).

    ``request`` is the :class:`~d2.core.approvals.ApprovalRequest`: show it to an
    approver, who calls ``d2.approve(request.id)``; then the same user's identical
    call runs once before ``request.expires_at``. Reason ``approval_required``.
    """

    reason_default = "approval_required"

    def __init__(self, message: str, *, request: ApprovalRequest, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.request = request


class _OneToolDenial(PermissionDeniedError):
    """A denial whose 1.x constructor took only the tool id."""

    def __init__(self, message: str | None = None, /, *args: Any, **fields: Any) -> None:
        if message is not None and not args and not fields:  # 1.x: (tool_id)
            super().__init__(tool_id=message)
        else:
            super().__init__(message, *args, **fields)


class D2NoContextError(_OneToolDenial):
    """A guarded call (or ``d2.threads`` work) with no user set: reason ``no_user``.

    Set the user for the request with ``d2.set_user(user_id, roles=[...])`` (or pass
    ``actor=`` to ``d2.threads`` helpers). A ``PermissionDeniedError`` too, so both
    ``except`` clauses catch it. 1.x form: ``D2NoContextError(tool_id)``.
    """

    reason_default = "no_user"

    def _default_message(self) -> str:
        return (
            f"no user context is set for {self.tool_id!r}: call d2.set_user(user_id, "
            "roles=[...]) for this request (context does not cross threads you start "
            "yourself: use d2.threads.submit_with_context or pass actor=)"
        )


class MissingPolicyError(_OneToolDenial):
    """No policy is in force (not configured, shut down, revoked), or no entry of
    the policy can match the tool id. Fail closed: the call is denied.

    1.x form: ``MissingPolicyError(tool_id)`` (sets ``.tool_id``)."""

    reason_default = "missing_policy"

    def _default_message(self) -> str:
        return (
            f"tool {self.tool_id!r} is in no entry of the policy in force (or no policy "
            "is in force): add it to a role's permissions, or configure D2 first"
        )


class BundleExpiredError(PermissionDeniedError, PolicyError):
    """The policy's ``metadata.expires`` has passed (or, in local mode, is missing or
    too far ahead). Every guarded call is denied until a fresh policy loads.

    ``expiry_date``: the expiry as ISO 8601 text when known. 1.x form:
    ``BundleExpiredError(reason, expiry_date=None)``: one or two positional
    arguments and no other keyword; ``reason`` is then the text given.
    """

    reason_default = "policy_expired"
    expiry_date: str | None = None

    def __init__(
        self,
        message: str | None = None,
        expiry_date_1x: Any = _UNSET,
        /,
        *,
        expiry_date: str | None = None,
        **fields: Any,
    ) -> None:
        if expiry_date_1x is not _UNSET or (message is not None and not fields):
            # 1.x: (reason, expiry_date=None)
            reason = message or self.reason_default
            date = expiry_date if expiry_date_1x is _UNSET else expiry_date_1x
            text = f"policy bundle expired: {reason}"
            if date:
                text += f" (expiry date: {date})"
            super().__init__(text + "; load a renewed policy", reason=reason)
            self.expiry_date = None if date is None else str(date)
            return
        super().__init__(message, **fields)
        self.expiry_date = expiry_date


class TooManyToolsError(PolicyError):
    """A local policy names more distinct tools than its ``Limits`` allow.

    ``tool_count`` and ``limit`` say by how much. 1.x form:
    ``TooManyToolsError(tool_count, limit)``."""

    def __init__(
        self, message: str | int, limit_1x: int | None = None, /, *,
        tool_count: int | None = None, limit: int | None = None,
    ) -> None:  # fmt: skip
        if not isinstance(message, str):  # 1.x: (tool_count, limit)
            tool_count, limit = message, limit_1x
            message = (
                f"the policy names {tool_count} tools; the limit is {limit}: remove tools, "
                "use a prefix wildcard, or raise Limits(max_tools=...)"
            )
        super().__init__(message)
        self.tool_count = tool_count
        self.limit = limit


class PolicyTooLargeError(PolicyError):
    """A local policy file is larger than its ``Limits`` allow.

    ``bundle_size`` and ``size_limit`` are in bytes. 1.x form:
    ``PolicyTooLargeError(bundle_size, size_limit)``."""

    def __init__(
        self, message: str | int, size_limit_1x: int | None = None, /, *,
        bundle_size: int | None = None, size_limit: int | None = None,
    ) -> None:  # fmt: skip
        if not isinstance(message, str):  # 1.x: (bundle_size, size_limit)
            bundle_size, size_limit = message, size_limit_1x
            message = (
                f"the policy is {bundle_size} bytes; the limit is {size_limit}: shorten it "
                "or raise Limits(max_bytes=...)"
            )
        super().__init__(message)
        self.bundle_size = bundle_size
        self.size_limit = size_limit


class InvalidSignatureError(PolicyError):
    """A signed policy bundle failed verification (cloud mode); it is not used."""


class D2PlanLimitError(D2Error):
    """The control plane refused because of a plan limit (HTTP 402, or 403
    ``quota_apps_exceeded``): upgrade the plan or delete unused apps.

    ``reason`` is a short code (default ``plan_limit``), as in the 1.x form
    ``D2PlanLimitError(reason=None)``; ``message`` (keyword) says what happened."""

    def __init__(self, reason: str | None = None, *, message: str | None = None) -> None:
        self.reason = reason or "plan_limit"
        super().__init__(
            message or f"plan limit reached ({self.reason}): upgrade the plan or delete unused apps"
        )


STATUS_MAP: dict[int, type[D2Error]] = {402: D2PlanLimitError}
"""HTTP status of a control-plane answer -> the error D2 raises for it (as in 1.x)."""
