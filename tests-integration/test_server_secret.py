"""``D2_SERVER_SECRET`` end to end, through the ``d2-server`` command: keys created by
``init`` with a secret are stored encrypted, ``serve`` with the same secret signs,
and ``serve`` with a wrong or missing secret exits before it accepts a request,
naming the variable."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

EXE = Path(sys.executable).parent / "d2-server"
SECRET = "an-end-to-end-secret-of-enough-length-0123456789"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("D2_")}
    return {**clean, "D2_SERVER_DB": str(tmp_path / "d2-server.db")}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _init(env: dict[str, str]) -> str:
    out = subprocess.run(
        [str(EXE), "init", "--json"],
        env={**env, "D2_SERVER_SECRET": SECRET},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return str(json.loads(out)["runtime_token"])


def _serve(
    env: dict[str, str], *options: str, log_level: str = "warning"
) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [str(EXE), "serve", "--port", str(port), "--log-level", log_level, *options],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, f"http://127.0.0.1:{port}"


def test_init_with_a_secret_stores_no_private_key_in_clear(env: dict[str, str]) -> None:
    _init(env)
    with sqlite3.connect(env["D2_SERVER_DB"]) as conn:
        (stored,) = conn.execute("SELECT private_pem FROM signing_keys").fetchone()
    assert bytes(stored).startswith(b"D2K2") and b"PRIVATE KEY" not in bytes(stored)


def test_serve_with_the_secret_answers(env: dict[str, str]) -> None:
    token = _init(env)
    proc, base = _serve({**env, "D2_SERVER_SECRET": SECRET})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"{base}/healthz")
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "d2-server serve did not start"
                time.sleep(0.05)
        assert (r.status_code, r.json()) == (200, {"status": "ok"})
        me = httpx.get(f"{base}/v1/accounts/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # also closes the stderr pipe


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("another-secret-of-enough-length-but-the-wrong-one", "d2-server: D2_SERVER_SECRET does"),
        (None, "d2-server: the signing keys of this database are encrypted and D2_SERVER_SECRET"),
        ("a" * 48, "d2-server: D2_SERVER_SECRET is too weak"),
    ],
)
def test_serve_with_a_wrong_or_missing_secret_exits_3_before_listening(
    env: dict[str, str], secret: str | None, message: str, workers: str
) -> None:
    """The same refusal and exit status (3, uvicorn's startup failure) whatever the
    number of workers: with several, the supervising process checks the keys before
    it binds the port (it used to listen, let the workers fail, and exit 0)."""
    _init(env)
    run_env = dict(env) if secret is None else {**env, "D2_SERVER_SECRET": secret}
    proc, base = _serve(run_env, "--workers", workers, log_level="info")
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, stderr
    assert message in stderr
    assert "Uvicorn running on" not in stderr and "Started" not in stderr  # never listened
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/healthz")
