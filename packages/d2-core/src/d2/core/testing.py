"""Helpers for test suites of apps that use D2 (and D2's own).

``policy_document(*entries, **metadata)`` builds a valid document with an
``expires`` a few days ahead (local policies must expire within 7 days);
``reset()`` puts D2 back to a fresh process's state: every instance shut down, no
user, no telemetry hooks. Typical pytest use::

    @pytest.fixture(autouse=True)
    def _d2():
        yield
        d2.core.testing.reset()

``redis_server()`` runs a throwaway ``redis-server`` (Debian package
``redis-server``) on a free loopback port, for tests of the Redis store.
``webhook_receiver()`` runs a loopback HTTP server that records what an approval
webhook posts, answering as a test scripts it (errors, slowness, a hang).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess

from .context import clear_user_context
from .manager import shutdown_all_rbac

__all__ = [
    "Clock",
    "RedisServer",
    "Reply",
    "WebhookReceiver",
    "controlled_clock",
    "expires_in",
    "isolate",
    "policy_document",
    "redis_server",
    "reset",
    "webhook_receiver",
]


def expires_in(seconds: float = 3 * 86400) -> str:
    """An RFC 3339 UTC time ``seconds`` from now."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))


def policy_document(*entries: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    """A valid policy document with ``entries`` as its ``policies``; ``metadata``
    adds to (or overrides) ``name: test-app`` and an ``expires`` three days ahead."""
    return {
        "metadata": {"name": "test-app", "expires": expires_in(), **metadata},
        "policies": list(entries),
    }


def reset() -> None:
    """Shut every instance down, clear the user, detach observers and timers."""
    from .evaluate import _evaluators

    shutdown_all_rbac()
    clear_user_context()
    for evaluator in _evaluators.values():
        evaluator.set_log(None)
        evaluator._set_observers(())
        evaluator.set_timer(None)
        evaluator.store = None
        evaluator.private_store = None
        evaluator.webhook = None


def isolate(monkeypatch: Any, directory: str | os.PathLike[str]) -> None:
    """For one test (``monkeypatch`` is pytest's): no ``D2_*`` variables,
    ``D2_SILENT=1``, ``HOME`` and ``XDG_CONFIG_HOME`` inside ``directory`` and the
    working directory there, so no policy file or state of the machine is read."""
    for key in list(os.environ):
        if key.startswith("D2_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("D2_SILENT", "1")
    monkeypatch.setenv("HOME", os.path.join(directory, "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", os.path.join(directory, "xdg"))
    monkeypatch.chdir(directory)
    clear_user_context()


class RedisServer:
    """A ``redis-server`` process on ``127.0.0.1:port`` without persistence (see
    :func:`redis_server`). ``url`` is ``redis://127.0.0.1:port/0``; :meth:`stop`
    and :meth:`start` take it down and bring it back on the same port."""

    def __init__(self, executable: str, port: int, directory: str) -> None:
        self.executable = executable
        self.port = port
        self.directory = directory
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def _ping(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _log(self) -> str:
        try:
            with open(os.path.join(self.directory, "redis.log"), encoding="utf-8") as file:
                return file.read()[-2000:]
        except OSError:
            return ""

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (no-op when running) and wait until it answers PING."""
        import subprocess

        if self.running:
            return
        self._process = subprocess.Popen(
            [
                self.executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                self.directory,
                "--logfile",
                os.path.join(self.directory, "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not self._ping():
            code = self._process.poll()
            if code is not None or time.monotonic() > deadline:
                self.stop()
                why = f"exited with code {code}" if code is not None else "did not answer"
                raise RuntimeError(
                    f"redis-server on port {self.port} {why} within {timeout:g}s; "
                    f"its log:\n{self._log()}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """Terminate the server and wait for it (no-op when stopped)."""
        import subprocess

        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __repr__(self) -> str:
        return f"<RedisServer {self.url} {'running' if self.running else 'stopped'}>"


@contextmanager
def redis_server(executable: str | None = None) -> Iterator[RedisServer]:
    """Run ``redis-server`` (from ``PATH`` unless ``executable`` is given) on a free
    ``127.0.0.1`` port with no persistence, in a temporary directory; stop it on
    exit. Raises :class:`RuntimeError` when ``redis-server`` is not installed."""
    import shutil
    import socket
    import tempfile

    found = executable or shutil.which("redis-server")
    if found is None:
        raise RuntimeError(
            "redis-server is not on PATH: install the Debian/Ubuntu package "
            "redis-server (apt-get install redis-server) or Redis from redis.io"
        )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with tempfile.TemporaryDirectory(prefix="d2-redis-") as directory:
        server = RedisServer(found, port, directory)
        server.start()
        try:
            yield server
        finally:
            server.stop()


class Clock:
    """A clock tests move by hand (see :func:`controlled_clock`): ``now`` is Unix
    seconds; :meth:`advance` moves it forward."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` ahead; returns the new time."""
        self.now += seconds
        return self.now


def controlled_clock(monkeypatch: Any, start: float | None = None) -> Clock:
    """Make D2's decisions (policy expiry, budget windows, approval ttl) read a
    :class:`Clock` for one test (``monkeypatch`` is pytest's). ``start`` defaults
    to the real time now."""
    from . import evaluate

    clock = Clock(time.time() if start is None else start)
    monkeypatch.setattr(evaluate, "_now", clock)
    return clock


class Reply:
    """How a :class:`WebhookReceiver` answers one POST: ``status`` and
    ``headers`` after ``delay`` seconds; ``hang``: never answer (until the
    receiver closes). ``body``: the answer's body (default ``ok``), or a function
    of the request's path and query giving it (a receiver that echoes them)."""

    __slots__ = ("body", "delay", "hang", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        *,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        hang: bool = False,
        body: bytes | Callable[[str], bytes] = b"ok",
    ) -> None:
        self.status = status
        self.headers = dict(headers or {})
        self.delay = delay
        self.hang = hang
        self.body = body


class WebhookReceiver:
    """A loopback HTTP server recording the JSON bodies POSTed to it (see
    :func:`webhook_receiver`). ``url``: where to point ``approval_webhook``;
    ``events``: the bodies received, parsed, in order; ``hits``: ``(monotonic
    time, path, body)`` of every POST, answered or not, and ``headers`` its
    headers. ``replies``: how the next
    POSTs are answered, consumed in order (then ``200``)."""

    def __init__(self, path: str = "/hook") -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.events: list[dict[str, Any]] = []
        self.hits: list[tuple[float, str, dict[str, Any]]] = []
        self.headers: list[dict[str, str]] = []
        self.replies: list[Reply] = []
        self._released = threading.Event()
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(size) or b"null")
                with receiver._arrived:
                    receiver.hits.append((time.monotonic(), self.path, body))
                    receiver.headers.append(dict(self.headers.items()))
                    reply = receiver.replies.pop(0) if receiver.replies else Reply()
                    receiver._arrived.notify_all()
                if reply.hang:
                    receiver._released.wait()
                    return
                if reply.delay:
                    time.sleep(reply.delay)
                if 200 <= reply.status < 300:
                    with receiver._arrived:
                        receiver.events.append(body)
                        receiver._arrived.notify_all()
                answer = reply.body(self.path) if callable(reply.body) else reply.body
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}{path}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="d2-webhook-receiver", daemon=True
        )
        self._thread.start()

    def wait_for(self, count: int, timeout: float = 10.0, *, hits: bool = False) -> bool:
        """Wait until ``count`` events were taken (``hits``: POSTs arrived)."""
        end = time.monotonic() + timeout
        with self._arrived:
            while len(self.hits if hits else self.events) < count:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._arrived.wait(left)
        return True

    def close(self) -> None:
        """Release hanging answers and stop the server."""
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def __repr__(self) -> str:
        return f"<WebhookReceiver {self.url} events={len(self.events)}>"


@contextmanager
def webhook_receiver(path: str = "/hook") -> Iterator[WebhookReceiver]:
    """Run a :class:`WebhookReceiver` on a free ``127.0.0.1`` port; stop it on exit."""
    receiver = WebhookReceiver(path)
    try:
        yield receiver
    finally:
        receiver.close()
