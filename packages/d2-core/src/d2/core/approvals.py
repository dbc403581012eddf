"""Approvals: deciding the requests of calls that wait for a person.

A grant with ``approval`` denies a matching call with
:class:`~d2.core.errors.ApprovalRequiredError`; its ``.request`` is an
:class:`ApprovalRequest` with a random ``id``. A user holding one of
``approver_roles`` (not the requester) approves or rejects it here, as the current
user. The approval is for that one request of that exact call (same tool,
arguments, user and policy version): the requester's identical call then runs once
before ``expires_at``. A used, rejected or expired request is dead; the next
identical call opens a new request with a new id.

A run that resumes after the pause continues the request that asked:
:func:`restore_request`, called by the requester at the start of the resumed run
(the agent adapters call it for you), merges that request's saved history, facts
and ``per: request`` counts into the current request scope before any call, so the
rules of the paused request hold whatever the resumed run calls first (see
:mod:`d2.core.resume`).

Everything here is scoped to the app (the policy's ``metadata.name``, or the cloud
app): an approver of one app never sees or decides another app's requests, even in
a shared store. The data types live in :mod:`d2.core.approval_data`.
"""

from __future__ import annotations

import unicodedata

from . import _invisible, evaluate, resume
from .approval_data import (
    ApprovalRequest,
    NoCanonicalForm,
    call_digest,
    canonical_arguments,
    json_arguments,
)
from .context import UserContext, current_context
from .errors import MissingPolicyError, PermissionDeniedError
from .evaluate import evaluator_for
from .stores.base import ApprovalState, Store

__all__ = [
    "ApprovalRequest",
    "NoCanonicalForm",
    "approve",
    "approve_async",
    "call_digest",
    "canonical_arguments",
    "json_arguments",
    "pending_approvals",
    "pending_approvals_async",
    "reject",
    "reject_async",
    "restore_request",
    "restore_request_async",
]


def _denied(
    message: str, reason: str, user_id: str | None, roles: frozenset[str]
) -> PermissionDeniedError:
    return PermissionDeniedError(message, user_id=user_id, roles=roles, reason=reason)


def _scoped(instance_name: str, ctx: UserContext) -> tuple[Store, str]:
    """The instance's store and the app's namespace in it; raises when there is
    no policy in force or the app cannot be told apart in a shared store."""
    evaluator = evaluator_for(instance_name)
    policy = evaluator.policy
    if policy is None:
        raise MissingPolicyError(
            f"D2 instance {instance_name!r} has no policy in force: configure it "
            "(configure_rbac_sync) before deciding approvals",
            user_id=ctx.user_id,
            roles=ctx.roles,
        )
    namespace = evaluator.namespace(policy)
    if namespace is None:
        raise _denied(
            "the policy has no metadata.name, and approvals live in a shared store, "
            "where the name keeps each app's requests apart; give the policy a "
            "metadata.name",
            "budget_unavailable",
            ctx.user_id,
            ctx.roles,
        )
    return evaluator.store_for_use(), namespace


def _person_key(user_id: str) -> str:
    """``user_id`` as one person is told from another by the "never the
    requester" rule: without default-ignorable characters (zero-width, variation
    selectors), in NFKC (fullwidth and other compatibility forms as their plain
    letters), case-folded (after upper-casing: ``adm\\u0131n`` is ``admin``), without
    accents (``ágent`` is ``agent``, ``łukasz`` is ``lukasz``), without control or
    format characters (which collations and LDAP ignore) and without white space,
    katakana as hiragana.
    ``AGENT-7``, ``agent-7``, `` agent-7`` and its fullwidth form are one person
    here, since identity sources that ignore case or accents (LDAP, Active
    Directory, HTTP Basic logins, databases with accent-insensitive collations) let
    one person sign in under each; the requester's own identity (``restore_request``)
    stays an exact match. An id with nothing visible in it has the key ``""``: no
    person, who may decide nothing."""
    # nothing that draws nothing, nor white space: LDAP's string preparation (RFC 4518)
    # and the Unicode collation tables ignore controls, formats and the object
    # replacement character, and an identity source may trim or merge spaces; a key
    # shared by two ids only ever refuses
    category = unicodedata.category
    kept = "".join(
        c
        for c in user_id
        if not _invisible.ignorable(c)
        and not c.isspace()
        and category(c) not in ("Cc", "Cf")
        and c not in "\ufffc\u1806"
    )
    folded = unicodedata.normalize("NFKC", kept).casefold()
    # upper-cased first: sources that compare upper-cased (Java's equalsIgnoreCase,
    # .NET's OrdinalIgnoreCase) take the dotless i (U+0131) for "i"; and without accents:
    # accent-insensitive collations (SQL Server's _AI, MySQL's default) take "á" for "a"
    plain = unicodedata.normalize("NFKD", folded.upper().casefold())
    bare = "".join(c for c in plain if not unicodedata.combining(c))
    # letters accent-insensitive collations take for a plain one, that do not
    # decompose: "łukasz" is "lukasz", "bjørn" "bjorn", "æron" "aeron"
    key = unicodedata.normalize("NFKC", bare).casefold().translate(_FOLD)
    # katakana as hiragana: collations that ignore kana type (SQL Server without _KS)
    return "".join(key.split()).translate(_KANA)


_KANA = {code: code - 0x60 for code in range(0x30A1, 0x30F7)}  # ァ..ヶ -> ぁ..ゖ


# letters with a stroke or a bar, ligatures and runes that the Unicode collation
# tables compare as plain Latin letters, and that NFKD does not take apart
_FOLD = str.maketrans(
    {
        "ł": "l", "ø": "o", "đ": "d", "ħ": "h", "ŧ": "t", "ƀ": "b", "ɨ": "i", "ƶ": "z",
        "ǥ": "g", "ɍ": "r", "ʉ": "u", "ɏ": "y", "ȼ": "c", "ɇ": "e", "ɉ": "j",
        "æ": "ae", "œ": "oe", "þ": "th", "ð": "d", "ĸ": "q", "ŀ": "l", "\u0131": "i",
    }
)  # fmt: skip


def _same_person(first: str, second: str) -> bool:
    """Whether two user ids name one person for the "never the requester" rule
    (:func:`_person_key`)."""
    return first == second or _person_key(first) == _person_key(second)


def _check_approver(
    state: ApprovalState | None, request_id: str, user_id: str | None, roles: frozenset[str]
) -> None:
    if user_id is None or not _person_key(user_id):
        raise _denied(
            "no user context is set (or its id has nothing visible in it): call "
            "d2.set_user(approver_id, roles=[...]) before approving or rejecting",
            "no_user",
            user_id,
            roles,
        )
    if state is None or state.state != "pending":
        raise _denied(
            f"approval request {request_id!r} is not pending (unknown, expired, already "
            "decided or already used); the requester's next identical call creates a new one",
            "approval_not_found",
            user_id,
            roles,
        )
    request = state.request
    if _same_person(user_id, request.user_id):
        raise _denied(
            f"user {user_id!r} asked for approval request {request_id[:12]} (user ids are "
            "compared ignoring case, width and invisible characters) and cannot approve "
            f"or reject it: another user with role [{', '.join(request.approver_roles)}] must",
            "approval_not_permitted",
            user_id,
            roles,
        )
    if roles.isdisjoint(request.approver_roles):
        raise _denied(
            f"user {user_id!r} (roles [{', '.join(sorted(roles)) or 'none'}]) may not decide "
            f"approval request {request_id[:12]}: it needs role "
            f"[{', '.join(request.approver_roles)}]",
            "approval_not_permitted",
            user_id,
            roles,
        )


def _logged(request: ApprovalRequest, verb: str, by: str | None) -> ApprovalRequest:
    import logging

    logging.getLogger("d2").info(
        "d2: approval request %s (%s for %r) %s by %r",
        request.id,
        request.tool_id,
        request.user_id,
        verb,
        by,
    )
    return request


def _notify(
    instance_name: str, request: ApprovalRequest, approve: bool, by: str, namespace: str
) -> None:
    """Queue the decision for the instance's approval webhook, when it has one."""
    webhook = evaluator_for(instance_name).webhook
    if webhook is not None:
        webhook.decided(request, approve, by, namespace)


def _decide(request_id: str, approve: bool, instance_name: str) -> ApprovalRequest:
    ctx = current_context()
    if ctx.user_id is None:
        _check_approver(None, request_id, None, ctx.roles)
    store, namespace = _scoped(instance_name, ctx)
    now = evaluate._now()
    state = store.get_approval(namespace, request_id, now)
    _check_approver(state, request_id, ctx.user_id, ctx.roles)
    assert ctx.user_id is not None and state is not None
    if not store.decide_approval(namespace, request_id, approve, ctx.user_id, now):
        _check_approver(None, request_id, ctx.user_id, ctx.roles)
    _notify(instance_name, state.request, approve, ctx.user_id, namespace)
    return _logged(state.request, "approved" if approve else "rejected", ctx.user_id)


async def _decide_async(request_id: str, approve: bool, instance_name: str) -> ApprovalRequest:
    ctx = current_context()
    if ctx.user_id is None:
        _check_approver(None, request_id, None, ctx.roles)
    store, namespace = _scoped(instance_name, ctx)
    now = evaluate._now()
    state = await store.get_approval_async(namespace, request_id, now)
    _check_approver(state, request_id, ctx.user_id, ctx.roles)
    assert ctx.user_id is not None and state is not None
    if not await store.decide_approval_async(namespace, request_id, approve, ctx.user_id, now):
        _check_approver(None, request_id, ctx.user_id, ctx.roles)
    _notify(instance_name, state.request, approve, ctx.user_id, namespace)
    return _logged(state.request, "approved" if approve else "rejected", ctx.user_id)


def approve(request_id: str, *, instance_name: str = "default") -> ApprovalRequest:
    """Approve a pending request as the current user, who must hold one of its
    ``approver_roles`` and not be the requester (else ``PermissionDeniedError``
    with reason ``approval_not_permitted``). The requester's identical call then
    runs once before ``expires_at``. Returns the request."""
    return _decide(request_id, True, instance_name)


def reject(request_id: str, *, instance_name: str = "default") -> ApprovalRequest:
    """Reject a pending request as the current user (same rules as :func:`approve`).
    The requester's next identical call is refused (reason ``approval_rejected``)
    and closes the request; the call after that asks for a new approval."""
    return _decide(request_id, False, instance_name)


async def approve_async(request_id: str, *, instance_name: str = "default") -> ApprovalRequest:
    """Async twin of :func:`approve` (a network store never blocks the loop)."""
    return await _decide_async(request_id, True, instance_name)


async def reject_async(request_id: str, *, instance_name: str = "default") -> ApprovalRequest:
    """Async twin of :func:`reject`."""
    return await _decide_async(request_id, False, instance_name)


def _visible(
    requests: list[ApprovalRequest], user_id: str | None, roles: frozenset[str]
) -> list[ApprovalRequest]:
    me = _person_key(user_id) if user_id is not None else ""
    if not me:
        return []  # no user, or an id with nothing visible in it: no person
    return [
        r
        for r in requests
        if not roles.isdisjoint(r.approver_roles)
        and r.user_id != user_id
        and _person_key(r.user_id) != me
    ]


def pending_approvals(*, instance_name: str = "default") -> list[ApprovalRequest]:
    """The pending requests of this app the current user may decide (holds an
    approver role and did not ask), soonest expiry first. Empty without a user or
    without a policy in force."""
    ctx = current_context()
    if ctx.user_id is None or evaluator_for(instance_name).policy is None:
        return []
    store, namespace = _scoped(instance_name, ctx)
    return _visible(store.pending_approvals(namespace, evaluate._now()), ctx.user_id, ctx.roles)


async def pending_approvals_async(*, instance_name: str = "default") -> list[ApprovalRequest]:
    """Async twin of :func:`pending_approvals`."""
    ctx = current_context()
    if ctx.user_id is None or evaluator_for(instance_name).policy is None:
        return []
    store, namespace = _scoped(instance_name, ctx)
    found = await store.pending_approvals_async(namespace, evaluate._now())
    return _visible(found, ctx.user_id, ctx.roles)


def _requester(request_id: object, ctx: UserContext) -> str:
    """The current user, who restores a request of their own; raises without one."""
    if ctx.user_id is None:
        raise _denied(
            "no user context is set: call d2.set_user(requester_id, roles=[...]) for the "
            "resumed run before restoring the request it continues",
            "no_user",
            None,
            ctx.roles,
        )
    if not isinstance(request_id, str) or not request_id:
        raise _denied(
            f"{request_id!r} is not an approval request id",
            "approval_not_found",
            ctx.user_id,
            ctx.roles,
        )
    return ctx.user_id


def _store_failed(request_id: str, ctx: UserContext, exc: BaseException) -> PermissionDeniedError:
    return _denied(
        f"the saved state of approval request {request_id[:12]} could not be read or restored "
        f"({type(exc).__name__}: {exc}); the resumed run cannot continue its request until "
        "the store answers",
        "budget_unavailable",
        ctx.user_id,
        ctx.roles,
    )


def _merge(state: ApprovalState | None, request_id: str, user_id: str, ctx: UserContext) -> None:
    """Merge the snapshots of ``state`` (the store's answer for ``request_id``) into
    the current request scope, once per origin."""
    if state is None:
        raise _denied(
            f"approval request {request_id[:12]} is not live (used, expired, its rejection "
            "already reported, unknown, or another app's), so the state of the request that "
            "paused for it is gone and this run cannot continue that request; start a new "
            "run. A run resumed in another process needs the same shared store (Redis)",
            "approval_not_found",
            user_id,
            ctx.roles,
        )
    request = state.request
    if request.user_id != user_id:
        raise _denied(
            f"approval request {request_id[:12]} was asked for by another user; only its "
            "requester's resumed run continues its request",
            "approval_not_permitted",
            user_id,
            ctx.roles,
        )
    scope = ctx.scope
    own = resume.lineage(scope).token
    texts = [text for holder, text in state.snapshots if holder != own]
    try:
        with evaluate._spend_lock:
            changed = resume.restore(scope, texts, user_id)
    except Exception as exc:  # a snapshot this user's request did not write
        raise _store_failed(request_id, ctx, exc) from None
    resume.continued(scope, request_id)
    if not changed:
        return
    import logging

    logging.getLogger("d2").info(
        "d2: request %d of %r continues approval request %s (%s, %s)",
        scope.number,
        user_id,
        request.id,
        request.tool_id,
        state.state,
    )


def restore_request(request_id: str, *, instance_name: str = "default") -> None:
    """Continue, in the current request scope, the request that paused for approval
    request ``request_id``: merge the history, data-flow facts and ``per: request``
    counts saved with it (what its identical call does when it comes back), so every
    sequence, data-flow and budget rule of the paused request holds from the first
    call of the resumed run, whatever that call is.

    Call it as the requester (``set_user`` first), at the start of the resumed run,
    for a request that is pending, approved or rejected (a rejected request lives
    until its requester's call is told, or it expires). Idempotent: each origin is
    merged once, and a scope that asked for the request itself, or restored it
    already, answers without asking the store (also once the request is used).
    The agent adapters call it at the start of every run they resume.

    Raises :class:`~d2.core.errors.PermissionDeniedError` and restores nothing, with
    reason ``no_user`` (no user set), ``approval_not_permitted`` (another user asked
    for it), ``approval_not_found`` (it is not live: used, expired, its rejection
    reported, unknown; its saved state went with it) or ``budget_unavailable`` (the
    store did not answer, its saved state cannot be read, or an unnamed policy on a
    shared store); ``MissingPolicyError`` without a policy in force."""
    ctx = current_context()
    user_id = _requester(request_id, ctx)
    if resume.continues(ctx.scope, request_id):
        resume.continued(ctx.scope, request_id)
        return
    store, namespace = _scoped(instance_name, ctx)
    try:
        state = store.read_approval(namespace, request_id, evaluate._now())
    except Exception as exc:
        raise _store_failed(request_id, ctx, exc) from None
    _merge(state, request_id, user_id, ctx)


async def restore_request_async(request_id: str, *, instance_name: str = "default") -> None:
    """Async twin of :func:`restore_request` (a network store never blocks the
    loop)."""
    ctx = current_context()
    user_id = _requester(request_id, ctx)
    if resume.continues(ctx.scope, request_id):
        resume.continued(ctx.scope, request_id)
        return
    store, namespace = _scoped(instance_name, ctx)
    try:
        state = await store.read_approval_async(namespace, request_id, evaluate._now())
    except Exception as exc:
        raise _store_failed(request_id, ctx, exc) from None
    _merge(state, request_id, user_id, ctx)
