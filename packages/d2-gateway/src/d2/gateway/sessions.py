"""The gateway's MCP session manager: the SDK's Streamable HTTP session manager
with a cap on the sessions one user may hold open, so one user cannot fill the
global session table and lock everyone else out."""

from __future__ import annotations

import json
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.types import Receive, Scope, Send

__all__ = ["DEFAULT_IDLE_TIMEOUT", "DEFAULT_SESSIONS_PER_USER", "SessionManager"]

DEFAULT_SESSIONS_PER_USER = 32
"""Open sessions one user may hold (``--max-sessions-per-user``)."""

DEFAULT_IDLE_TIMEOUT = 15 * 60.0
"""Seconds after which a session with no request in flight ends (``--session-idle-timeout``)."""

_HOOKS = ("_admit_session", "_session_owners", "_handle_stateful_request")


class _OverCap(Exception):
    def __init__(self, held: int) -> None:
        super().__init__(held)
        self.held = held


class SessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager, admitting a new session only while its user
    (the session owner's subject and issuer) holds fewer than
    ``max_sessions_per_user``; over it, that user alone is answered 429."""

    def __init__(self, *args: Any, max_sessions_per_user: int | None, **kwargs: Any) -> None:
        if max_sessions_per_user is not None and max_sessions_per_user <= 0:
            raise ValueError("max_sessions_per_user must be a positive number of sessions")
        super().__init__(*args, **kwargs)
        missing = [h for h in _HOOKS if not hasattr(self, h)]
        if missing:  # pragma: no cover - an mcp release that changed its internals
            raise RuntimeError(
                f"this mcp release has no {missing} in its session manager: the per-user "
                "session cap cannot be enforced; install mcp 2.3"
            )
        self.max_sessions_per_user = max_sessions_per_user

    def _admit_session(self, requestor: AuthorizationContext | None) -> Any:
        # Called by the SDK under its session-creation lock: count and admit atomically.
        cap = self.max_sessions_per_user
        if cap is not None and requestor is not None:
            key = (requestor["subject"], requestor["issuer"])
            held = sum(
                1
                for owner in self._session_owners.values()
                if (owner["subject"], owner["issuer"]) == key
            )
            if held >= cap:
                raise _OverCap(held)
        return super()._admit_session(requestor)

    async def handle_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request; a user over the session cap gets 429 (nothing was opened)."""
        try:
            await super().handle_request(scope, receive, send)
        except _OverCap as over:
            body = json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": None,
                    "error": {
                        "code": -32600,
                        "message": (
                            f"Too many open sessions for this user ({over.held}): end one "
                            "(HTTP DELETE with its Mcp-Session-Id) or wait for an idle one "
                            "to expire (reason: too_many_sessions)"
                        ),
                        "data": {"d2_reason": "too_many_sessions"},
                    },
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
