"""The d2-server command as docs/self-hosting.md shows it: init, serve, token
create and rotate-key against a running server, in subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from d2.server import SQLStorage
from d2.server.cli import parse_args
from d2.server.testing import DeviceKey

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "self-hosting.md"
EXE = Path(sys.executable).parent / "d2-server"
pytestmark = pytest.mark.skipif(not EXE.exists(), reason="the d2-server script is not installed")


def _words(line: str) -> list[str]:
    """The command's words, up to a shell redirection or pipe (``< token.txt``)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    ends = [i for i, word in enumerate(words) if word in {"<", ">", ">>", "|", "&&", ";"}]
    return words[: ends[0]] if ends else words


def _doc_commands() -> list[list[str]]:
    blocks = re.findall(r"^```bash\n(.*?)^```", DOC.read_text(), re.M | re.S)
    return [
        _words(line.split("#", 1)[0])
        for block in blocks
        for line in block.splitlines()
        if line.startswith("d2-server ")
    ]


def test_every_documented_command_parses() -> None:
    commands = _doc_commands()
    assert {c[1] for c in commands} == {"init", "serve", "token", "rotate-key", "migrate"}
    for command in commands:
        parse_args(command[1:])  # raises on a usage error


def test_init_with_an_invalid_app_name_creates_no_database(env: dict[str, str]) -> None:
    proc = subprocess.run(
        [str(EXE), "init", "--app-name", "bad:name"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1 and "invalid app name" in proc.stderr
    assert not Path(env["D2_SERVER_DB"]).exists()
    assert json.loads(_run("init", "--app-name", "fixed", "--json", env=env))["app_name"] == "fixed"


def _run(*args: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [str(EXE), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("D2_")}
    return {**clean, "D2_SERVER_DB": str(tmp_path / "d2-server.db")}


@contextlib.contextmanager
def _serving(env: dict[str, str], *options: str) -> Iterator[str]:
    """``d2-server serve`` with ``options`` in a subprocess; yields its base URL."""
    with _serving_process(env, *options) as (base, _proc):
        yield base


@contextlib.contextmanager
def _serving_process(
    env: dict[str, str], *options: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """:func:`_serving`, also yielding the process."""
    port = _free_port()
    proc = subprocess.Popen(
        [str(EXE), "serve", "--port", str(port), "--log-level", "warning", *options],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "d2-server serve did not start"
            time.sleep(0.05)
        yield base, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            # uvicorn shuts down gracefully, then re-raises the signal it caught
            assert proc.wait(timeout=15) in (0, -signal.SIGTERM)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()


@pytest.fixture
def served(env: dict[str, str]) -> Iterator[tuple[str, dict[str, str]]]:
    tokens = json.loads(_run("init", "--app-name", "support-bot", "--json", env=env))
    with _serving(env, "--poll-seconds", "7") as base:
        yield base, tokens


def test_init_serve_publish_token_and_rotate_as_documented(
    served: tuple[str, dict[str, str]], env: dict[str, str]
) -> None:
    base, tokens = served
    runtime = {"Authorization": f"Bearer {tokens['runtime_token']}"}
    developer = {"Authorization": f"Bearer {tokens['developer_token']}"}
    with httpx.Client(base_url=base) as http:
        me = http.get("/v1/accounts/me", headers=runtime).json()
        assert me["app_name"] == "support-bot" and me["poll_seconds"] == 7

        key = DeviceKey("laptop")
        registration = {
            "key_id": "laptop",
            "algorithm": "Ed25519",
            "public_key": key.public_key_b64,
        }
        assert http.post("/v1/keys", json=registration, headers=developer).status_code == 201
        body = json.dumps(
            {"metadata": {"name": "support-bot"}, "policies": [{"role": "r", "permissions": ["t"]}]}
        ).encode()
        signed = {"X-D2-Key-Id": "laptop", "X-D2-Signature": key.sign(body), "If-None-Match": "*"}
        r = http.post("/v1/policy/publish", content=body, headers={**developer, **signed})
        assert r.status_code == 201 and r.json()["version"] == 1

        # a token created while the server runs works at once
        out = json.loads(_run("token", "create", "--scope", "runtime", "--json", env=env))
        fresh = {"Authorization": f"Bearer {out['token']}"}
        bundle = http.get("/v1/policy/bundle", headers=fresh)
        assert bundle.status_code == 200 and bundle.headers["x-d2-poll-seconds"] == "7"
        old_kid = jwt.get_unverified_header(bundle.json()["jws"])["kid"]

        # a key rotated while the server runs is used for the next signature
        assert "RS256" in _run("rotate-key", "--alg", "RS256", "--overlap", "60", env=env)
        keys = http.get("/.well-known/jwks.json").json()["keys"]
        assert len(keys) == 2 and keys[1]["kid"] == old_kid
        header = jwt.get_unverified_header(
            http.get("/v1/policy/bundle", headers=fresh).json()["jws"]
        )
        assert header["alg"] == "RS256" and header["jwks_refresh"] is True


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_prunes_expired_events_at_startup_and_keeps_recent_ones(
    env: dict[str, str], workers: str
) -> None:
    tokens = json.loads(_run("init", "--app-name", "support-bot", "--json", env=env))
    storage = SQLStorage(env["D2_SERVER_DB"])
    try:
        (account,) = storage.accounts()
        (app,) = storage.apps(account.id)
        event = ("decision", '{"tool":"t"}', "2025-01-01T00:00:00Z")
        storage.add_events(app.id, "h", [event] * 50, time.time() - 3 * 86400)
        storage.add_events(app.id, "h", [event] * 4, time.time() - 3600)
    finally:
        storage.close()
    options = ("--events-retention", "2", "--events-max-per-app", "10", "--workers", workers)
    with _serving(env, *options) as base:
        deadline = time.monotonic() + 30
        while True:
            storage = SQLStorage(env["D2_SERVER_DB"])
            try:
                if storage.event_usage(app.id).events == 4:
                    break
            finally:
                storage.close()
            assert time.monotonic() < deadline, "the startup pass did not prune"
            time.sleep(0.05)
        # the cap given on the command line holds for uploads too
        runtime = {"Authorization": f"Bearer {tokens['runtime_token']}"}
        item = {"event_type": "decision", "payload": {"tool": "t"}, "occurred_at": event[2]}
        body = {"events": [item] * 3}
        for _ in range(5):
            r = httpx.post(f"{base}/v1/events/ingest", json=body, headers=runtime)
            assert r.status_code == 202
    storage = SQLStorage(env["D2_SERVER_DB"])
    try:
        assert storage.event_usage(app.id).events == 10
    finally:
        storage.close()


def _workers(pid: int) -> int:
    """How many multiprocessing workers the process ``pid`` has started."""
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children |= {int(p) for p in (task / "children").read_text().split()}
    count = 0
    for child in children:
        with contextlib.suppress(OSError):
            count += b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    return count


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_serve_with_two_workers_answers_from_one_database(env: dict[str, str]) -> None:
    tokens = json.loads(_run("init", "--app-name", "support-bot", "--json", env=env))
    developer = {"Authorization": f"Bearer {tokens['developer_token']}"}
    options = ("--workers", "2", "--poll-seconds", "5")
    with _serving_process(env, *options) as (base, proc), httpx.Client(base_url=base) as http:
        deadline = time.monotonic() + 30
        while _workers(proc.pid) < 2:  # uvicorn starts both workers
            assert time.monotonic() < deadline, "two workers did not start"
            time.sleep(0.05)
        assert _workers(proc.pid) == 2
        assert http.get("/healthz").json() == {"status": "ok"}
        key = DeviceKey("laptop")
        registration = {
            "key_id": "laptop",
            "algorithm": "Ed25519",
            "public_key": key.public_key_b64,
        }
        assert http.post("/v1/keys", json=registration, headers=developer).status_code == 201
        body = json.dumps(
            {"metadata": {"name": "support-bot"}, "policies": [{"role": "r", "permissions": ["t"]}]}
        ).encode()
        signed = {"X-D2-Key-Id": "laptop", "X-D2-Signature": key.sign(body), "If-None-Match": "*"}
        r = http.post("/v1/policy/publish", content=body, headers={**developer, **signed})
        assert r.status_code == 201
        runtime = {"Authorization": f"Bearer {tokens['runtime_token']}"}
        for _ in range(8):  # new connections: both workers serve the published version
            with httpx.Client(base_url=base) as fresh:
                bundle = fresh.get("/v1/policy/bundle", headers=runtime)
            assert bundle.status_code == 200 and bundle.json()["version"] == 1
            assert bundle.headers["x-d2-poll-seconds"] == "5"  # the settings reached it
