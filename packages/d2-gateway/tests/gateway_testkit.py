"""Helpers shared by the gateway tests: real upstream MCP servers from the package
index (mcp-server-time, mcp-server-git, mcp-server-fetch), a real gateway on
uvicorn (127.0.0.1, a free port) and the real ``mcp`` client."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from d2.core.testing import expires_in

BIN = Path(sys.executable).parent


def upstream_command(name: str) -> str:
    """The console script of a locked upstream server (mcp-server-time, ...)."""
    found = BIN / name
    if not found.exists():
        pytest.skip(f"{name} is not installed (uv sync --all-packages installs it)")
    return str(found)


def time_gateway(policy: Path, user: str, roles: str, env: dict[str, str] | None = None) -> Any:
    """``d2-gateway serve --stdio`` in front of mcp-server-time as ``user`` with
    ``roles`` (comma-separated), for the real ``mcp`` client to start."""
    from mcp import StdioServerParameters

    return StdioServerParameters(
        command=str(BIN / "d2-gateway"),
        args=[
            "serve", "--stdio", "--policy", str(policy), "--user", user, "--roles", roles,
            "--upstream", f"time=stdio:{upstream_command('mcp-server-time')}",
        ],
        env={"D2_SILENT": "1", "PYTHONWARNINGS": "ignore", **(env or {})},
    )  # fmt: skip


def write_policy(path: Path, *entries: dict[str, Any], **metadata: Any) -> Path:
    """Write a valid local policy (expires in 3 days) and return its path."""
    doc = {"metadata": {"expires": expires_in(), **metadata}, "policies": list(entries)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)
    return path


def make_repo(repo: Path) -> Path:
    """Make ``repo`` a git repository with one commit (the git upstream's world)."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    subprocess.run([git, "init", "-q", str(repo)], check=True, env=env)
    (repo / "secret.txt").write_text("private roadmap\n")
    subprocess.run([git, "-C", str(repo), "add", "."], check=True, env=env)
    subprocess.run(
        [git, "-C", str(repo), "commit", "-q", "-m", "private roadmap"], check=True, env=env
    )
    return repo


class Recorder:
    """A loopback HTTP server that records every request: what a fetch tool
    would reach. Tests assert it was never reached."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"leaked")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class HeaderIdentity:
    """TEST ONLY: the identity layer a bearer verifier will be, reduced to a
    header ``x-test-user: USER;ROLE1,ROLE2`` (no header: no identity)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = dict(scope)
            scope.pop("d2.user", None)
            for key, value in scope.get("headers", []):
                if key == b"x-test-user":
                    user, _, roles = value.decode().partition(";")
                    scope["d2.user"] = (user, tuple(r for r in roles.split(",") if r))
        await self.app(scope, receive, send)


class Served:
    """A gateway ASGI app served by a real uvicorn in a thread."""

    def __init__(self, asgi: Any) -> None:
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(
            asgi, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the gateway did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@asynccontextmanager
async def client_for(
    url: str,
    user: str | None,
    roles: str = "",
    message_handler: Any = None,
    mode: str = "legacy",
) -> AsyncIterator[Any]:
    """The real mcp client over Streamable HTTP, as ``user`` (``None``: no identity)."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    headers = {} if user is None else {"x-test-user": f"{user};{roles}"}
    async with create_mcp_http_client(headers=headers) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(
            transport, mode=mode, cache=None, message_handler=message_handler
        ) as client:
            yield client


Connect = Callable[..., Any]


@contextmanager
def gateway_listening(
    where: Path, args: list[str], env: dict[str, str] | None = None
) -> Iterator[str]:
    """``d2-gateway serve --listen 127.0.0.1:<free port> ARGS`` as a subprocess (no
    ``D2_*`` variable of this process, plus ``env``); yields its ``/mcp`` URL once
    it answers, and stops it at the end. Its stderr goes to ``where/gateway.log``."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("D2_")}
    log_path = where / f"gateway-{port}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                str(BIN / "d2-gateway"),
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                *args,
            ],
            env={**clean, "D2_SILENT": "1", **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        url = f"http://127.0.0.1:{port}/mcp"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        said = log_path.read_text()
                        raise RuntimeError(f"the gateway did not start: {said}") from None
                    time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


@contextmanager
def served_gateway(policy: Path, specs: list[Any], **options: Any) -> Iterator[str]:
    """A gateway over ``specs`` (``UpstreamSpec``) deciding with the local policy
    file ``policy``, served by a real uvicorn behind :class:`HeaderIdentity`;
    yields its ``/mcp`` URL."""
    from d2.core import configure_rbac_sync
    from d2.core.local import LocalFileSource
    from d2.core.testing import reset
    from d2.gateway import Gateway
    from d2.gateway.http import http_app

    reset()
    configure_rbac_sync(source=LocalFileSource(policy, poll_interval=0.1))
    served = Served(HeaderIdentity(http_app(Gateway(specs, **options), wrap=None)))
    try:
        yield served.url
    finally:
        served.close()
        reset()


async def call_listed(
    url: str,
    name: str,
    arguments: dict[str, Any] | None = None,
    *,
    tools: int = 1,
    roles: str = "dev",
) -> Any:
    """As ``alice`` (``roles``): wait until at least ``tools`` tools are listed,
    then call ``name``."""
    import anyio

    async with client_for(url, "alice", roles) as client:
        with anyio.fail_after(20):
            while len((await client.list_tools()).tools) < tools:
                await anyio.sleep(0.05)
        return await client.call_tool(name, arguments or {})


def dumped(result: Any) -> str:
    """A result as the client receives it (JSON, by alias)."""
    return str(result.model_dump_json(by_alias=True))


def act_as_alice() -> None:
    """For in-process ``guard_server`` tests: the SDK's auth context holds an
    access token of ``alice`` with role ``dev``."""
    from mcp.server.auth.middleware.auth_context import auth_context_var
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
    from mcp.server.auth.provider import AccessToken

    token = AccessToken(
        token="t", client_id="agent", scopes=[], subject="alice", claims={"roles": ["dev"]}
    )
    auth_context_var.set(AuthenticatedUser(token))


def identify(token: Any) -> tuple[str, list[str]] | None:
    """``guard_server``'s ``identify``: the token's subject and its ``roles`` claim."""
    if token is None or token.subject is None:
        return None
    return token.subject, (token.claims or {}).get("roles", [])
