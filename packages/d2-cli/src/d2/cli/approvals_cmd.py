"""``d2 approvals list|show|approve|reject``: decide approval requests from the
command line, acting as ``--as USER --roles R1,R2`` on the app's store;
``d2 approvals serve``: the approvals inbox page on its own, for approvers who
sign in with a bearer JWT of your identity provider.

The store is ``--store`` or ``D2_STORE_URL`` (a shared store: Redis; the
in-process store lives in the app's own process, out of reach). The app is
``--app NAME`` (its policy's ``metadata.name``), else the one the SDK would run:
the cloud app of ``D2_TOKEN``, or the local policy file (``--policy``,
``D2_POLICY_FILE``, discovery). The rules are those of ``d2.approve``: only a
holder of an approver role, never the requester, one pending unexpired request.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from d2.core.approval_data import ApprovalRequest
from d2.core.approval_desk import ApprovalDesk, namespace_of, shown_json, visible_text
from d2.core.errors import PermissionDeniedError
from d2.core.stores.base import ApprovalState
from rich.table import Table
from rich.text import Text

from .options import JsonOption, PolicyOption
from .output import OK, CliError, Output, failed, run_command

__all__ = [
    "AppOption",
    "AsOption",
    "RolesOption",
    "StoreOption",
    "approve_command",
    "list_command",
    "open_desk",
    "reject_command",
    "request_json",
    "resolve_namespace",
    "serve_command",
    "show_command",
    "store_url",
    "utc",
]

T = TypeVar("T")
_ID = re.compile(r"[0-9a-f]{64}")

AsOption = Annotated[
    str, typer.Option("--as", help="The approver's user id (who decides).", show_default=False)
]
RolesOption = Annotated[
    str,
    typer.Option(
        "--roles", help="The approver's roles, comma-separated (R1,R2).", show_default=False
    ),
]
StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="The app's store (redis://host:port/db); default: D2_STORE_URL.",
        show_default=False,
    ),
]
AppOption = Annotated[
    str | None,
    typer.Option(
        "--app",
        help="The app whose requests to read: its policy's metadata.name (default: the app "
        "of D2_TOKEN, or of the local policy file).",
        show_default=False,
    ),
]
IdArgument = Annotated[str, typer.Argument(help="The request id (64 hex characters).")]


def utc(ts: float) -> str:
    """Unix seconds as RFC 3339 UTC (``-`` for 0: unknown)."""
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def request_json(request: ApprovalRequest) -> dict[str, Any]:
    """A request as the ``--json`` output shows it (times as RFC 3339 UTC)."""
    return {
        "id": request.id,
        "tool_id": request.tool_id,
        "requester": request.user_id,
        "arguments": request.arguments,
        "policy_version": request.policy_version,
        "asked_at": utc(request.asked_at) if request.asked_at else None,
        "expires_at": utc(request.expires_at),
        "approver_roles": list(request.approver_roles),
    }


def store_url(explicit: str | None) -> str:
    """``explicit`` or ``D2_STORE_URL``; a usage error when neither names a shared store."""
    url = (explicit or os.environ.get("D2_STORE_URL") or "").strip()
    if url in ("", "memory", "memory://"):
        raise CliError(
            "no shared store: the requests live in the app's store, and the default "
            "in-process store is out of reach of any other process",
            hint="point --store (or D2_STORE_URL) at the app's Redis, e.g. "
            "--store redis://127.0.0.1:6379/0; an app on the in-process store decides in "
            "its own process (d2.approve, or the inbox page mounted in the app)",
        )
    return url


def resolve_namespace(app: str | None, policy: Path | None) -> tuple[str, str]:
    """The app's store namespace and how it was found: ``--app``, else the cloud
    app of ``D2_TOKEN`` (unless ``--policy`` is given), else the local policy."""
    if app is not None:
        return namespace_of(app), f"app {app.strip()!r} (--app)"
    if os.environ.get("D2_TOKEN") and policy is None:
        return _cloud_namespace()
    from .loading import load_file, local_policy_path

    path = local_policy_path(policy)
    view = load_file(path)
    namespace = view.policy.namespace
    if not namespace:
        raise CliError(
            f"the policy {path} has no metadata.name, which keeps each app's requests apart "
            "in a shared store (the app itself refuses to hold approvals there without it)",
            hint="give the policy a metadata.name, or pass --app NAME",
        )
    return namespace, f"app {view.policy.name!r} ({path})"


def _cloud_namespace() -> tuple[str, str]:
    from .remote import connect, identify, run_remote
    from .settings import cloud_settings

    settings = cloud_settings()

    async def go() -> dict[str, Any]:
        async with connect(settings) as api:
            return await identify(api)

    me: dict[str, Any] = run_remote(settings, "approvals", go())
    namespace = f"cloud:{me['account_id']}:{me['app_name']}"
    return namespace, f"cloud app {me['app_name']!r}"


def open_desk(store: str | None, app: str | None, policy: Path | None) -> tuple[ApprovalDesk, str]:
    """The desk of the app (see :func:`resolve_namespace`) on its shared store;
    its decisions are posted to the webhook ``D2_APPROVAL_WEBHOOK`` names, if any."""
    from d2.core.stores import store_from_url
    from d2.core.webhook import configured_webhook

    url = store_url(store)
    namespace, label = resolve_namespace(app, policy)
    return ApprovalDesk(store_from_url(url), namespace, webhook=configured_webhook()), label


def _roles(text: str) -> tuple[str, ...]:
    roles = tuple(dict.fromkeys(r.strip() for r in text.split(",") if r.strip()))
    if not roles:
        raise CliError("--roles names no role", hint="--roles finance_lead (comma-separated)")
    return roles


def _user(text: str) -> str:
    if not text.strip():
        raise CliError("--as names no user", hint="--as dana")
    return text.strip()


def _on_desk(
    store: str | None,
    app: str | None,
    policy: Path | None,
    work: Callable[[ApprovalDesk], Awaitable[T]],
) -> tuple[T, str]:
    desk, label = open_desk(store, app, policy)

    async def go() -> T:
        try:
            return await work(desk)
        finally:
            await desk.aclose()

    return asyncio.run(go()), label


def _request_lines(out: Output, request: ApprovalRequest) -> None:
    out.line(f"request     {request.id}")
    out.line(f"tool        {visible_text(request.tool_id)}")
    out.line(f"requester   {visible_text(request.user_id)}")
    out.line(f"asked       {utc(request.asked_at)}")
    out.line(f"expires     {utc(request.expires_at)}")
    out.line(f"policy      {visible_text(request.policy_version)}")
    out.line(f"approvers   {visible_text(', '.join(request.approver_roles))}")
    out.line("arguments")
    for line in shown_json(request.arguments).splitlines():
        out.line(f"  {line}")


def list_command(
    as_user: AsOption,
    roles: RolesOption,
    store: StoreOption = None,
    app: AppOption = None,
    policy: PolicyOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the pending requests you may decide (an approver role of yours, not
    asked by you), soonest expiry first."""

    def body(out: Output) -> int:
        user, held = _user(as_user), _roles(roles)
        found, label = _on_desk(store, app, policy, lambda desk: desk.pending(user, held))
        table = Table(title=f"pending approvals of {label} for {user}", title_justify="left")
        for column in ("id", "tool", "requester", "asked", "expires"):
            table.add_column(column)
        for r in found:
            table.add_row(
                Text(r.id),
                Text(visible_text(r.tool_id)),
                Text(visible_text(r.user_id)),
                Text(utc(r.asked_at)),
                Text(utc(r.expires_at)),
            )
        if found:
            out.print(table)
        else:
            out.line(f"no pending approvals of {label} for {user}")
        out.emit({"ok": True, "user": user, "requests": [request_json(r) for r in found]})
        return OK

    run_command(as_json, body)


def _not_yours(request_id: str) -> CliError:
    return failed(
        f"approval request {visible_text(request_id[:12])} is not one you may decide: "
        "unknown, expired, used, another app's, asked by you, or not for your roles",
        hint="`d2 approvals list` shows the requests you may decide",
    )


def _request_id(request_id: str) -> str:
    """``request_id`` when it can be one (64 lower-case hex digits); else the answer
    to an unknown request, without asking the store."""
    if not _ID.fullmatch(request_id):
        raise _not_yours(request_id)
    return request_id


def show_command(
    request_id: IdArgument,
    as_user: AsOption,
    roles: RolesOption,
    store: StoreOption = None,
    app: AppOption = None,
    policy: PolicyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one request you may decide: the call, its arguments, where it stands."""

    def body(out: Output) -> int:
        user, held = _user(as_user), _roles(roles)
        _request_id(request_id)
        state: ApprovalState | None
        state, _ = _on_desk(store, app, policy, lambda d: d.lookup(request_id, user, held))
        if state is None:
            raise _not_yours(request_id)
        _request_lines(out, state.request)
        decided = f" by {visible_text(state.decided_by)}" if state.decided_by else ""
        out.line(f"state       {state.state}{decided}")
        out.emit(
            {
                "ok": True,
                "request": request_json(state.request),
                "state": state.state,
                "decided_by": state.decided_by,
            }
        )
        return OK

    run_command(as_json, body)


def _decide(
    approve: bool,
    request_id: str,
    as_user: str,
    roles: str,
    store: str | None,
    app: str | None,
    policy: Path | None,
    as_json: bool,
) -> None:
    verb = "approved" if approve else "rejected"

    def body(out: Output) -> int:
        user, held = _user(as_user), _roles(roles)
        _request_id(request_id)
        try:
            request, _ = _on_desk(
                store, app, policy, lambda d: d.decide(request_id, approve, user, held)
            )
        except PermissionDeniedError as exc:
            if exc.reason in ("approval_not_found", "approval_not_permitted"):
                raise failed(
                    str(exc), hint="`d2 approvals list` shows the requests you may decide"
                ) from None
            raise
        out.success(
            f"{verb} request {request.id[:12]} ({visible_text(request.tool_id)} for "
            f"{visible_text(request.user_id)}) as {user}"
        )
        if approve:
            out.line("the requester's identical call now runs once, before it expires")
        out.emit({"ok": True, "decision": verb, "by": user, "request": request_json(request)})
        return OK

    run_command(as_json, body)


def _decision_command(approve: bool, doc: str) -> Callable[..., None]:
    """The ``approve`` or ``reject`` command: one signature, one verdict each."""

    def command(
        request_id: IdArgument,
        as_user: AsOption,
        roles: RolesOption,
        store: StoreOption = None,
        app: AppOption = None,
        policy: PolicyOption = None,
        as_json: JsonOption = False,
    ) -> None:
        _decide(approve, request_id, as_user, roles, store, app, policy, as_json)

    command.__doc__ = doc
    command.__name__ = command.__qualname__ = "approve_command" if approve else "reject_command"
    return command


approve_command = _decision_command(
    True, "Approve a pending request: the requester's identical call then runs once."
)
reject_command = _decision_command(
    False, "Reject a pending request: the requester's identical call is refused."
)


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CliError(f"--listen {text!r} is not HOST:PORT", hint="--listen 127.0.0.1:8080")
    return host, int(port)


def serve_command(
    audience: Annotated[
        str,
        typer.Option("--audience", help="The aud the tokens must name.", show_default=False),
    ],
    jwks_url: Annotated[
        str | None,
        typer.Option("--jwks-url", help="Your identity provider's JWKS.", show_default=False),
    ] = None,
    oidc_issuer: Annotated[
        str | None,
        typer.Option(
            "--oidc-issuer",
            help="Your identity provider's issuer: its discovery document names the JWKS "
            "(instead of --jwks-url; also the iss the tokens must have).",
            show_default=False,
        ),
    ] = None,
    issuer: Annotated[
        str | None,
        typer.Option("--issuer", help="The iss the tokens must have.", show_default=False),
    ] = None,
    roles_claim: Annotated[
        str, typer.Option("--roles-claim", help="The claim (or dotted path) of the roles.")
    ] = "roles",
    user_claim: Annotated[
        str,
        typer.Option(
            "--user-claim",
            help="The claim (or dotted path) of the user id: the one the app's guard reads "
            "(another claim lets an approver decide their own requests).",
        ),
    ] = "sub",
    listen: Annotated[
        str, typer.Option("--listen", help="HOST:PORT to serve on.")
    ] = "127.0.0.1:8080",
    store: StoreOption = None,
    app: AppOption = None,
    policy: PolicyOption = None,
) -> None:
    """Serve the approvals inbox page on its own: approvers are who their
    Authorization: Bearer JWT says (verified against --jwks-url, or the JWKS that
    --oidc-issuer's discovery document names); 401 without one.
    Replicas share the CSRF key of their forms through D2_APPROVALS_CSRF_SECRET."""

    def body(out: Output) -> int:
        host, port = _listen(listen)
        try:
            import uvicorn
            from d2.asgi import jwt_extractor
            from d2.asgi.approvals import inbox_app
        except ImportError as exc:  # pragma: no cover - the extras ship with d2-cli
            raise CliError(
                f"serving the inbox needs {exc.name}",
                hint='pip install "d2-sdk[cli,asgi,jwt]" uvicorn',
            ) from None
        if (jwks_url is None) == (oidc_issuer is None):
            raise CliError(
                "give the identity provider's keys one way: --jwks-url or --oidc-issuer",
                hint="--oidc-issuer https://idp.example.invalid/realms/staff",
            )
        users = jwt_extractor(  # a bad URL or claim name: a usage error (exit 2)
            jwks_url=jwks_url,
            oidc_issuer=oidc_issuer,
            audience=audience,
            issuer=issuer,
            roles_claim=roles_claim,
            user_claim=user_claim,
        )
        desk, label = open_desk(store, app, policy)
        # replicas behind one load balancer share the key of their forms' tokens
        shared = os.environ.get("D2_APPROVALS_CSRF_SECRET") or None
        inbox = inbox_app(user_extractor=users, desk=desk, csrf_secret=shared)
        out.note(f"d2: the approvals inbox of {label} on http://{listen}/ (Ctrl-C stops it)")
        server = uvicorn.Server(
            uvicorn.Config(inbox, host=host, port=port, log_level="warning", lifespan="off")
        )
        server.run()
        return OK

    run_command(False, body)
