"""Shared fixtures: every test starts with a fresh in-memory policy, no user set and
no D2_* variables; ``serve_asgi`` / ``serve_wsgi`` run a real server on a free
127.0.0.1 port in a background thread.

The policy: ``admin`` may call every tool, ``reader`` only ``notes.read``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import pytest
import uvicorn
from d2.core import InMemorySource, clear_user_context, configure_rbac_sync, shutdown_all_rbac
from d2.core.testing import expires_in, isolate

POLICY_ENTRIES = [
    {"role": "admin", "permissions": ["*"]},
    {"role": "reader", "permissions": ["notes.read"]},
]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[None]:
    isolate(monkeypatch, tmp_path)
    doc = {
        "metadata": {"name": "d2-asgi-tests", "expires": expires_in()},
        "policies": POLICY_ENTRIES,
    }
    configure_rbac_sync(source=InMemorySource(doc))
    yield
    shutdown_all_rbac()
    clear_user_context()


def _wait_until(ready: Callable[[], bool], thread: threading.Thread, what: str) -> None:
    deadline = time.monotonic() + 10
    while not ready():
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.005)


@contextlib.contextmanager
def _uvicorn(app: Any, **options: Any) -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http="h11",
        ws="websockets-sansio",
        lifespan="on",
        log_config=None,
        log_level="warning",
        access_log=False,
        backlog=1024,
        timeout_graceful_shutdown=5,
        **options,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        _wait_until(lambda: server.started, thread, "uvicorn")
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def serve_asgi() -> Callable[..., contextlib.AbstractContextManager[str]]:
    """``with serve_asgi(app) as host:`` runs ``app`` under a real uvicorn server
    (h11, websockets, lifespan on) and yields ``"127.0.0.1:<port>"``."""
    return _uvicorn


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class PooledWSGIServer(WSGIServer):
    """wsgiref server whose requests run on a fixed pool of worker threads, reused
    from one request to the next (like gunicorn's gthread or waitress)."""

    request_queue_size = 512

    def __init__(self, *args: Any, workers: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="wsgi-worker")

    def process_request(self, request: Any, client_address: Any) -> None:
        self.pool.submit(self._handle, request, client_address)

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        finally:
            self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        self.pool.shutdown(wait=True)


@contextlib.contextmanager
def _wsgi(app: Any, *, workers: int = 8) -> Iterator[str]:
    server = PooledWSGIServer(("127.0.0.1", 0), _QuietHandler, workers=workers)
    server.set_app(app)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(15)
        server.server_close()


@pytest.fixture
def serve_wsgi() -> Callable[..., contextlib.AbstractContextManager[str]]:
    """``with serve_wsgi(app, workers=8) as host:`` serves a WSGI app from a wsgiref
    server whose worker threads are reused across requests."""
    return _wsgi


class Trickler:
    """An HTTP server on 127.0.0.1, run by asyncio in the test's own event loop,
    that answers each path of ``documents`` with that JSON document padded with
    4,000 spaces (still valid JSON), at once or, for a path in ``slow``, 100 bytes
    every 0.25 s (about 12 s in all): never long enough between two reads for a
    per-read timeout to fire. ``paths`` lists the paths asked, in order."""

    def __init__(self) -> None:
        self.documents: dict[str, Any] = {}
        self.slow: set[str] = set()
        self.paths: list[str] = []
        self._server: asyncio.Server | None = None
        self._answers: set[asyncio.Task[Any]] = set()

    def url(self, path: str) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}{path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)

    async def asked(self, count: int) -> None:
        """Wait until ``count`` requests have come (at most 10 s)."""
        deadline = time.monotonic() + 10
        while len(self.paths) < count:
            assert time.monotonic() < deadline, f"only {len(self.paths)} requests came"
            await asyncio.sleep(0.01)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._answers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            self.paths.append(path)
            body = json.dumps(self.documents[path]).encode() + b" " * 4000
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            )
            step = 100 if path in self.slow else len(body)
            for start in range(0, len(body), step):
                writer.write(body[start : start + step])
                await writer.drain()
                if step < len(body):
                    await asyncio.sleep(0.25)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client gave up
        finally:
            self._answers.discard(task)
            writer.close()

    async def close(self) -> None:
        """Stop serving and cut every answer under way."""
        answers = list(self._answers)
        for task in answers:
            task.cancel()
        await asyncio.gather(*answers, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def trickler() -> AsyncIterator[Trickler]:
    """A :class:`Trickler`, closed after the test."""
    server = Trickler()
    await server.start()
    try:
        yield server
    finally:
        await server.close()
