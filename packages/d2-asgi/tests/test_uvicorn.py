"""``ASGIMiddleware`` under a real uvicorn server on 127.0.0.1, driven by httpx and the
websockets client: hundreds of requests in flight at once never see each other's
user, streams and WebSockets keep theirs, background tasks run as the user, and the
lifespan passes through."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import websockets.asyncio.client
from d2.asgi import ASGIMiddleware
from d2.asgi.types import ASGIApp, Receive, Scope, Send
from d2.core import PermissionDeniedError, UserContext, d2_guard, get_user_context
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

NOBODY = UserContext(None, frozenset())
Serve = Callable[..., contextlib.AbstractContextManager[str]]

USERS: dict[str | None, list[str]] = {
    "alice": ["admin"],
    "bob": ["reader"],
    "carol": [],
    "dave": ["reader", "admin"],
    None: [],
}


@d2_guard("notes.read")
async def read_notes() -> str:
    return "notes"


@d2_guard("notes.delete")
def delete_note() -> str:
    return "deleted"


def decide_sync() -> dict[str, Any]:
    ctx = get_user_context()
    out: dict[str, Any] = {"user": ctx.user_id, "roles": sorted(ctx.roles)}
    try:
        delete_note()
        out["delete"] = "allow"
    except PermissionDeniedError as err:
        out["delete"] = err.reason
    return out


async def decide() -> dict[str, Any]:
    out = decide_sync()
    try:
        await read_notes()
        out["read"] = "allow"
    except PermissionDeniedError as err:
        out["read"] = err.reason
    return out


def expected(user: str | None) -> dict[str, Any]:
    roles = USERS[user] if user else []
    if user is None:
        read = delete = "no_user"
    else:
        read = "allow" if {"admin", "reader"} & set(roles) else "not_granted"
        delete = "allow" if "admin" in roles else "not_granted"
    return {"user": user, "roles": sorted(roles), "read": read, "delete": delete}


def headers(user: str | None) -> dict[str, str]:
    if user is None:
        return {}
    return {"X-D2-User": user, "X-D2-Roles": ", ".join(USERS[user])}


class Gate:
    """Holds requests until ``target`` of them are in flight at once."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.inside = 0
        self.most = 0
        self._open: asyncio.Event | None = None

    async def wait(self) -> None:
        if self._open is None:
            self._open = asyncio.Event()
        self.inside += 1
        self.most = max(self.most, self.inside)
        if self.inside >= self.target:
            self._open.set()
        try:
            await asyncio.wait_for(self._open.wait(), 20)
        finally:
            self.inside -= 1


class Probe:
    """Records the user context left in the request's task after the middleware
    (for ``http`` and ``websocket`` scopes)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.after: list[tuple[str, UserContext]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] != "lifespan":
                self.after.append((scope["type"], get_user_context()))


def build(gate: Gate, events: list[Any]) -> Probe:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append(("startup", get_user_context().user_id))
        yield
        events.append(("shutdown", get_user_context().user_id))

    async def gated(request: Request) -> JSONResponse:
        first = await decide()
        await gate.wait()  # every request of the round is in flight now
        await asyncio.sleep(random.random() / 100)
        second = await decide()
        return JSONResponse({"first": first, "second": second})

    def sync(request: Request) -> JSONResponse:  # runs in the thread pool
        return JSONResponse(decide_sync())

    async def stream(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            for i in range(4):
                await asyncio.sleep(random.random() / 200)
                seen = await decide()
                yield f"{i} {seen['user']} {seen['read']} {seen['delete']}\n"

        return StreamingResponse(body(), media_type="text/plain")

    async def later() -> None:
        await asyncio.sleep(0.01)
        events.append(("background", await decide()))

    async def background(request: Request) -> PlainTextResponse:
        return PlainTextResponse("queued", background=BackgroundTask(later))

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            await asyncio.sleep(random.random() / 200)
            await websocket.send_json({"echo": text, **(await decide())})

    app = Starlette(
        routes=[
            Route("/gated", gated),
            Route("/sync", sync),
            Route("/stream", stream),
            Route("/background", background),
            WebSocketRoute("/ws", ws),
        ],
        lifespan=lifespan,
    )
    return Probe(ASGIMiddleware(app))


def client(host: str, connections: int = 400) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=f"http://{host}", limits=limits, timeout=30, trust_env=False)


async def test_300_requests_in_flight_at_once_with_different_users_never_cross(
    serve_asgi: Serve,
) -> None:
    events: list[Any] = []
    gate = Gate(300)
    probe = build(gate, events)
    users = [random.choice(list(USERS)) for _ in range(300)]
    with serve_asgi(probe) as host:
        async with client(host) as http:
            responses = await asyncio.gather(
                *(http.get("/gated", headers=headers(u)) for u in users)
            )
    assert gate.most == 300
    for user, response in zip(users, responses, strict=True):
        assert response.status_code == 200
        body = response.json()
        assert body["first"] == body["second"] == expected(user)
    assert probe.after == [("http", NOBODY)] * 300


async def test_sync_endpoints_streams_and_plain_requests_mixed_never_cross(
    serve_asgi: Serve,
) -> None:
    probe = build(Gate(1), [])
    paths = ["/sync", "/stream", "/gated"]
    calls = [(random.choice(paths), random.choice(list(USERS))) for _ in range(200)]
    with serve_asgi(probe) as host:
        async with client(host) as http:
            responses = await asyncio.gather(*(http.get(p, headers=headers(u)) for p, u in calls))
    for (path, user), response in zip(calls, responses, strict=True):
        assert response.status_code == 200
        want = expected(user)
        if path == "/sync":
            assert response.json() == {k: want[k] for k in ("user", "roles", "delete")}
        elif path == "/gated":
            assert response.json()["second"] == want
        else:
            line = f"{want['user']} {want['read']} {want['delete']}"
            assert response.text.splitlines() == [f"{i} {line}" for i in range(4)]
    assert probe.after == [("http", NOBODY)] * len(calls)


async def test_a_stream_read_slowly_keeps_its_user_while_others_come_and_go(
    serve_asgi: Serve,
) -> None:
    probe = build(Gate(1), [])
    lines = []
    with serve_asgi(probe) as host:
        async with (
            client(host) as http,
            http.stream("GET", "/stream", headers=headers("bob")) as slow,
        ):
            async for line in slow.aiter_lines():
                lines.append(line)
                others = await asyncio.gather(
                    *(http.get("/gated", headers=headers(u)) for u in ("alice", None))
                )
                assert [r.json()["second"]["user"] for r in others] == ["alice", None]
    assert lines == [f"{i} bob allow not_granted" for i in range(4)]
    assert len(probe.after) == 9
    assert set(probe.after) == {("http", NOBODY)}


async def test_background_tasks_run_as_the_requests_user(serve_asgi: Serve) -> None:
    events: list[Any] = []
    probe = build(Gate(1), events)
    users = ["alice", "bob", None, "dave"] * 5
    with serve_asgi(probe) as host:
        async with client(host) as http:
            responses = await asyncio.gather(
                *(http.get("/background", headers=headers(u)) for u in users)
            )
    assert all(r.text == "queued" for r in responses)
    ran = sorted((e[1]["user"] or "", e[1]["read"]) for e in events if e[0] == "background")
    assert ran == sorted((u or "", expected(u)["read"]) for u in users)
    assert probe.after == [("http", NOBODY)] * len(users)


async def test_websocket_sessions_keep_their_own_user_for_every_message(
    serve_asgi: Serve,
) -> None:
    probe = build(Gate(1), [])

    async def session(host: str, user: str | None) -> list[dict[str, Any]]:
        uri = f"ws://{host}/ws"
        replies = []
        async with websockets.asyncio.client.connect(
            uri, additional_headers=headers(user), proxy=None
        ) as ws:
            for i in range(5):
                await ws.send(f"{user}-{i}")
                replies.append(json.loads(await ws.recv()))
        return replies

    users = [random.choice(list(USERS)) for _ in range(30)]
    with serve_asgi(probe) as host:
        sessions = await asyncio.gather(*(session(host, u) for u in users))
    for user, replies in zip(users, sessions, strict=True):
        assert replies == [{"echo": f"{user}-{i}", **expected(user)} for i in range(5)]
    assert probe.after == [("websocket", NOBODY)] * len(users)


async def test_lifespan_passes_through_the_middleware_untouched(serve_asgi: Serve) -> None:
    events: list[Any] = []
    calls: list[str] = []
    probe = build(Gate(1), events)
    inner = probe.app
    assert isinstance(inner, ASGIMiddleware)
    extract = inner.user_extractor

    def spying(scope: Scope) -> Any:
        calls.append(scope["type"])
        return extract(scope)

    inner.user_extractor = spying
    with serve_asgi(probe) as host:
        async with client(host) as http:
            assert (await http.get("/gated", headers=headers("bob"))).status_code == 200
    assert events == [("startup", None), ("shutdown", None)]
    assert calls == ["http"]  # never called for the lifespan scope
    assert probe.after == [("http", NOBODY)]


async def test_an_app_error_under_uvicorn_is_a_500_and_leaves_no_user(serve_asgi: Serve) -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # a minimal lifespan, then fail every request
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        raise RuntimeError(f"broken for {get_user_context().user_id}")

    probe = Probe(ASGIMiddleware(broken))
    with serve_asgi(probe) as host:
        async with client(host) as http:
            response = await http.get("/", headers=headers("alice"))
    assert response.status_code == 500
    assert probe.after == [("http", NOBODY)]
