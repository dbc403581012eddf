"""A FastAPI app whose endpoints call D2-guarded tools.

Who is calling comes from a bearer token (a demo table stands in for your auth);
``ASGIMiddleware`` sets that user for each request and clears it when the response
is fully sent; a denied tool call becomes a 403 JSON response. Run it (it listens
on 127.0.0.1:8000 only)::

    python examples/fastapi_app.py

    curl -H "Authorization: Bearer alice-token" 127.0.0.1:8000/notes      # admin
    curl -H "Authorization: Bearer bob-token" 127.0.0.1:8000/notes        # reader
    curl -X DELETE -H "Authorization: Bearer bob-token" 127.0.0.1:8000/notes/1
    # 403 {"detail":"permission_denied","tool_id":"notes.delete","reason":"not_granted"}
    curl 127.0.0.1:8000/notes                                             # no user: 403
    curl -H "Authorization: Bearer alice-token" 127.0.0.1:8000/report     # streamed

Behind a gateway that authenticates callers and sets (or strips) ``X-D2-User`` /
``X-D2-Roles``, ``user_extractor=headers_extractor`` replaces the token table.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from d2 import (
    InMemorySource,
    configure_rbac_sync,
    d2_guard,
    get_user_context,
    run_in_thread,
    shutdown_rbac,
)
from d2.asgi import ASGIMiddleware, add_permission_denied_handler
from d2.asgi.types import Scope
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

os.environ.setdefault("D2_SILENT", "1")


def policy() -> dict[str, Any]:
    """Admins may call every tool; readers may read notes and stream reports."""
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3 * 86400))
    return {
        "metadata": {"name": "fastapi-example", "expires": expires},
        "policies": [
            {"role": "admin", "permissions": ["*"]},
            {"role": "reader", "permissions": ["notes.read", "reports.line"]},
        ],
    }


# Demo credentials: in a real app, verify a session or a JWT here.
TOKENS: dict[str, tuple[str, list[str]]] = {
    "alice-token": ("alice", ["admin"]),
    "bob-token": ("bob", ["reader"]),
    "carol-token": ("carol", []),
}

NOTES = {1: "quarterly numbers", 2: "launch plan"}


# The tools. The guard decides before each runs; a denied call never runs.
@d2_guard("notes.read")
async def read_notes() -> dict[int, str]:
    """Every note."""
    return dict(NOTES)


@d2_guard("notes.delete")
def delete_note(note_id: int) -> bool:
    """Delete a note (a sync tool: awaited in a worker thread below)."""
    return NOTES.pop(note_id, None) is not None


@d2_guard("reports.line")
async def report_line(n: int) -> str:
    """One line of a long report."""
    await asyncio.sleep(0.01)
    return f"line {n}\n"


async def token_extractor(scope: Scope) -> tuple[str, list[str]] | None:
    """``(user_id, roles)`` for a known bearer token, else ``None`` (no user)."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return TOKENS.get(token.strip())
    return None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the policy at startup; guarded calls deny once it is shut down."""
    configure_rbac_sync(source=InMemorySource(policy()))
    yield
    shutdown_rbac()


def create_app() -> FastAPI:
    """The app: D2 middleware, the 403 handler and a few tool endpoints."""
    app = FastAPI(title="D2 FastAPI example", lifespan=lifespan)
    app.add_middleware(ASGIMiddleware, user_extractor=token_extractor)
    add_permission_denied_handler(app)

    @app.get("/whoami")
    async def whoami() -> dict[str, Any]:
        ctx = get_user_context()
        return {"user": ctx.user_id, "roles": sorted(ctx.roles)}

    @app.get("/notes")
    async def list_notes() -> dict[str, Any]:
        return {"notes": await read_notes()}

    @app.delete("/notes/{note_id}")
    async def remove_note(note_id: int) -> dict[str, Any]:
        return {"deleted": await run_in_thread(delete_note, note_id)}

    @app.get("/report")
    async def report() -> StreamingResponse:
        first = await report_line(0)  # a denial here is still a clean 403

        async def lines() -> AsyncIterator[str]:
            yield first
            for n in range(1, 3):  # guarded calls made mid-stream see the same user
                yield await report_line(n)

        return StreamingResponse(lines(), media_type="text/plain")

    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
