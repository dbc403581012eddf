"""``d2-server serve --workers N`` when a worker cannot start (after the supervising
process's own checks passed): uvicorn's supervisor stops every worker and the
command exits with status 3, instead of exiting 0 (a failed rollout recorded as a
clean stop: the seventh review) or restarting the worker forever.

The real command, real uvicorn workers; only the cause of the failure is injected,
by a ``sitecustomize`` module that every process of the command imports (the
supervising process never builds a worker's application, so it is not affected)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

EXE = Path(sys.executable).parent / "d2-server"
SECRET = "Kp2-workers-test-secret-0123456789abcdefghijXY"
pytestmark = pytest.mark.skipif(not EXE.exists(), reason="the d2-server script is not installed")

_HOOK = textwrap.dedent(
    """
    import contextlib
    import os

    _MODE = os.environ.get("D2_TEST_WORKER_FAILURE")
    if _MODE:
        import d2.server.app as _app_module

        _original = _app_module.create_app

        def create_app(plane, **options):
            if _MODE == "factory":
                raise RuntimeError("injected: this worker cannot build its application")
            app = _original(plane, **options)

            @contextlib.asynccontextmanager
            async def failing(app):
                raise RuntimeError("injected: this worker's startup fails")
                yield

            app.router.lifespan_context = failing
            return app

        _app_module.create_app = create_app
    """
)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_HOOK)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("D2_")}
    path = os.pathsep.join(p for p in (str(hook), clean.get("PYTHONPATH", "")) if p)
    return {
        **clean,
        "PYTHONPATH": path,
        "D2_SERVER_DB": str(tmp_path / "d2-server.db"),
        "D2_SERVER_SECRET": SECRET,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("failure", ["lifespan", "factory"])
def test_a_worker_that_cannot_start_stops_serve_with_status_3(
    env: dict[str, str], failure: str
) -> None:
    init = subprocess.run(
        [str(EXE), "init", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    assert json.loads(init.stdout)["app_name"] == "default"
    port = _free_port()
    proc = subprocess.Popen(
        [str(EXE), "serve", "--port", str(port), "--workers", "2"],
        env={**env, "D2_TEST_WORKER_FAILURE": failure},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = proc.communicate(timeout=60)  # a restart loop never ends: fails here
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "injected" in stderr  # the workers' own error is logged
    assert proc.returncode == 3, stderr
    assert "d2-server: a worker process could not start" in stderr
    with pytest.raises(httpx.TransportError):  # every worker stopped
        httpx.get(f"http://127.0.0.1:{port}/healthz")
