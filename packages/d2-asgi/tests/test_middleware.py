"""``ASGIMiddleware`` called directly (in the test's own task, so what it leaves in the
context is visible) and under Starlette's TestClient: the user is visible to the
app, streaming bodies, background tasks and WebSockets, and is cleared once the app
returns or raises."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from d2.asgi import ASGIMiddleware
from d2.asgi.types import ASGIApp, Message, Receive, Scope, Send
from d2.core import (
    ConfigurationError,
    PermissionDeniedError,
    UserContext,
    d2_guard,
    get_user_context,
    set_user,
)
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

NOBODY = UserContext(None, frozenset())


@d2_guard("notes.read")
async def read_notes() -> str:
    return "notes"


@d2_guard("notes.delete")
def delete_note() -> str:
    return "deleted"


async def decisions() -> dict[str, Any]:
    """What the current user sees and may do."""
    ctx = get_user_context()
    out: dict[str, Any] = {"user": ctx.user_id, "roles": sorted(ctx.roles)}
    for name, call in (("read", read_notes), ("delete", delete_note)):
        try:
            result = call()
            if asyncio.iscoroutine(result):
                result = await result
            out[name] = "allow"
        except PermissionDeniedError as err:
            out[name] = err.reason
    return out


def returning(value: Any) -> Callable[[Scope], Any]:
    """An extractor that returns ``value`` whatever the request."""
    return lambda scope: value


def http_scope(user: str | None = None, roles: str | None = None, **extra: Any) -> Scope:
    headers = []
    if user is not None:
        headers.append((b"x-d2-user", user.encode()))
    if roles is not None:
        headers.append((b"x-d2-roles", roles.encode()))
    return {"type": "http", "method": "GET", "path": "/", "headers": headers, **extra}


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def discard(message: Message) -> None:
    pass


class Recorder:
    """An ASGI app that records the user context it runs with."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(await decisions())


class Probe:
    """Wraps the middleware; records the user context left once it returns or raises."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.after: list[tuple[str, UserContext]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            self.after.append((scope["type"], get_user_context()))


# -- called directly ---------------------------------------------------------------


async def test_the_app_sees_the_user_and_it_is_cleared_when_the_app_returns() -> None:
    app = Recorder()
    set_user("stale", roles=["admin"])  # left over from something else in this task
    await ASGIMiddleware(app)(http_scope("bob", "reader"), receive, discard)
    assert app.seen == [
        {"user": "bob", "roles": ["reader"], "read": "allow", "delete": "not_granted"}
    ]
    assert get_user_context() == NOBODY


async def test_a_request_without_headers_runs_with_no_user_so_tools_deny() -> None:
    app = Recorder()
    await ASGIMiddleware(app)(http_scope(), receive, discard)
    await ASGIMiddleware(app)(http_scope(roles="admin"), receive, discard)
    expected: dict[str, Any] = {"user": None, "roles": [], "read": "no_user", "delete": "no_user"}
    assert app.seen == [expected, expected]


async def test_sync_async_and_callable_object_extractors_all_work() -> None:
    def sync(scope: Scope) -> tuple[str, list[str]]:
        return "s", ["admin"]

    async def asynchronous(scope: Scope) -> tuple[str, list[str]]:
        await asyncio.sleep(0)
        return "a", ["reader"]

    class Extractor:
        async def __call__(self, scope: Scope) -> tuple[str, list[str]]:
            return "o", ["admin", "reader"]

    def none(scope: Scope) -> None:
        return None

    app = Recorder()
    for extractor in (sync, asynchronous, Extractor(), none, lambda s: (None, ["admin"])):
        await ASGIMiddleware(app, user_extractor=extractor)(http_scope(), receive, discard)
        assert get_user_context() == NOBODY
    assert [(s["user"], s["roles"], s["delete"]) for s in app.seen] == [
        ("s", ["admin"], "allow"),
        ("a", ["reader"], "not_granted"),
        ("o", ["admin", "reader"], "allow"),
        (None, [], "no_user"),
        (None, [], "no_user"),  # roles without a user are dropped
    ]


async def test_when_the_extractor_raises_the_error_propagates_and_nothing_leaks() -> None:
    def broken(scope: Scope) -> tuple[str, list[str]]:
        raise LookupError("session store down")

    app = Recorder()
    set_user("stale", roles=["admin"])
    with pytest.raises(LookupError, match="session store down"):
        await ASGIMiddleware(app, user_extractor=broken)(http_scope(), receive, discard)
    assert app.seen == []
    assert get_user_context() == NOBODY


async def test_an_extractor_returning_the_wrong_shape_is_a_configuration_error() -> None:
    app = Recorder()
    bad_results: list[Any] = ["alice", ("alice",), ("alice", ["r"], "extra"), {"user": "alice"}]
    for bad in bad_results:
        mw = ASGIMiddleware(app, user_extractor=returning(bad))
        with pytest.raises(ConfigurationError, match=r"\(user_id, roles\)"):
            await mw(http_scope(), receive, discard)
        assert get_user_context() == NOBODY
    mw = ASGIMiddleware(app, user_extractor=returning(("alice", [3])))
    with pytest.raises(ConfigurationError, match="roles must be strings"):
        await mw(http_scope(), receive, discard)
    assert app.seen == []
    assert get_user_context() == NOBODY


def test_a_non_callable_extractor_is_refused_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="user_extractor must be a function"):
        ASGIMiddleware(Recorder(), user_extractor="X-D2-User")  # type: ignore[arg-type]


async def test_when_the_app_raises_the_error_propagates_and_the_user_is_cleared() -> None:
    seen: list[str | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(get_user_context().user_id)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await ASGIMiddleware(app)(http_scope("alice", "admin"), receive, discard)
    assert seen == ["alice"]
    assert get_user_context() == NOBODY


async def test_a_cancelled_request_clears_the_user() -> None:
    started = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        started.set()
        await asyncio.sleep(60)

    probe = Probe(ASGIMiddleware(app))
    task = asyncio.create_task(probe(http_scope("alice", "admin"), receive, discard))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert probe.after == [("http", NOBODY)]


@pytest.mark.parametrize("kind", ["lifespan", "d2.custom"])
async def test_lifespan_and_unknown_scopes_pass_straight_through(kind: str) -> None:
    calls: list[Any] = []

    def extractor(scope: Scope) -> tuple[str, list[str]]:
        calls.append("extractor")
        return "alice", ["admin"]

    async def app(scope: Scope, rcv: Receive, snd: Send) -> None:
        calls.append((scope, rcv, snd, get_user_context()))

    scope: Scope = {"type": kind, "asgi": {"version": "3.0"}}
    outer = set_user("outer", roles=["reader"])
    await ASGIMiddleware(app, user_extractor=extractor)(scope, receive, discard)
    assert calls == [(scope, receive, discard, outer)]
    assert calls[0][0] is scope
    assert get_user_context() is outer  # untouched: neither set nor cleared


async def test_hundreds_of_interleaved_requests_in_one_loop_never_cross() -> None:
    users = {"alice": "admin", "bob": "reader", "carol": "", "dave": "reader,admin"}
    results: list[tuple[str | None, dict[str, Any]]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        expected = dict(scope["headers"]).get(b"x-d2-user")
        for _ in range(3):
            await asyncio.sleep(random.random() / 1000)
            seen = await decisions()
            results.append((expected.decode() if expected else None, seen))

    mw = ASGIMiddleware(app)
    names = [random.choice([*users, None]) for _ in range(400)]
    await asyncio.gather(*(mw(http_scope(n, users.get(n or "")), receive, discard) for n in names))
    assert len(results) == 3 * len(names)
    for expected, seen in results:
        assert seen["user"] == expected
        roles = set(users.get(expected or "", "").split(",")) - {""}
        assert set(seen["roles"]) == (roles if expected else set())
        assert seen["delete"] == (
            "allow" if "admin" in roles else "not_granted" if expected else "no_user"
        )
    assert get_user_context() == NOBODY


# -- under Starlette's TestClient --------------------------------------------------


def starlette_app(events: list[Any]) -> Starlette:
    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse(await decisions())

    async def stream(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            yield "start\n"
            for _ in range(3):
                await asyncio.sleep(0.001)
                seen = await decisions()  # a guarded call made mid-stream
                events.append(("stream", seen["user"], seen["read"]))
                yield f"{seen['user']} {seen['read']}\n"

        return StreamingResponse(body(), media_type="text/plain")

    def sync_stream(request: Request) -> StreamingResponse:
        def body() -> Iterator[str]:  # iterated in the thread pool
            user = get_user_context().user_id
            try:
                yield f"{user} {delete_note()}\n"
            except PermissionDeniedError as err:
                yield f"{user} {err.reason}\n"

        return StreamingResponse(body(), media_type="text/plain")

    async def later() -> None:
        await asyncio.sleep(0.001)
        seen = await decisions()
        events.append(("background", seen["user"], seen["delete"]))

    async def with_background(request: Request) -> PlainTextResponse:
        return PlainTextResponse("queued", background=BackgroundTask(later))

    async def fail(request: Request) -> PlainTextResponse:
        raise RuntimeError(f"failed for {get_user_context().user_id}")

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            seen = await decisions()
            await websocket.send_json({"echo": text, **seen})

    return Starlette(
        routes=[
            Route("/whoami", whoami),
            Route("/stream", stream),
            Route("/sync-stream", sync_stream),
            Route("/background", with_background),
            Route("/fail", fail),
            WebSocketRoute("/ws", ws),
        ]
    )


def client_for(events: list[Any]) -> tuple[TestClient, Probe]:
    probe = Probe(ASGIMiddleware(starlette_app(events)))
    return TestClient(probe), probe


def as_user(name: str, roles: str = "") -> dict[str, str]:
    return {"X-D2-User": name, "X-D2-Roles": roles}


def test_testclient_requests_see_their_user_and_leave_none_behind() -> None:
    client, probe = client_for([])
    assert client.get("/whoami", headers=as_user("alice", "admin")).json() == {
        "user": "alice",
        "roles": ["admin"],
        "read": "allow",
        "delete": "allow",
    }
    assert client.get("/whoami").json()["read"] == "no_user"
    assert probe.after == [("http", NOBODY), ("http", NOBODY)]


def test_a_streamed_body_calls_guarded_tools_as_its_user_until_the_last_chunk() -> None:
    events: list[Any] = []
    client, probe = client_for(events)
    with client.stream("GET", "/stream", headers=as_user("bob", "reader")) as response:
        lines = list(response.iter_lines())
    assert lines == ["start", "bob allow", "bob allow", "bob allow"]
    assert events == [("stream", "bob", "allow")] * 3
    assert probe.after == [("http", NOBODY)]  # cleared only after the last chunk


def test_a_sync_streamed_body_in_the_thread_pool_sees_the_user() -> None:
    client, probe = client_for([])
    assert client.get("/sync-stream", headers=as_user("alice", "admin")).text == "alice deleted\n"
    assert client.get("/sync-stream", headers=as_user("bob", "reader")).text == "bob not_granted\n"
    assert probe.after == [("http", NOBODY), ("http", NOBODY)]


def test_a_background_task_runs_as_the_user_and_the_user_is_cleared_after_it() -> None:
    events: list[Any] = []

    class Marking(Probe):
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await super().__call__(scope, receive, send)
            events.append(("cleared",))

    marking = Marking(ASGIMiddleware(starlette_app(events)))
    client = TestClient(marking)
    assert client.get("/background", headers=as_user("alice", "admin")).text == "queued"
    assert events == [("background", "alice", "allow"), ("cleared",)]
    assert marking.after == [("http", NOBODY)]


def test_an_app_error_reaches_the_client_and_the_user_is_cleared() -> None:
    client, probe = client_for([])
    with pytest.raises(RuntimeError, match="failed for alice"):
        client.get("/fail", headers=as_user("alice", "admin"))
    assert probe.after == [("http", NOBODY)]
    quiet = TestClient(probe, raise_server_exceptions=False)
    assert quiet.get("/fail", headers=as_user("bob", "reader")).status_code == 500
    assert probe.after == [("http", NOBODY), ("http", NOBODY)]


def test_a_websocket_session_runs_as_its_user_for_every_message() -> None:
    client, probe = client_for([])
    with client.websocket_connect("/ws", headers=as_user("bob", "reader")) as ws:
        for text in ("one", "two"):
            ws.send_text(text)
            assert ws.receive_json() == {
                "echo": text,
                "user": "bob",
                "roles": ["reader"],
                "read": "allow",
                "delete": "not_granted",
            }
    with client.websocket_connect("/ws") as ws:
        ws.send_text("anon")
        assert ws.receive_json()["read"] == "no_user"
    assert probe.after == [("websocket", NOBODY), ("websocket", NOBODY)]


def test_testclient_lifespan_passes_through_without_a_user() -> None:
    seen: list[Any] = []

    def extractor(scope: Scope) -> tuple[str, list[str]]:
        seen.append(("extractor", scope["type"]))
        return "alice", ["admin"]

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        seen.append(("startup", get_user_context().user_id))
        yield
        seen.append(("shutdown", get_user_context().user_id))

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(get_user_context().user_id))

    app = Starlette(routes=[Route("/", home)], lifespan=lifespan)
    with TestClient(ASGIMiddleware(app, user_extractor=extractor)) as client:
        assert client.get("/").text == "alice"
    assert seen == [("startup", None), ("extractor", "http"), ("shutdown", None)]


def test_an_extractor_can_reuse_what_starlette_authentication_decided() -> None:
    from starlette.authentication import (
        AuthCredentials,
        AuthenticationBackend,
        BaseUser,
        SimpleUser,
    )
    from starlette.middleware import Middleware
    from starlette.middleware.authentication import AuthenticationMiddleware
    from starlette.requests import HTTPConnection

    class TokenBackend(AuthenticationBackend):
        async def authenticate(
            self, conn: HTTPConnection
        ) -> tuple[AuthCredentials, BaseUser] | None:
            if conn.headers.get("authorization") == "Bearer alice-token":
                return AuthCredentials(["admin"]), SimpleUser("alice")
            return None

    def from_starlette_auth(scope: Scope) -> tuple[str, list[str]] | None:  # as in the docs
        user, auth = scope.get("user"), scope.get("auth")
        if user is None or auth is None or not user.is_authenticated:
            return None
        return user.identity, list(auth.scopes)

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse(await decisions())

    app = Starlette(
        routes=[Route("/", whoami)],
        middleware=[  # outermost first: authentication runs before ASGIMiddleware
            Middleware(AuthenticationMiddleware, backend=TokenBackend()),
            Middleware(ASGIMiddleware, user_extractor=from_starlette_auth),
        ],
    )
    client = TestClient(app)
    seen = client.get("/", headers={"Authorization": "Bearer alice-token"}).json()
    assert (seen["user"], seen["roles"], seen["delete"]) == ("alice", ["admin"], "allow")
    assert client.get("/").json()["delete"] == "no_user"
