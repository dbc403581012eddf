"""Every error D2 raises.

The hierarchy::

    D2Error
    ├── ConfigurationError            configure/setup problems; fix the setup
    │   └── InvalidPolicyError        a policy document that does not follow the language
    ├── PermissionDeniedError         a guarded call was refused (every denial is one)
    │   ├── ApprovalRequiredError     the call waits for a person's approval (``.request``)
    │   ├── MissingPolicyError        no policy in force, or the tool is in no entry
    │   └── BundleExpiredError        the policy in force is past ``metadata.expires``
    ├── TooManyToolsError             a local policy names more tools than ``Limits`` allow
    ├── PolicyTooLargeError           a local policy file is bigger than ``Limits`` allow
    ├── InvalidSignatureError         a signed bundle failed verification (cloud mode)
    └── D2PlanLimitError              the control plane refused for a plan limit (cloud mode)

``MissingPolicyError`` and ``BundleExpiredError`` are denials (fail closed), so an
``except PermissionDeniedError`` around a guarded call catches every refusal. When
they are raised while loading a policy, ``tool_id`` is ``None``.
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
    "D2Error",
    "D2PlanLimitError",
    "InvalidPolicyError",
    "InvalidSignatureError",
    "MissingPolicyError",
    "PermissionDeniedError",
    "PolicyTooLargeError",
    "TooManyToolsError",
]


class D2Error(Exception):
    """Root of every error raised by D2."""


class ConfigurationError(D2Error):
    """D2 is set up wrongly (bad argument, missing extra, bad environment variable)."""


class InvalidPolicyError(ConfigurationError):
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


class PermissionDeniedError(D2Error):
    """A guarded call was refused; the tool did not run.

    ``reason`` is machine-readable (for example ``not_granted``, ``explicit_deny``,
    ``no_user``, ``missing_policy``, ``policy_expired``, ``unknown_tool``).
    ``trace`` lists, in order, the decision steps that ran and what each concluded
    (:class:`~d2.core.evaluate.TraceStep`); ``message`` says what to do.
    ``retry_after``: for ``budget_exceeded``, seconds until the exhausted window
    resets (``None`` for a ``per: request`` budget, and for other reasons).
    """

    reason_default = "denied"
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        tool_id: str | None = None,
        user_id: str | None = None,
        roles: frozenset[str] = frozenset(),
        reason: str | None = None,
        trace: Sequence[Any] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.tool_id = tool_id
        self.user_id = user_id
        self.roles = roles
        self.reason = reason or self.reason_default
        self._message: str | None = message
        self._trace: tuple[Any, ...] | None = tuple(trace)
        self._explain: Callable[[], tuple[str, tuple[Any, ...]]] | None = None

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
        return (_rebuild_denial, (type(self), self.message, state))


def _rebuild_denial(
    cls: type[PermissionDeniedError], message: str, state: dict[str, Any]
) -> PermissionDeniedError:
    return cls(message, **state)


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

    def __reduce__(self) -> Any:
        state = {
            "tool_id": self.tool_id,
            "user_id": self.user_id,
            "roles": self.roles,
            "reason": self.reason,
            "trace": self.trace,
            "request": self.request,
        }
        return (_rebuild_denial, (type(self), self.message, state))


class MissingPolicyError(PermissionDeniedError):
    """No policy is in force (not configured, shut down, revoked), or no entry of
    the policy can match the tool id. Fail closed: the call is denied."""

    reason_default = "missing_policy"


class BundleExpiredError(PermissionDeniedError):
    """The policy's ``metadata.expires`` has passed (or, in local mode, is missing or
    too far ahead). Every guarded call is denied until a fresh policy loads."""

    reason_default = "policy_expired"


class TooManyToolsError(D2Error):
    """A local policy names more distinct tools than its ``Limits`` allow."""


class PolicyTooLargeError(D2Error):
    """A local policy file is larger than its ``Limits`` allow."""


class InvalidSignatureError(D2Error):
    """A signed policy bundle failed verification (cloud mode); it is not used."""


class D2PlanLimitError(D2Error):
    """The control plane refused because of a plan limit (HTTP 402, or 403
    ``quota_apps_exceeded``): upgrade the plan or delete unused apps."""
