"""An approval desk: where an approver, named explicitly, reads and decides the
requests of one app.

:func:`~d2.core.approvals.approve` and friends act as the *current* user on an
instance of the app itself. A review app (the approvals inbox page of
``d2.asgi.approvals``, the ``d2 approvals`` commands) serves many approvers, each
named by its own identity source, and may run in another process than the app:
it reads and decides through an :class:`ApprovalDesk`, with the same rules,
checked by the same code:

* an approver sees and decides only the requests whose ``approver_roles`` include
  a role of theirs and that they did not ask for; any other request is answered
  exactly as one that does not exist;
* a decision is for one pending, unexpired request; a used, decided or expired
  request cannot be decided (``approval_not_found``).

A desk is either bound to a store and an app's namespace (``ApprovalDesk(store,
namespace)``; :func:`namespace_of` gives the namespace of a local app by name), or
to a D2 instance of this process (:meth:`ApprovalDesk.of_instance`: its store and
the namespace of the policy in force, read at each use).

A decision is posted to the approval webhook as :func:`~d2.core.approvals.approve`
posts it: the instance's webhook for a desk of an instance, the ``webhook`` given
to a desk bound to a store (``d2 approvals`` gives the one ``D2_APPROVAL_WEBHOOK``
names).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import _invisible, evaluate
from .approval_data import ApprovalRequest
from .approvals import _check_approver, _logged, _notify, _same_person, _scoped, _visible
from .context import UserContext
from .errors import ConfigurationError
from .stores.base import ApprovalState, Store

if TYPE_CHECKING:
    from .webhook import ApprovalWebhook

__all__ = [
    "ApprovalDesk",
    "could_decide",
    "namespace_of",
    "same_person",
    "shown_json",
    "shown_json_within",
    "visible_text",
]


def visible_text(text: str) -> str:
    """``text`` with every character an approver could not see, that changes the
    order of what they see, or that would make it draw like other text, written
    as its ``\\uXXXX`` escape (letters of every script are kept): controls,
    formats, spaces other than ``" "``, every Unicode default-ignorable code point
    (the Hangul fillers, the variation selectors, the combining grapheme joiner),
    blanks such as U+2800, characters normalisation would replace, and combining
    marks that compose, overlay, sit on nothing or stack past three (see
    :mod:`d2.core._invisible`). So are the characters the text around them makes
    misleading: right-to-left letters and punctuation in a text that also holds a
    left-to-right letter or a digit (a terminal or browser would reorder the runs:
    ``1\\u05be9999`` would draw as ``19999\\u05be``), Arabic-Indic digits, and
    Cyrillic, Greek, Armenian, Cherokee, Coptic or Lisu letters in a text that
    holds Latin ones (``p\\u0430ypal``) or letters of another of these scripts;
    a text wholly in one script is kept. A backslash followed by ``u`` is itself
    escaped (``\\u005c``): two different texts are never shown as the same
    characters."""
    return _invisible.shown(text, " ")


def shown_json(value: Any) -> str:
    """``value`` (a request's ``arguments``: JSON values, as :mod:`d2.core._display`
    made them for the approver) as indented JSON an approver reads: letters of
    every script kept, and every character :func:`visible_text` escapes written as
    its JSON escape, the whole JSON text judged as one text (a call whose keys are
    Latin shows a Cyrillic, Greek, Hebrew or Arabic value escaped). Two different
    calls are never shown as the same characters, nor drawn alike through
    invisible characters, reordering or a mix of scripts; one written wholly in
    Cyrillic or Greek can still look like one in Latin (``\\u0410\\u0421\\u041c\\u0415``
    and ``ACME``: whole-script look-alikes need Unicode's confusables table)."""
    return _json_shown(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False))


def shown_json_within(value: Any, limit: int) -> tuple[str, int]:
    """:func:`shown_json` of ``value`` cut to the first ``limit`` characters of its
    JSON text, and how many characters were left out (0: the whole call is
    shown). The work is bounded by ``limit`` (and one ``json.dumps``), whatever the
    size of the value: what a page shows inline."""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
    left = max(len(text) - max(int(limit), 0), 0)
    return _json_shown(text[: len(text) - left] if left else text), left


def _json_shown(text: str) -> str:
    if text.isascii() and "\x7f" not in text:
        return text  # json.dumps escaped every control character but its own newlines
    # JSON escapes a newline inside a string (these are its own) and doubles every
    # backslash (no text reads like one of the escapes added here)
    return _invisible.shown(text, " \n", backslash=False)


def same_person(first: str, second: str) -> bool:
    """Whether two user ids name one person for the "never the requester" rule:
    equal once default-ignorable characters are dropped, NFKC applied and case
    folded (``AGENT-7``, ``agent-7`` and its fullwidth form are one
    person: identity sources that ignore case let one person sign in under each).
    The requester's own identity elsewhere (restoring their request) is exact."""
    return _same_person(first, second)


def could_decide(
    request: ApprovalRequest, user_id: str | None, roles: Iterable[str] | str | None
) -> bool:
    """Whether ``user_id`` holding ``roles`` may decide ``request``, or could have:
    an approver role of theirs, and not its requester under any spelling
    (:func:`same_person`)."""
    ctx = UserContext(user_id, roles)
    return bool(_visible([request], ctx.user_id, ctx.roles))


def namespace_of(app_name: str) -> str:
    """The store namespace of the local-mode app whose policy has
    ``metadata.name: app_name`` (what its requests are kept under)."""
    if not isinstance(app_name, str) or not app_name.strip():
        raise ConfigurationError("an app name is the policy's metadata.name: a non-empty string")
    return f"local:{app_name.strip()}"


class ApprovalDesk:
    """Reads and decides the approval requests of one app, for approvers named
    explicitly (see the module docstring). ``store`` is where the app keeps its
    requests (its Redis, or the in-process store when the desk runs in the app's
    own process); ``namespace`` the app's namespace there."""

    def __init__(
        self, store: Store, namespace: str, *, webhook: ApprovalWebhook | None = None
    ) -> None:
        if not isinstance(store, Store):
            raise ConfigurationError(f"store must be a d2.core.stores.Store, got {store!r}")
        if not isinstance(namespace, str) or not namespace:
            raise ConfigurationError(
                "namespace must be the app's store namespace (namespace_of(app_name))"
            )
        self._store: Store | None = store
        self._namespace = namespace
        self._instance: str | None = None
        self._webhook = webhook

    @classmethod
    def of_instance(cls, instance_name: str = "default") -> ApprovalDesk:
        """A desk on D2 instance ``instance_name`` of this process: its store and
        the namespace of its policy in force, read at each use (no policy in force:
        ``MissingPolicyError``)."""
        desk = cls.__new__(cls)
        desk._store, desk._namespace, desk._instance = None, "", instance_name
        desk._webhook = None
        return desk

    def __repr__(self) -> str:
        if self._instance is not None:
            return f"<ApprovalDesk of instance {self._instance!r}>"
        return f"<ApprovalDesk {self._namespace!r} on {type(self._store).__name__}>"

    def where(self, ctx: UserContext | None = None) -> tuple[Store, str]:
        """The store and the namespace the desk reads now."""
        if self._store is not None:
            return self._store, self._namespace
        assert self._instance is not None
        return _scoped(self._instance, ctx or UserContext(None, None))

    async def pending(
        self, user_id: str | None, roles: Iterable[str] | str | None
    ) -> list[ApprovalRequest]:
        """The pending requests ``user_id`` (holding ``roles``) may decide: an
        approver role of theirs, not asked by them; soonest expiry first. Empty
        without a user."""
        ctx = UserContext(user_id, roles)
        if ctx.user_id is None:
            return []
        store, namespace = self.where(ctx)
        found = await store.pending_approvals_async(namespace, evaluate._now())
        return _visible(found, ctx.user_id, ctx.roles)

    async def lookup(
        self, request_id: str, user_id: str | None, roles: Iterable[str] | str | None
    ) -> ApprovalState | None:
        """Request ``request_id`` while it lives (pending, or approved or rejected
        and not yet used), when ``user_id`` may decide it or could have (an
        approver role of theirs, not asked by them); else ``None``, the same
        answer as for an unknown id."""
        ctx = UserContext(user_id, roles)
        if ctx.user_id is None or not isinstance(request_id, str) or not request_id:
            return None
        store, namespace = self.where(ctx)
        state = await store.get_approval_async(namespace, request_id, evaluate._now())
        if state is None or not _visible([state.request], ctx.user_id, ctx.roles):
            return None
        return state

    async def decide(
        self,
        request_id: str,
        approve: bool,
        user_id: str | None,
        roles: Iterable[str] | str | None,
    ) -> ApprovalRequest:
        """Approve (or reject) pending request ``request_id`` as ``user_id``, with
        the rules of :func:`~d2.core.approvals.approve`: raises
        ``PermissionDeniedError`` with reason ``no_user``, ``approval_not_found``
        (not pending: unknown, decided, used, expired) or
        ``approval_not_permitted`` (the requester, or no approver role). Returns
        the request; the decision is logged (logger ``d2``)."""
        ctx = UserContext(user_id, roles)
        if ctx.user_id is None:
            _check_approver(None, request_id, None, ctx.roles)
        store, namespace = self.where(ctx)
        now = evaluate._now()
        state = await store.get_approval_async(namespace, request_id, now)
        _check_approver(state, request_id, ctx.user_id, ctx.roles)
        assert ctx.user_id is not None and state is not None
        if not await store.decide_approval_async(namespace, request_id, approve, ctx.user_id, now):
            _check_approver(None, request_id, ctx.user_id, ctx.roles)
        if self._instance is not None:
            _notify(self._instance, state.request, approve, ctx.user_id, namespace)
        elif self._webhook is not None:
            self._webhook.decided(state.request, approve, ctx.user_id, namespace)
        return _logged(state.request, "approved" if approve else "rejected", ctx.user_id)

    async def aclose(self) -> None:
        """Close a store the desk was given (an instance's store is the instance's),
        and deliver what its webhook has queued (bounded by the webhook's flush
        time)."""
        if self._webhook is not None:
            webhook, self._webhook = self._webhook, None
            webhook.close(wait=False)
            await asyncio.to_thread(webhook.wait_closed)
        if self._store is not None:
            await self._store.aclose()
