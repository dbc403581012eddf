"""``WSGIMiddleware`` with Flask's test client (which runs the app in the test's own
thread, so what the middleware leaves behind is visible) and under real threaded
servers: werkzeug's (a thread per request) and a wsgiref server whose workers are
reused, where clearing on ``close()`` is what keeps users apart."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest
from d2.asgi import WSGIMiddleware
from d2.asgi.types import Environ, StartResponse, WSGIApp
from d2.core import (
    ConfigurationError,
    PermissionDeniedError,
    UserContext,
    d2_guard,
    get_user_context,
    set_user,
)
from flask import Flask, Response, jsonify
from werkzeug.serving import make_server
from werkzeug.test import Client

NOBODY = UserContext(None, frozenset())
Serve = Callable[..., contextlib.AbstractContextManager[str]]
USERS: dict[str | None, list[str]] = {"alice": ["admin"], "bob": ["reader"], "carol": [], None: []}


@d2_guard("notes.read")
def read_notes() -> str:
    return "notes"


@d2_guard("notes.delete")
def delete_note() -> str:
    return "deleted"


def decide() -> dict[str, Any]:
    ctx = get_user_context()
    out: dict[str, Any] = {"user": ctx.user_id, "roles": sorted(ctx.roles)}
    for name, tool in (("read", read_notes), ("delete", delete_note)):
        try:
            tool()
            out[name] = "allow"
        except PermissionDeniedError as err:
            out[name] = err.reason
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
    return {} if user is None else {"X-D2-User": user, "X-D2-Roles": ",".join(USERS[user])}


class ThreadGate:
    """Holds requests until ``target`` of them are in flight at once (or 10 s)."""

    def __init__(self, target: int) -> None:
        self.target, self.inside, self.most = target, 0, 0
        self.cond = threading.Condition()

    def wait(self) -> None:
        with self.cond:
            self.inside += 1
            self.most = max(self.most, self.inside)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.most >= self.target, timeout=10)
            self.inside -= 1


def flask_app(gate: ThreadGate | None = None) -> Flask:
    app = Flask(__name__)

    @app.get("/whoami")
    def whoami() -> Any:
        first = decide()
        if gate is not None:
            gate.wait()
        time.sleep(random.random() / 200)
        return jsonify({"first": first, "second": decide()})

    @app.get("/stream")
    def stream() -> Response:
        def body() -> Iterator[str]:
            yield "start\n"
            for _ in range(3):
                seen = decide()  # a guarded call made while the body streams
                yield f"{seen['user']} {seen['read']} {seen['delete']}\n"

        return Response(body(), mimetype="text/plain")

    @app.get("/fail")
    def fail() -> str:
        raise RuntimeError(f"failed for {get_user_context().user_id}")

    app.wsgi_app = WSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app


class Probe:
    """Outside the middleware: records the user context a worker thread holds when
    a request arrives and once the response is closed."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.on_entry: list[UserContext] = []
        self.after_close: list[UserContext] = []

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        self.on_entry.append(get_user_context())
        body = self.app(environ, start_response)
        probe = self

        class Closing:
            def __iter__(self) -> Iterator[bytes]:
                return iter(body)

            def close(self) -> None:
                body.close()  # type: ignore[attr-defined]
                probe.after_close.append(get_user_context())

        return Closing()


# -- Flask's test client (same thread and context as the test) ----------------------


def test_flask_views_see_the_user_and_it_is_cleared_when_the_response_closes() -> None:
    client = flask_app().test_client()
    set_user("stale", roles=["admin"])
    response = client.get("/whoami", headers=headers("bob"), buffered=True)
    assert response.json == {"first": expected("bob"), "second": expected("bob")}
    assert get_user_context() == NOBODY
    assert client.get("/whoami", buffered=True).get_json()["second"] == expected(None)


def test_a_streamed_flask_body_keeps_its_user_until_close() -> None:
    client = flask_app().test_client()
    response = client.get("/stream", headers=headers("alice"))
    chunks: list[bytes] = []
    for chunk in response.iter_encoded():  # iterated lazily, in this thread
        chunks.append(chunk)
        assert get_user_context().user_id == "alice"  # still set mid-stream
    assert b"".join(chunks).decode().splitlines() == ["start"] + ["alice allow allow"] * 3
    response.close()
    assert get_user_context() == NOBODY


def test_a_flask_error_is_a_500_or_propagates_and_the_user_is_cleared() -> None:
    app = flask_app()
    response = app.test_client().get("/fail", headers=headers("alice"))
    assert response.status_code == 500
    assert get_user_context().user_id == "alice"  # until the server closes the response
    response.close()
    assert get_user_context() == NOBODY
    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(RuntimeError, match="failed for alice"):
        app.test_client().get("/fail", headers=headers("alice"))
    assert get_user_context() == NOBODY


def test_an_error_while_iterating_the_body_clears_the_user_on_close() -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"one"
        raise OSError(f"disk gone for {get_user_context().user_id}")

    with pytest.raises(OSError, match="disk gone for alice"):
        Client(WSGIMiddleware(app)).get("/", headers=headers("alice"), buffered=True)
    assert get_user_context() == NOBODY


def test_when_the_extractor_raises_the_error_propagates_and_nothing_leaks() -> None:
    called: list[bool] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        called.append(True)  # pragma: no cover - never reached
        return []

    def broken(environ: Environ) -> tuple[str, list[str]]:
        raise LookupError("session store down")

    set_user("stale", roles=["admin"])
    with pytest.raises(LookupError, match="session store down"):
        Client(WSGIMiddleware(app, user_extractor=broken)).get("/")
    assert called == []
    assert get_user_context() == NOBODY


def test_custom_extractors_and_their_mistakes() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        ctx = get_user_context()
        return [f"{ctx.user_id} {sorted(ctx.roles)}".encode()]

    def from_session(environ: Environ) -> tuple[str, list[str]] | None:
        token = environ.get("HTTP_AUTHORIZATION", "")
        return ("alice", ["admin"]) if token == "Bearer good" else None

    client = Client(WSGIMiddleware(app, user_extractor=from_session))
    good = client.get("/", headers={"Authorization": "Bearer good"})
    assert good.text == "alice ['admin']"
    assert client.get("/").text == "None []"

    async def coroutine_extractor(environ: Environ) -> tuple[str, list[str]]:
        return "alice", ["admin"]  # pragma: no cover - never called

    with pytest.raises(ConfigurationError, match="async function"):
        WSGIMiddleware(app, user_extractor=coroutine_extractor)  # type: ignore[arg-type]
    sneaky = WSGIMiddleware(app, user_extractor=lambda env: coroutine_extractor(env))  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigurationError, match="returned an awaitable"):
        Client(sneaky).get("/")
    wrong = WSGIMiddleware(app, user_extractor=lambda env: "alice")  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigurationError, match=r"\(user_id, roles\)"):
        Client(wrong).get("/")
    with pytest.raises(ConfigurationError, match="must be a function"):
        WSGIMiddleware(app, user_extractor=None)  # type: ignore[arg-type]
    assert get_user_context() == NOBODY


# -- real threaded servers -----------------------------------------------------------


async def fetch_all(host: str, calls: list[tuple[str, str | None]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=f"http://{host}", limits=limits, timeout=30, trust_env=False
    ) as http:
        return await asyncio.gather(*(http.get(path, headers=headers(u)) for path, u in calls))


def check(calls: list[tuple[str, str | None]], responses: list[httpx.Response]) -> None:
    for (path, user), response in zip(calls, responses, strict=True):
        assert response.status_code == 200
        want = expected(user)
        if path == "/whoami":
            assert response.json() == {"first": want, "second": want}
        else:
            line = f"{want['user']} {want['read']} {want['delete']}"
            assert response.text.splitlines() == ["start"] + [line] * 3


async def test_werkzeug_threaded_server_100_requests_in_flight_never_cross() -> None:
    gate = ThreadGate(100)
    probe = Probe(flask_app(gate).wsgi_app)
    server = make_server("127.0.0.1", 0, probe, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    calls = [("/whoami", random.choice(list(USERS))) for _ in range(100)]
    try:
        responses = await fetch_all(f"127.0.0.1:{server.port}", calls)
    finally:
        server.shutdown()
        thread.join(15)
        server.server_close()
    assert gate.most == 100
    check(calls, responses)
    assert probe.after_close == [NOBODY] * len(calls)


async def test_reused_worker_threads_start_every_request_with_no_user(serve_wsgi: Serve) -> None:
    probe = Probe(flask_app().wsgi_app)
    paths = ["/whoami", "/stream"]
    calls = [(random.choice(paths), random.choice(list(USERS))) for _ in range(300)]
    with serve_wsgi(probe, workers=6) as host:
        responses = await fetch_all(host, calls)
    check(calls, responses)
    assert len(probe.on_entry) == len(probe.after_close) == len(calls)
    assert set(probe.on_entry) == {NOBODY}  # nothing left over from the thread's last request
    assert set(probe.after_close) == {NOBODY}
