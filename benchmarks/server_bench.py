"""d2-server throughput: the poll path (``GET /v1/policy/bundle`` answered 304 and
200), event ingest, and a bare Starlette route served by the same process.

    make bench-server                                    # needs ApacheBench (`ab`)
    uv run --frozen --all-packages python benchmarks/server_bench.py --quick

One uvicorn process (one worker, the d2-server stack: uvicorn + Starlette + the
SQLite storage) serves both the D2 API and ``GET /bare`` (a Starlette route that
returns a constant body: the ceiling of the stack). The load generator is
ApacheBench (``ab -k -c 32``, keep-alive): a C program, so on a 2-core machine it
takes about one core and leaves the other to the server, and it is what the
measurements of issue 17 used. The four loads run interleaved, round after round,
against the same server process; each figure is the median over the rounds, and
each D2 figure is also given as a ratio to the bare route's median.

The server runs without an access log (each request would write a line to the
terminal, which costs the same on every route and measures the terminal). The
ingest load sends batches of ``EVENTS_PER_BATCH`` events with a rate limit high
enough never to refuse; events/s = requests/s x the batch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PERFORMANCE_MD = ROOT / "docs" / "performance.md"
BENCH_SECRET = "bench-only-secret-not-for-production-0123456789"
EVENTS_PER_BATCH = 50
MARKERS = {  # where --write-docs puts each database's table in performance.md
    "sqlite": ("<!-- bench-server:begin -->", "<!-- bench-server:end -->"),
    "postgresql": (
        "<!-- bench-server-postgresql:begin -->",
        "<!-- bench-server-postgresql:end -->",
    ),
}


def serve(db: str, port: int) -> None:
    """The server process: the D2 app and ``/bare`` in one uvicorn worker."""
    import uvicorn
    from d2.server import ControlPlane, ServerConfig, SQLStorage, create_app
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route
    from starlette.types import Receive, Scope, Send

    async def bare_route(request: Any) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    bare = Starlette(routes=[Route("/bare", bare_route, methods=["GET"])])
    plane = ControlPlane(
        SQLStorage(db, migrate=True), ServerConfig(ingest_burst=10**9, ingest_window=1.0)
    )
    d2 = create_app(plane)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/bare":
            await bare(scope, receive, send)
        else:
            await d2(scope, receive, send)  # lifespan too: the pruner runs as in production

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@dataclass(frozen=True)
class Setup:
    db: str
    runtime_token: str
    etag: str


def prepare(directory: str, url: str | None = None) -> Setup:
    """A database with one account, one app and one published policy: a SQLite file
    in ``directory``, or the PostgreSQL database ``url``."""
    from d2.server import ControlPlane, SQLStorage
    from d2.server.testing import DeviceKey

    db = url or os.path.join(directory, "bench.db")
    storage = SQLStorage(db, migrate=True)
    try:
        plane = ControlPlane(storage)
        plane.ensure_signing_key()
        _, app = plane.create_account("bench")
        runtime = plane.create_token(app, "runtime")
        developer = plane.authenticate("Bearer " + plane.create_token(app, "developer"))
        key = DeviceKey()
        plane.register_key(
            developer,
            key.registration,
        )
        roles = [
            {"role": f"role{i}", "permissions": [f"tool_{i}_{j}" for j in range(5)]}
            for i in range(20)
        ]
        document = {"metadata": {"name": "bench"}, "policies": roles}
        body = json.dumps(document, separators=(",", ":")).encode()
        new = plane.publish(
            developer,
            body,
            key_id=key.key_id,
            signature=key.sign(body),
            if_match=None,
            if_none_match="*",
        )
        return Setup(db, runtime, new.bundle.etag)
    finally:
        storage.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the server did not start")


_RPS = re.compile(r"Requests per second:\s+([0-9.]+)")
_FAILED = re.compile(r"Failed requests:\s+(\d+)")
_NON2XX = re.compile(r"Non-2xx responses:\s+(\d+)")


def ab(url: str, requests: int, concurrency: int, headers: list[str], post: str | None) -> float:
    """Requests per second of one ``ab`` run; refuses a run with failures."""
    cmd = ["ab", "-q", "-k", "-c", str(concurrency), "-n", str(requests)]
    for header in headers:
        cmd += ["-H", header]
    if post is not None:
        cmd += ["-p", post, "-T", "application/json"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    failed = _FAILED.search(out)
    if failed and int(failed.group(1)):
        raise RuntimeError(f"ab reported failed requests:\n{out}")
    match = _RPS.search(out)
    if match is None:
        raise RuntimeError(f"cannot read ab's output:\n{out}")
    return float(match.group(1))


def check_status(url: str, headers: dict[str, str], expected: int, body: bytes | None) -> None:
    import httpx

    r = httpx.request("POST" if body else "GET", url, headers=headers, content=body)
    if r.status_code != expected:
        raise RuntimeError(f"{url} answered {r.status_code}, expected {expected}: {r.text}")


def events_body(path: str) -> None:
    events = [
        {
            "event_type": "tool_decision",
            "payload": {"tool": f"tool_{i}", "allowed": i % 2 == 0},
            "occurred_at": "2026-12-07T05:00:00Z",
        }
        for i in range(EVENTS_PER_BATCH)
    ]
    with open(path, "w") as fh:
        json.dump({"events": events}, fh)


def render(medians: dict[str, float], rounds: int, requests: int, concurrency: int) -> str:
    bare = medians["bare"]
    rows = [
        ("bare Starlette route (`GET /bare`)", medians["bare"], "1.00x", ""),
        (
            "poll, 304 (`GET /v1/policy/bundle` + `If-None-Match`)",
            medians["304"],
            f"{medians['304'] / bare:.2f}x",
            "",
        ),
        (
            "poll, 200 (`GET /v1/policy/bundle`)",
            medians["200"],
            f"{medians['200'] / bare:.2f}x",
            "",
        ),
        (
            f"ingest (`POST /v1/events/ingest`, {EVENTS_PER_BATCH} events)",
            medians["ingest"],
            f"{medians['ingest'] / bare:.2f}x",
            f"{medians['ingest'] * EVENTS_PER_BATCH:,.0f}",
        ),
    ]
    lines = [
        f"`ab -k -c {concurrency} -n {requests}`, one uvicorn worker, median of {rounds} "
        "interleaved rounds against the same server process:",
        "",
        "| load | requests/s | vs bare route | events/s |",
        "|:--|--:|--:|--:|",
    ]
    lines += [f"| {name} | {rps:,.0f} | {ratio} | {extra} |" for name, rps, ratio, extra in rows]
    verdict = "met" if medians["304"] / bare >= 0.5 else "MISSED"
    lines += ["", f"Target: the 304 path at >= 0.5x the bare route: {verdict}."]
    return "\n".join(lines)


def write_docs(table: str, database: str) -> None:
    begin_marker, end_marker = MARKERS[database]
    text = PERFORMANCE_MD.read_text()
    begin, end = text.find(begin_marker), text.find(end_marker)
    if begin < 0 or end < 0:
        raise RuntimeError(f"{PERFORMANCE_MD} has no {begin_marker} ... {end_marker} markers")
    new = text[: begin + len(begin_marker)] + "\n" + table + "\n" + text[end:]
    PERFORMANCE_MD.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--serve", nargs=2, metavar=("DB", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smoke run: one short round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="put the table into docs/performance.md (the section of --database)",
    )
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the server's database: a SQLite file, or a throwaway PostgreSQL cluster "
        "(initdb + pg_ctl of the Debian package postgresql) on loopback",
    )
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return 0
    if shutil.which("ab") is None:
        print("bench-server needs ApacheBench: apt-get install -y apache2-utils", file=sys.stderr)
        return 2
    rounds, requests = (1, 200) if args.quick else (args.rounds, args.requests)
    os.environ.setdefault("D2_SERVER_SECRET", BENCH_SECRET)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="d2-bench-server-"))
        url = None
        if args.database == "postgresql":
            from d2.server.testing import postgres_server

            url = stack.enter_context(postgres_server())
        setup = prepare(tmp, url)
        body = os.path.join(tmp, "events.json")
        events_body(body)
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", setup.db, str(port)]
        )
        try:
            wait_ready(port, proc)
            base = f"http://127.0.0.1:{port}"
            auth = f"Authorization: Bearer {setup.runtime_token}"
            loads: dict[str, tuple[str, list[str], str | None, int]] = {
                "bare": (base + "/bare", [], None, 200),
                "304": (
                    base + "/v1/policy/bundle",
                    [auth, f"If-None-Match: {setup.etag}"],
                    None,
                    304,
                ),
                "200": (base + "/v1/policy/bundle", [auth], None, 200),
                "ingest": (base + "/v1/events/ingest", [auth], body, 202),
            }
            for url, headers, post, status in loads.values():
                hdrs = dict(h.split(": ", 1) for h in headers)
                if post:
                    hdrs["Content-Type"] = "application/json"
                check_status(url, hdrs, status, Path(post).read_bytes() if post else None)
            results: dict[str, list[float]] = {name: [] for name in loads}
            for url, headers, post, _ in loads.values():  # warm-up
                ab(url, min(requests, 1000), args.concurrency, headers, post)
            for i in range(rounds):
                for name, (url, headers, post, _) in loads.items():
                    results[name].append(ab(url, requests, args.concurrency, headers, post))
                print(
                    f"round {i + 1}/{rounds}: "
                    + ", ".join(f"{n} {v[-1]:,.0f}/s" for n, v in results.items()),
                    file=sys.stderr,
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    medians = {name: statistics.median(values) for name, values in results.items()}
    table = render(medians, rounds, requests, args.concurrency)
    if args.database == "postgresql":
        table = table.replace("one uvicorn worker,", "one uvicorn worker on PostgreSQL,", 1)
    print(table)
    if args.write_docs:
        write_docs(table, args.database)
    return 0


if __name__ == "__main__":
    sys.exit(main())
