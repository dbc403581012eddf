"""``d2 approvals serve``: the inbox on its own, in another process than the app,
the two sharing a real redis-server. Approvers sign in with an RS256 bearer JWT
verified against a JWKS served by uvicorn on 127.0.0.1; without a valid token
every page is 401. The app (this test process) holds a refund, the approver
approves it in the served inbox, and the app's identical call runs once."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from d2.asgi.testing import TokenIssuer
from d2.core import ApprovalRequiredError, configure_rbac_sync, d2_guard
from d2.core import set_user as as_user
from d2.core.testing import expires_in, redis_server

REQUIRE_REDIS = os.environ.get("D2_REQUIRE_REDIS") == "1"
ISSUER = "https://issuer.test.invalid/"
RUNS: list[str] = []


@d2_guard("payments.refund")
def refund(order_id: str, amount: int) -> str:
    RUNS.append(order_id)
    return f"refunded {amount} on {order_id}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    if shutil.which("redis-server") is None:
        message = "needs redis-server (Debian package redis-server)"
        if REQUIRE_REDIS:
            pytest.fail(message)
        pytest.skip(message)
    with redis_server() as server:
        yield server.url


@pytest.fixture(scope="module")
def idp() -> Iterator[tuple[TokenIssuer, str]]:
    issuer = TokenIssuer(audience="refund-inbox", issuer=ISSUER)
    with serve_in_thread(issuer.jwks_app()) as url:
        yield issuer, f"{url}/.well-known/jwks.json"


@pytest.fixture
def inbox(
    redis_url: str, idp: tuple[TokenIssuer, str], tmp_path: Path
) -> Iterator[tuple[str, TokenIssuer]]:
    """The app's policy on the shared Redis (this process), and ``d2 approvals
    serve`` in another process on the same Redis; yields the inbox's URL."""
    issuer, jwks = idp
    name = f"refund-desk-{tmp_path.name}"
    policy = tmp_path / "policy.json"
    document = {
        "metadata": {"name": name, "expires": expires_in()},
        "policies": [
            {
                "role": "agent",
                "permissions": [
                    {"tool": "payments.refund", "approval": {"approvers": ["finance_lead"]}}
                ],
            },
            {"role": "finance_lead", "permissions": []},
        ],
    }
    policy.write_text(json.dumps(document))
    configure_rbac_sync(source=str(policy), store=redis_url)
    RUNS.clear()
    with serve_inbox(redis_url, jwks, policy) as url:
        yield url, issuer


@contextlib.contextmanager
def serve_inbox(
    redis_url: str, jwks: str | None, policy: Path, *idp: str, **env_extra: str
) -> Iterator[str]:
    """``d2 approvals serve`` in another process (identity from ``jwks``, or the
    options ``idp``); yields its URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("D2_")}
    env.update(D2_SILENT="1", D2_STORE_URL=redis_url, D2_POLICY_FILE=str(policy), **env_extra)
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "d2", "approvals", "serve",
            "--listen", f"127.0.0.1:{port}",
            "--audience", "refund-inbox",
            *(idp or ("--jwks-url", str(jwks), "--issuer", ISSUER)),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                httpx.get(url + "/", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the inbox did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=15)  # reads and closes its pipes
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=5)


def hold(order: str) -> str:
    as_user("agent-7", roles=["agent"])
    with pytest.raises(ApprovalRequiredError) as info:
        refund(order, 250)
    return str(info.value.request.id)


def signed_in(issuer: TokenIssuer, user: str, roles: list[str], **claims: Any) -> httpx.Client:
    token = issuer.token(user, roles, **claims)
    return httpx.Client(headers={"authorization": f"Bearer {token}"}, timeout=10)


def test_the_served_inbox_decides_for_an_app_in_another_process(
    inbox: tuple[str, TokenIssuer],
) -> None:
    url, issuer = inbox
    request_id = hold("o_2")
    with signed_in(issuer, "dana", ["finance_lead"]) as dana:
        listing = dana.get(url + "/")
        assert listing.status_code == 200 and request_id in listing.text
        assert "signed in as <strong>dana</strong>" in listing.text
        page = dana.get(f"{url}/requests/{request_id}")
        token = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
        assert page.status_code == 200 and token is not None
        done = dana.post(
            f"{url}/requests/{request_id}",
            data={"csrf": token.group(1), "decision": "approve", "comment": "fine"},
        )
        assert done.status_code == 303
        assert (
            "Approved</span> by <strong>dana</strong>"
            in dana.get(url + done.headers["location"]).text
        )
    as_user("agent-7", roles=["agent"])
    assert refund("o_2", 250) == "refunded 250 on o_2"  # this process, once
    with pytest.raises(ApprovalRequiredError):
        refund("o_2", 250)
    assert RUNS == ["o_2"]


def test_without_a_valid_token_every_page_is_401(inbox: tuple[str, TokenIssuer]) -> None:
    url, issuer = inbox
    request_id = hold("o_3")
    forged = TokenIssuer(audience="refund-inbox", issuer=ISSUER)  # same kid, another key
    for headers in (
        {},
        {"x-d2-user": "dana", "x-d2-roles": "finance_lead"},  # headers mean nothing here
        {"authorization": "Bearer " + issuer.token("dana", ["finance_lead"], expires_in=-300)},
        {"authorization": "Bearer " + issuer.token("dana", ["finance_lead"], audience="other")},
        {
            "authorization": "Bearer "
            + issuer.token("dana", ["finance_lead"], issuer="https://x.invalid/")
        },
        {"authorization": "Bearer " + forged.token("dana", ["finance_lead"])},
    ):
        for path in ("/", f"/requests/{request_id}"):
            response = httpx.get(url + path, headers=headers, timeout=10)
            assert response.status_code == 401, (headers, path)
            assert response.headers["www-authenticate"] == 'Bearer realm="d2-approvals"'
            assert request_id not in response.text
        posted = httpx.post(f"{url}/requests/{request_id}", headers=headers, timeout=10)
        assert posted.status_code == 401
    with signed_in(issuer, "agent-7", ["agent", "finance_lead"]) as requester:
        assert request_id not in requester.get(url + "/").text  # their own request
        assert requester.get(f"{url}/requests/{request_id}").status_code == 404
    with (  # no redirect to the Host header, signed in or not
        signed_in(issuer, "dana", ["finance_lead"]) as dana,
        httpx.Client(timeout=10) as anyone,
    ):
        for client in (dana, anyone):
            for method in ("GET", "POST"):
                slash = client.request(
                    method, f"{url}/requests/{request_id}/", headers={"host": "evil.example"}
                )
                assert slash.status_code == 404 and "location" not in slash.headers
    assert RUNS == []


def test_bad_serve_options_are_usage_errors(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("D2_")}
    base = [sys.executable, "-m", "d2", "approvals", "serve", "--audience", "a"]
    good = ["--jwks-url", "https://idp.invalid/jwks", "--app", "x"]
    for extra, said in (
        (["--jwks-url", "http://idp.invalid/j", "--app", "x", "--store", "redis://h/0"], "https"),
        ([*good], "no shared store"),
        ([*good, "--store", "redis://h/0", "--listen", "nowhere"], "HOST:PORT"),
    ):  # fmt: skip
        proc = subprocess.run(
            base + extra, env=env, capture_output=True, text=True, timeout=60, check=False,
            cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 2 and said in proc.stderr, proc.stderr


def test_replicas_sharing_a_csrf_secret_accept_each_others_forms(
    inbox: tuple[str, TokenIssuer], idp: tuple[TokenIssuer, str], redis_url: str, tmp_path: Path
) -> None:
    # behind a load balancer the form may come from one replica and be posted to the
    # next: D2_APPROVALS_CSRF_SECRET gives them one key; a replica without it refuses
    lone, issuer = inbox
    jwks = idp[1]
    request_id = hold("o_5")
    secret = "9f" * 32
    with (
        serve_inbox(
            redis_url, jwks, tmp_path / "policy.json", D2_APPROVALS_CSRF_SECRET=secret
        ) as first,
        serve_inbox(
            redis_url, jwks, tmp_path / "policy.json", D2_APPROVALS_CSRF_SECRET=secret
        ) as second,
        signed_in(issuer, "dana", ["finance_lead"]) as dana,
    ):
        page = dana.get(f"{first}/requests/{request_id}")
        token = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
        assert page.status_code == 200 and token is not None
        form = {"csrf": token.group(1), "decision": "approve", "comment": ""}
        assert dana.cookies  # the session cookie, sent to every port of 127.0.0.1
        refused = dana.post(f"{lone}/requests/{request_id}", data=form)
        assert refused.status_code == 403  # another key: the form is not its own
        done = dana.post(f"{second}/requests/{request_id}", data=form)
        assert done.status_code == 303
    as_user("agent-7", roles=["agent"])
    assert refund("o_5", 250) == "refunded 250 on o_5"
    assert RUNS == ["o_5"]


def test_a_weak_shared_csrf_secret_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("D2_")}
    env["D2_APPROVALS_CSRF_SECRET"] = "short"
    proc = subprocess.run(
        [sys.executable, "-m", "d2", "approvals", "serve", "--audience", "a",
         "--jwks-url", "https://idp.invalid/jwks", "--app", "x", "--store", "redis://h/0"],
        env=env, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2 and "csrf_secret" in proc.stderr, proc.stderr


def test_the_keys_can_come_from_the_issuers_discovery_document(
    inbox: tuple[str, TokenIssuer], redis_url: str, tmp_path: Path
) -> None:
    # --oidc-issuer instead of --jwks-url: the JWKS its discovery document names,
    # and tokens must carry exactly that issuer
    provider = TokenIssuer(audience="refund-inbox", issuer="")
    with serve_in_thread(provider.jwks_app()) as idp_url:
        provider.issuer = f"{idp_url}/realms/staff"
        request_id = hold("o_6")
        with serve_inbox(
            redis_url, None, tmp_path / "policy.json", "--oidc-issuer", provider.issuer
        ) as url:
            with signed_in(provider, "dana", ["finance_lead"]) as dana:
                assert request_id in dana.get(url + "/").text
            elsewhere = provider.token("dana", ["finance_lead"], issuer=ISSUER)
            response = httpx.get(url + "/", headers={"authorization": f"Bearer {elsewhere}"})
            assert response.status_code == 401
        assert provider.discoveries >= 1


def test_the_keys_come_one_way(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("D2_")}
    base = [sys.executable, "-m", "d2", "approvals", "serve", "--audience", "a", "--app", "x",
            "--store", "redis://h/0"]  # fmt: skip
    for extra in ([], ["--jwks-url", "https://i.invalid/j", "--oidc-issuer", "https://i.invalid"]):
        proc = subprocess.run(
            base + extra, env=env, capture_output=True, text=True, timeout=60, check=False,
            cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 2 and "--oidc-issuer" in proc.stderr, proc.stderr
