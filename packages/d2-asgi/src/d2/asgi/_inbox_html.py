"""The HTML of the approvals inbox (no framework: plain functions of plain values).

Every value reaches the page through :func:`esc` (``html.escape`` with quotes,
after :func:`~d2.core.approval_desk.visible_text`): the page's markup is made only
by this module's templates, whatever a tool id, a user id, an argument or a
comment holds. The one stylesheet is inline and named in the Content-Security-
Policy by its SHA-256; the page runs no script. The stylesheet draws every
element's text in the order its characters are stored, left to right
(``unicode-bidi: bidi-override``): a right-to-left character in a value cannot
make the browser reorder the digits or words after it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from d2.core.approval_data import ApprovalRequest
from d2.core.approval_desk import shown_json_within, visible_text

__all__ = [
    "CSS",
    "CSS_HASH",
    "MAX_SHOWN",
    "PAGE_SIZE",
    "Decision",
    "Html",
    "ago",
    "error_page",
    "esc",
    "esc_lines",
    "esc_shown",
    "inbox_page",
    "markup",
    "page",
    "request_page",
    "utc",
]


MAX_SHOWN = 64 * 1024
"""Characters of a call's arguments (as indented JSON) a request page shows; a
larger call is shown cut, and cannot be approved on the page."""

PAGE_SIZE = 50
"""Pending requests listed per page."""


class Html(str):
    """Markup made by this module's templates (never escaped again)."""

    __slots__ = ()


class Decision(NamedTuple):
    """A decision made through the inbox: the request, approved or rejected, by
    whom, when (Unix seconds) and the approver's comment."""

    request: ApprovalRequest
    approved: bool
    by: str
    at: float
    comment: str


def esc(value: object) -> Html:
    """``value`` as text in HTML: invisible characters shown as escapes, then every
    ``& < > " '`` escaped (safe in element content and in quoted attributes)."""
    if isinstance(value, Html):
        return value
    return Html(html.escape(visible_text(str(value)), quote=True))


def esc_lines(text: str) -> Html:
    """``text`` of several lines (an indented JSON, a comment) escaped line by line,
    its line breaks kept."""
    return Html("\n".join(esc(line) for line in text.split("\n")))


def esc_shown(text: str) -> Html:
    """``text`` that :func:`~d2.core.approval_desk.shown_json` (or
    ``visible_text``) made already, in HTML: only ``& < > " '`` escaped (its
    ``\\uXXXX`` escapes are not escaped twice), line breaks kept."""
    return Html(html.escape(text, quote=True))


def markup(template: str, **values: object) -> Html:
    """``template`` with each ``{name}`` replaced by ``esc(values[name])`` (markup
    made here is kept as is)."""
    return Html(template.format(**{k: esc(v) for k, v in values.items()}))


def _join(parts: Iterable[Html]) -> Html:
    return Html("".join(parts))


CSS = """
:root{color-scheme:light dark;--line:#8884;--muted:#777;--ok:#1a7f37;--no:#c62828}
*{box-sizing:border-box;direction:ltr;unicode-bidi:bidi-override}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;padding:0 1rem 3rem}
header{display:flex;justify-content:space-between;align-items:baseline;flex-wrap:wrap;
border-bottom:1px solid var(--line);margin:0 -1rem 1.5rem;padding:.75rem 1rem}
header h1{font-size:1.2rem;margin:0}header h1 a{color:inherit;text-decoration:none}
main{max-width:60rem;margin:auto}
h2{font-size:1.05rem;margin:2rem 0 .5rem}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.45rem .6rem;border-bottom:1px solid var(--line);
vertical-align:top}
th{font-weight:600;color:var(--muted);font-size:.85rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.35rem 1.25rem;margin:0}
dt{color:var(--muted)}dd{margin:0;overflow-wrap:anywhere}
pre{background:#8881;border:1px solid var(--line);border-radius:6px;padding:.75rem;
overflow:auto;max-height:32rem;white-space:pre-wrap;overflow-wrap:anywhere}
code,pre{font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.muted{color:var(--muted)}.ok{color:var(--ok)}.no{color:var(--no)}
form{margin-top:1.5rem}label{display:block;font-weight:600;margin-bottom:.25rem}
textarea{width:100%;min-height:4.5rem;font:inherit;padding:.5rem}
.actions{display:flex;gap:.75rem;margin-top:.75rem}
button{font:inherit;font-weight:600;padding:.5rem 1.4rem;border-radius:6px;cursor:pointer;
border:1px solid var(--line)}
button.approve{background:var(--ok);color:#fff;border-color:var(--ok)}
button.reject{background:transparent;color:var(--no);border-color:var(--no)}
blockquote{white-space:pre-wrap;border-left:3px solid var(--line);margin:.5rem 0;
padding:.25rem .75rem}
.status{font-size:1.05rem;font-weight:600;margin:1rem 0}
.empty{padding:1.5rem 0;color:var(--muted)}
.pages{display:flex;gap:1rem;margin:.75rem 0}
""".strip()

CSS_HASH = "sha256-" + base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
"""The stylesheet's CSP source (``style-src`` names it: no other style applies)."""


def utc(ts: float) -> str:
    """Unix seconds as ``YYYY-MM-DD HH:MM:SS UTC`` (``unknown`` for 0)."""
    if not ts:
        return "unknown"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def ago(ts: float, now: float) -> str:
    """How far ``ts`` is from ``now``: ``3 min ago``, ``in 2 h 5 min``."""
    seconds = ts - now
    span = abs(seconds)
    if span < 60:
        text = f"{int(span)} s"
    elif span < 3600:
        text = f"{int(span // 60)} min"
    elif span < 86400:
        text = f"{int(span // 3600)} h {int(span % 3600 // 60)} min"
    else:
        text = f"{int(span // 86400)} d {int(span % 86400 // 3600)} h"
    return f"in {text}" if seconds > 0 else f"{text} ago"


def page(
    title: str,
    body: Html,
    *,
    base: str,
    heading: str,
    user: str | None,
    roles: Sequence[str] = (),
    refresh: int | None = None,
) -> Html:
    """A whole HTML document: ``body`` under a header naming the signed-in user."""
    meta = markup('<meta http-equiv="refresh" content="{n}">', n=refresh) if refresh else ""
    who = (
        markup(
            '<span class="muted">signed in as <strong>{user}</strong>{roles}</span>',
            user=user,
            roles=f" ({', '.join(roles)})" if roles else "",
        )
        if user is not None
        else ""
    )
    return markup(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">{meta}'
        "<title>{title}</title><style>{css}</style></head>"
        '<body><header><h1><a href="{home}">{heading}</a></h1>{who}</header>'
        "<main>{body}</main></body></html>\n",
        meta=Html(meta),
        title=title,
        css=Html(CSS),
        home=base + "/",
        heading=heading,
        who=Html(who),
        body=body,
    )


def _link(base: str, request: ApprovalRequest) -> str:
    return f"{base}/requests/{request.id}"


def _pending_rows(pending: Sequence[ApprovalRequest], base: str, now: float) -> Html:
    rows = [
        markup(
            '<tr><td><a href="{href}"><code>{tool}</code></a></td><td>{who}</td>'
            '<td title="{asked}">{asked_ago}</td><td title="{expires}">{expires_in}</td></tr>',
            href=_link(base, r),
            tool=r.tool_id,
            who=r.user_id,
            asked=utc(r.asked_at),
            asked_ago=ago(r.asked_at, now) if r.asked_at else "unknown",
            expires=utc(r.expires_at),
            expires_in=ago(r.expires_at, now),
        )
        for r in pending
    ]
    return _join(rows)


def _verdict(approved: bool) -> Html:
    return Html(
        '<span class="ok">Approved</span>' if approved else '<span class="no">Rejected</span>'
    )


def _recent_rows(recent: Sequence[Decision], now: float) -> Html:
    return _join(
        markup(
            "<tr><td><code>{tool}</code></td><td>{who}</td><td>{verdict}</td><td>{by}</td>"
            '<td title="{at}">{at_ago}</td><td>{comment}</td></tr>',
            tool=d.request.tool_id,
            who=d.request.user_id,
            verdict=_verdict(d.approved),
            by=d.by,
            at=utc(d.at),
            at_ago=ago(d.at, now),
            comment=d.comment,
        )
        for d in recent
    )


def _pages(base: str, number: int, total: int) -> Html:
    """Where this page of the list is, with links to the one before and after."""
    last = max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1)
    first = (number - 1) * PAGE_SIZE
    links = [
        markup('<a href="{href}" rel="prev">Previous</a>', href=f"{base}/?page={number - 1}")
        if number > 1
        else Html(""),
        markup('<a href="{href}" rel="next">Next</a>', href=f"{base}/?page={number + 1}")
        if number < last
        else Html(""),
    ]
    return markup(
        '<nav class="pages" aria-label="Pages"><span class="muted">{a}-{b} of {n}</span>'
        "{links}</nav>",
        a=first + 1,
        b=min(first + PAGE_SIZE, total),
        n=total,
        links=_join(links),
    )


def inbox_page(
    pending: Sequence[ApprovalRequest],
    recent: Sequence[Decision],
    *,
    now: float,
    base: str,
    number: int = 1,
) -> Html:
    """The body of the list: page ``number`` of the pending requests this user
    may decide (:data:`PAGE_SIZE` a page), then the recent decisions on requests
    they could have decided."""
    shown = pending[(number - 1) * PAGE_SIZE : number * PAGE_SIZE]
    if shown:
        waiting = markup(
            '<table aria-label="Pending requests"><thead><tr><th>Tool</th><th>Requester</th>'
            "<th>Asked</th><th>Expires</th></tr></thead><tbody>{rows}</tbody></table>{pages}",
            rows=_pending_rows(shown, base, now),
            pages=_pages(base, number, len(pending)) if len(pending) > PAGE_SIZE else Html(""),
        )
    elif pending:
        waiting = markup(
            '<p class="empty">No request on this page: <a href="{home}">the first page</a>.</p>',
            home=base + "/",
        )
    else:
        waiting = Html('<p class="empty">Nothing waits for your decision.</p>')
    if recent:
        done = markup(
            '<table aria-label="Recent decisions"><thead><tr><th>Tool</th><th>Requester</th>'
            "<th>Decision</th><th>By</th><th>When</th><th>Comment</th></tr></thead>"
            "<tbody>{rows}</tbody></table>",
            rows=_recent_rows(recent, now),
        )
    else:
        done = Html('<p class="empty">No decisions yet.</p>')
    return markup(
        "<h2>Waiting for you ({count})</h2>{waiting}<h2>Recent decisions</h2>{done}",
        count=len(pending),
        waiting=waiting,
        done=done,
    )


def request_page(
    request: ApprovalRequest,
    *,
    now: float,
    state: str,
    decided_by: str | None = None,
    decision: Decision | None = None,
    csrf: str | None = None,
    action: str = "",
    notice: str | None = None,
    limit: int = MAX_SHOWN,
) -> Html:
    """The body of one request's page: the call, then the form (``state`` is
    ``pending``), or who decided it. Arguments longer than ``limit`` characters
    of JSON are shown cut, with a notice, and the form then has no **Approve**
    (an approver approves only a call they saw whole: ``d2 approvals``)."""
    arguments, left = shown_json_within(request.arguments, limit)
    details = markup(
        "<dl><dt>Tool</dt><dd><code>{tool}</code></dd>"
        "<dt>Requested by</dt><dd>{who}</dd>"
        "<dt>Approvers</dt><dd>{roles}</dd>"
        "<dt>Policy version</dt><dd><code>{version}</code></dd>"
        '<dt>Asked</dt><dd>{asked} <span class="muted">({asked_ago})</span></dd>'
        '<dt>Expires</dt><dd>{expires} <span class="muted">({expires_in})</span></dd>'
        "<dt>Request id</dt><dd><code>{id}</code></dd></dl>"
        '<h2 id="arguments">Arguments</h2><pre aria-labelledby="arguments">{arguments}</pre>'
        "{cut}",
        tool=request.tool_id,
        who=request.user_id,
        roles=", ".join(request.approver_roles),
        version=request.policy_version,
        asked=utc(request.asked_at),
        asked_ago=ago(request.asked_at, now) if request.asked_at else "unknown",
        expires=utc(request.expires_at),
        expires_in=ago(request.expires_at, now),
        id=request.id,
        arguments=esc_shown(arguments),
        cut=markup(
            '<p class="status" role="note">Truncated: {left} more characters of the '
            "arguments are not shown here. Read the whole call with "
            "<code>d2 approvals show {id}</code>.</p>",
            left=f"{left:,}",
            id=request.id,
        )
        if left
        else Html(""),
    )
    top = markup('<p class="status" role="status">{n}</p>', n=notice) if notice else Html("")
    if state == "pending" and csrf is not None:
        tail = markup(
            '<form method="post" action="{action}">'
            '<input type="hidden" name="csrf" value="{csrf}">'
            '<label for="comment">Comment (optional)</label>'
            '<textarea id="comment" name="comment" maxlength="500"></textarea>'
            "{why}"
            '<div class="actions">{approve}'
            '<button type="submit" class="reject" name="decision" value="reject">Reject</button>'
            "</div></form>",
            action=action,
            csrf=csrf,
            why=markup(
                '<p class="muted">This call is too large to be seen whole here, so it cannot '
                "be approved here: approve it with <code>d2 approvals approve {id}</code> "
                "after reading it, or reject it here.</p>",
                id=request.id,
            )
            if left
            else Html(""),
            approve=Html("")
            if left
            else Html(
                '<button type="submit" class="approve" name="decision" value="approve">'
                "Approve</button>"
            ),
        )
    else:
        tail = _outcome(state, decided_by, decision, now)
    return markup(
        "{top}<h2>{tool}</h2>{details}{tail}",
        top=top,
        tool=request.tool_id,
        details=details,
        tail=tail,
    )


def _outcome(state: str, decided_by: str | None, decision: Decision | None, now: float) -> Html:
    if decision is not None:
        approved, by = decision.approved, decision.by
    elif state in ("approved", "rejected"):
        approved, by = state == "approved", decided_by or "another approver"
    else:
        return Html('<p class="status">This request is closed.</p>')
    live = state in ("approved", "rejected")
    after = (
        "The requester's identical call runs once, before the request expires."
        if approved and live
        else "The requester's call is refused."
        if live
        else "The request is closed: used, reported or expired."
    )
    when = (
        markup(
            ' <span class="muted">{at} ({ago})</span>',
            at=utc(decision.at),
            ago=ago(decision.at, now),
        )
        if decision is not None
        else Html("")
    )
    comment = (
        markup('<blockquote aria-label="Comment">{c}</blockquote>', c=esc_lines(decision.comment))
        if decision is not None and decision.comment
        else Html("")
    )
    return markup(
        '<p class="status" role="status">{verdict} by <strong>{by}</strong>{when}</p>'
        '{comment}<p class="muted">{after}</p>',
        verdict=_verdict(approved),
        by=by,
        when=when,
        comment=comment,
        after=after,
    )


_ERRORS = {
    400: ("Bad request", "The form was incomplete or malformed: go back, reload and try again."),
    401: (
        "Sign in",
        "This page shows approval requests to signed-in approvers only: sign in through "
        "your organisation's identity provider, then reload.",
    ),
    403: (
        "Refused",
        "This form did not come from this page or has expired (each form is bound to your "
        "session): reload the request and decide again.",
    ),
    404: (
        "Not found",
        "There is no request here that you may decide: it may not exist, may have expired, "
        "been used or decided, or wait for other approvers.",
    ),
    405: ("Method not allowed", "This address does not take that method."),
    409: ("Already decided", "This request was decided already."),
    413: ("Too large", "The form is larger than this page accepts."),
    503: (
        "Unavailable",
        "The approvals store did not answer: nothing new is shown, and a decision you just "
        "sent may not have been recorded. Reload in a moment.",
    ),
}


def error_page(status: int) -> tuple[str, Html]:
    """The title and body of an error page (the same for every cause of a status)."""
    title, text = _ERRORS.get(status, ("Error", "Something went wrong."))
    return title, markup("<h2>{title}</h2><p>{text}</p>", title=title, text=text)
