"""Shared fixtures: every test starts with a fresh in-memory policy, no user set and
no D2_* variables; ``serve_asgi`` / ``serve_wsgi`` run a real server on a free
127.0.0.1 port in a background thread.

The policy: ``admin`` may call every tool, ``reader`` only ``notes.read``."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
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
