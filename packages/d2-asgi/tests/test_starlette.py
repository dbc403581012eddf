"""The Starlette/FastAPI handler: a ``PermissionDeniedError`` becomes a 403 JSON body
naming the tool and the reason (never the user), a WebSocket denial refuses the
handshake or closes with 1008, and other errors are left alone."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import websockets.asyncio.client
import websockets.exceptions
from d2.asgi import ASGIMiddleware, add_permission_denied_handler, permission_denied_handler
from d2.core import PermissionDeniedError, d2_guard, get_user_context, shutdown_all_rbac
from fastapi import Depends, FastAPI, WebSocket
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

Serve = Callable[..., contextlib.AbstractContextManager[str]]


@d2_guard("notes.read")
async def read_notes() -> str:
    return "notes"


@d2_guard("notes.delete")
def delete_note() -> str:
    return "deleted"


def may_read() -> str:
    return "checked"


async def needs_read(checked: str = Depends(may_read)) -> str:
    return await read_notes()


def fastapi_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(ASGIMiddleware)
    add_permission_denied_handler(app)

    @app.get("/read")
    async def read() -> dict[str, str]:
        return {"notes": await read_notes()}

    @app.post("/delete")
    def delete() -> dict[str, str]:  # sync endpoint: the denial comes from the thread pool
        return {"result": delete_note()}

    @app.get("/dependency")
    async def dependency(notes: str = Depends(needs_read)) -> dict[str, str]:
        return {"notes": notes}

    @app.get("/value-error")
    async def value_error() -> dict[str, str]:
        raise ValueError("not a denial")

    @app.websocket("/ws-early")
    async def ws_early(websocket: WebSocket) -> None:
        delete_note()  # denied before the handshake is accepted
        await websocket.accept()

    @app.websocket("/ws-late")
    async def ws_late(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(await read_notes())
        await websocket.receive_text()
        delete_note()

    return app


def as_user(name: str, roles: str) -> dict[str, str]:
    return {"X-D2-User": name, "X-D2-Roles": roles}


def denial(tool_id: str, reason: str) -> dict[str, Any]:
    return {"detail": "permission_denied", "tool_id": tool_id, "reason": reason}


def test_a_denied_tool_in_a_fastapi_endpoint_is_a_403_with_tool_and_reason() -> None:
    client = TestClient(fastapi_app())
    response = client.post("/delete", headers=as_user("bob-the-reader", "reader"))
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/json"
    assert response.json() == denial("notes.delete", "not_granted")
    assert "bob" not in response.text and "reader" not in response.text
    assert client.get("/read").json() == denial("notes.read", "no_user")
    assert client.get("/read", headers=as_user("carol", "")).json() == denial(
        "notes.read", "not_granted"
    )


def test_allowed_calls_are_untouched_by_the_handler() -> None:
    client = TestClient(fastapi_app())
    alice = as_user("alice", "admin")
    assert client.post("/delete", headers=alice).json() == {"result": "deleted"}
    assert client.get("/read", headers=as_user("bob", "reader")).json() == {"notes": "notes"}


def test_a_denial_inside_a_dependency_is_a_403_too() -> None:
    client = TestClient(fastapi_app())
    assert client.get("/dependency", headers=as_user("bob", "reader")).status_code == 200
    response = client.get("/dependency", headers=as_user("carol", "guest"))
    assert (response.status_code, response.json()) == (403, denial("notes.read", "not_granted"))


def test_no_policy_in_force_is_a_403_with_its_reason() -> None:
    shutdown_all_rbac()
    response = TestClient(fastapi_app()).get("/read", headers=as_user("alice", "admin"))
    assert (response.status_code, response.json()) == (403, denial("notes.read", "missing_policy"))


def test_other_errors_are_not_turned_into_403() -> None:
    client = TestClient(fastapi_app(), raise_server_exceptions=False)
    assert client.get("/value-error", headers=as_user("alice", "admin")).status_code == 500
    with pytest.raises(ValueError, match="not a denial"):
        TestClient(fastapi_app()).get("/value-error")


async def test_the_handler_reraises_anything_but_a_denial() -> None:
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    with pytest.raises(KeyError):
        await permission_denied_handler(request, KeyError("x"))


def test_the_handler_works_on_plain_starlette_via_exception_handlers() -> None:
    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse(delete_note())

    app = Starlette(
        routes=[Route("/", home)],
        # Starlette's handler type cannot say "Response for HTTP, None for WebSocket";
        # add_permission_denied_handler(app) does the same without the ignore
        exception_handlers={PermissionDeniedError: permission_denied_handler},  # type: ignore[dict-item]
    )
    client = TestClient(ASGIMiddleware(app))
    assert client.get("/", headers=as_user("alice", "admin")).text == "deleted"
    response = client.get("/", headers=as_user("bob", "reader"))
    assert (response.status_code, response.json()) == (403, denial("notes.delete", "not_granted"))


def test_a_websocket_denied_before_accept_is_refused_with_the_403_body() -> None:
    client = TestClient(fastapi_app())
    with (
        pytest.raises(WebSocketDenialResponse) as refused,
        client.websocket_connect("/ws-early", headers=as_user("bob", "reader")),
    ):
        pass  # pragma: no cover - never reached
    assert refused.value.status_code == 403
    assert refused.value.json() == denial("notes.delete", "not_granted")


def test_a_websocket_denied_after_accept_is_closed_with_1008() -> None:
    client = TestClient(fastapi_app())
    with client.websocket_connect("/ws-late", headers=as_user("bob", "reader")) as ws:
        assert ws.receive_text() == "notes"
        ws.send_text("now delete")
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert (closed.value.code, closed.value.reason) == (1008, "permission_denied")


async def test_under_uvicorn_denials_are_403s_and_websocket_refusals(serve_asgi: Serve) -> None:
    app = fastapi_app()
    with serve_asgi(app) as host:
        async with httpx.AsyncClient(base_url=f"http://{host}", trust_env=False) as http:
            response = await http.post("/delete", headers=as_user("bob", "reader"))
            assert (response.status_code, response.json()) == (
                403,
                denial("notes.delete", "not_granted"),
            )
        connect = websockets.asyncio.client.connect
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with connect(f"ws://{host}/ws-early", proxy=None):
                pass  # pragma: no cover - never reached
        assert refused.value.response.status_code == 403
        assert b"no_user" in refused.value.response.body
        async with connect(
            f"ws://{host}/ws-late", additional_headers=as_user("bob", "reader"), proxy=None
        ) as ws:
            assert await ws.recv() == "notes"
            await ws.send("now delete")
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "permission_denied")
    assert get_user_context().user_id is None
