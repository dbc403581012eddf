"""The approvals inbox in a real browser: Chromium (the Debian ``chromium`` package)
driven by Playwright, against an app served by uvicorn that mounts the inbox at
``/d2/approvals``. Identities come from ``X-D2-User`` / ``X-D2-Roles``, set on each
browser context as the trusted proxy in front of the app would set them.

End to end: the app holds a refund; the approver opens the inbox, sees it, clicks
**Approve**; the requester's retry runs once; the requester's own session does not
list it; **Reject** refuses; a forged POST without the CSRF token is refused, and so
is a cross-origin form even with a leaked token; an expired request cannot be
decided.

Skips when chromium is not installed (``apt-get install chromium``), except with
``D2_REQUIRE_BROWSER=1`` (CI), where it fails. The screenshots it takes are checked
here; with ``D2_UPDATE_SCREENSHOTS=1`` they are also written to ``docs/img/``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from d2.asgi import ASGIMiddleware, headers_extractor
from d2.asgi.approvals import inbox_app
from d2.core import (
    ApprovalRequiredError,
    InMemorySource,
    PermissionDeniedError,
    configure_rbac_sync,
    d2_guard,
)
from d2.core.testing import controlled_clock, expires_in, reset
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Mount, Route

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "img"
REQUIRE_BROWSER = os.environ.get("D2_REQUIRE_BROWSER") == "1"
UPDATE_SCREENSHOTS = os.environ.get("D2_UPDATE_SCREENSHOTS") == "1"
INBOX = "/d2/approvals"
POLICY = {
    "metadata": {"name": "refund-desk", "expires": ""},
    "policies": [
        {
            "role": "agent",
            "permissions": [
                {
                    "tool": "payments.refund",
                    "approval": {"when": {"amount": {"gt": 100}}, "approvers": ["finance_lead"]},
                }
            ],
        },
        {"role": "finance_lead", "permissions": []},
    ],
}
RUNS: list[str] = []


@d2_guard("payments.refund")
def refund(order_id: str, amount: int, reason: str) -> str:
    RUNS.append(order_id)
    return f"refunded {amount} on {order_id}"


async def refund_endpoint(request: Request) -> JSONResponse:
    body = await request.json()
    try:
        return JSONResponse({"result": refund(**body)})
    except ApprovalRequiredError as err:
        return JSONResponse({"reason": err.reason, "request": err.request.id}, status_code=403)
    except PermissionDeniedError as err:
        return JSONResponse({"reason": err.reason}, status_code=403)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = (
            "the browser tests need Chromium: apt-get install chromium (Debian package); "
            "D2_REQUIRE_BROWSER=1 makes its absence a failure"
        )
        if REQUIRE_BROWSER:
            pytest.fail(message)
        pytest.skip(message)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if REQUIRE_BROWSER:
            pytest.fail("Playwright for Python is not installed (a dev dependency)")
        pytest.skip("Playwright for Python is not installed")
    return found


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
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


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    for key in list(os.environ):
        if key.startswith("D2_") and key not in ("D2_REQUIRE_BROWSER", "D2_UPDATE_SCREENSHOTS"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("D2_SILENT", "1")
    reset()  # a fresh in-process store: no request of another test is live
    POLICY["metadata"]["expires"] = expires_in()  # type: ignore[index]
    configure_rbac_sync(source=InMemorySource(POLICY))
    RUNS.clear()
    app = Starlette(
        routes=[
            Route("/refund", refund_endpoint, methods=["POST"]),
            Mount(INBOX, inbox_app(user_extractor=headers_extractor, title="Refund desk")),
        ]
    )
    app.add_middleware(ASGIMiddleware, user_extractor=headers_extractor)
    with served(app) as url:
        yield url
    reset()


@pytest.fixture
def browser() -> Iterator[Any]:
    executable = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def session(browser: Any, user: str, roles: str) -> Any:
    """A browser context whose every request carries the user's identity headers
    (what the authenticating proxy in front of the app adds)."""
    context = browser.new_context(
        extra_http_headers={"X-D2-User": user, "X-D2-Roles": roles},
        viewport={"width": 1000, "height": 720},
        device_scale_factor=1,
    )
    context.set_default_timeout(10_000)
    return context


def ask(site: str, order: str, amount: int = 250) -> httpx.Response:
    return httpx.post(
        f"{site}/refund",
        json={"order_id": order, "amount": amount, "reason": "damaged in transit"},
        headers={"x-d2-user": "agent-7", "x-d2-roles": "agent"},
        timeout=10,
    )


def hold(site: str, order: str) -> str:
    asked = ask(site, order)
    assert asked.status_code == 403 and asked.json()["reason"] == "approval_required"
    return str(asked.json()["request"])


def shoot(page: Any, name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5_000
    if UPDATE_SCREENSHOTS:
        SHOTS.mkdir(parents=True, exist_ok=True)
        (SHOTS / name).write_bytes(data)


def test_an_approver_approves_in_chromium_and_the_call_runs_once(
    site: str, browser: Any, tmp_path: Path
) -> None:
    request_id = hold(site, "o_1042")
    dana = session(browser, "dana", "finance_lead").new_page()
    dana.goto(f"{site}{INBOX}/")
    row = dana.get_by_role("table", name="Pending requests").get_by_role("row").nth(1)
    assert "agent-7" in row.inner_text()
    shoot(dana, "approvals-inbox.png", tmp_path)

    row.get_by_role("link", name="payments.refund").click()
    dana.wait_for_url(f"**{INBOX}/requests/{request_id}")
    arguments = dana.locator("pre").inner_text()
    assert '"order_id": "o_1042"' in arguments and '"amount": 250' in arguments
    dana.get_by_label("Comment (optional)").fill("Checked the order: refund it.")
    shoot(dana, "approvals-request.png", tmp_path)

    dana.get_by_role("button", name="Approve", exact=True).click()
    status = dana.get_by_role("status")
    status.wait_for()
    assert status.inner_text().startswith("Approved by dana")
    assert dana.get_by_role("button", name="Approve", exact=True).count() == 0
    shoot(dana, "approvals-decided.png", tmp_path)

    ran = ask(site, "o_1042")
    assert ran.json() == {"result": "refunded 250 on o_1042"}
    assert RUNS == ["o_1042"]
    again = ask(site, "o_1042")  # runs once: the next identical call asks anew
    assert again.json()["reason"] == "approval_required" and RUNS == ["o_1042"]

    dana.goto(f"{site}{INBOX}/")
    recent = dana.get_by_role("table", name="Recent decisions").inner_text()
    assert "Approved" in recent and "Checked the order" in recent


def test_the_requesters_own_session_does_not_list_it(site: str, browser: Any) -> None:
    request_id = hold(site, "o_7")
    own = session(browser, "agent-7", "agent,finance_lead").new_page()  # a lead, but the asker
    own.goto(f"{site}{INBOX}/")
    assert "Nothing waits for your decision" in own.content()
    assert own.get_by_role("link", name="payments.refund").count() == 0
    response = own.goto(f"{site}{INBOX}/requests/{request_id}")
    assert response is not None and response.status == 404
    assert own.get_by_role("button", name="Approve", exact=True).count() == 0


def test_reject_refuses_the_call(site: str, browser: Any) -> None:
    request_id = hold(site, "o_8")
    erin = session(browser, "erin", "finance_lead").new_page()
    erin.goto(f"{site}{INBOX}/requests/{request_id}")
    erin.get_by_label("Comment (optional)").fill("Not without a receipt.")
    erin.get_by_role("button", name="Reject", exact=True).click()
    erin.get_by_role("status").wait_for()
    assert erin.get_by_role("status").inner_text().startswith("Rejected by erin")
    refused = ask(site, "o_8")
    assert refused.json() == {"reason": "approval_rejected"} and RUNS == []


def test_forged_posts_are_refused(site: str, browser: Any) -> None:
    request_id = hold(site, "o_9")
    context = session(browser, "dana", "finance_lead")
    dana = context.new_page()
    dana.goto(f"{site}{INBOX}/requests/{request_id}")
    token = dana.locator("input[name=csrf]").get_attribute("value")
    assert token
    action = f"{site}{INBOX}/requests/{request_id}"
    forged = dana.request.post(action, form={"decision": "approve"})  # with her cookie
    assert forged.status == 403

    # A page of another origin posts a form into the inbox, even with the token.
    async def evil(scope: Any, receive: Any, send: Any) -> None:
        page = (
            f'<form id="f" method="post" action="{action}">'
            f'<input name="csrf" value="{token}"><input name="decision" value="approve">'
            '<button id="go">Claim your prize</button></form>'
        )
        response = HTMLResponse(page)
        await response(scope, receive, send)

    with served(evil) as attacker:
        lure = context.new_page()
        lure.goto(attacker + "/")
        with lure.expect_navigation():
            lure.click("#go")
        assert "Refused" in lure.content()
    dana.goto(f"{site}{INBOX}/")
    assert dana.get_by_role("link", name="payments.refund").count() == 1  # still pending
    assert ask(site, "o_9").json()["reason"] == "approval_required" and RUNS == []


def test_an_expired_request_cannot_be_decided(
    site: str, browser: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = controlled_clock(monkeypatch)
    request_id = hold(site, "o_10")
    dana = session(browser, "dana", "finance_lead").new_page()
    dana.goto(f"{site}{INBOX}/requests/{request_id}")
    clock.advance(15 * 60 + 1)  # past the default ttl, with the page still open
    with dana.expect_response(lambda r: r.request.method == "POST") as posted:
        dana.get_by_role("button", name="Approve", exact=True).click()
    assert posted.value.status == 404
    assert "Not found" in dana.content()
    asked = ask(site, "o_10")
    assert asked.json()["reason"] == "approval_required" and RUNS == []


def test_two_calls_that_differ_by_invisible_characters_never_look_alike(
    site: str, browser: Any
) -> None:
    # The ninth review: U+034F and U+FE0F after the order id drew nothing, and the
    # two argument boxes were pixel-identical in Chromium.
    plain = hold(site, "o_77")
    hidden = hold(site, "o_77\u034f\ufe0f")
    dana = session(browser, "dana", "finance_lead").new_page()
    boxes = []
    for request_id in (plain, hidden):
        dana.goto(f"{site}{INBOX}/requests/{request_id}")
        boxes.append(dana.locator("pre").screenshot())
    assert '"order_id": "o_77\\u034f\\ufe0f"' in dana.locator("pre").inner_text()
    assert boxes[0] != boxes[1]


# The eleventh review (F2): one right-to-left character, with no override or
# invisible character, made the browser's implicit bidi algorithm draw the digit
# groups after it in another order than the value holds: "1\u05be9999" (U+05BE
# HEBREW PUNCTUATION MAQAF, drawn like a hyphen) and "19999\u05be" drew alike.
ORDER_OF_CHARACTERS = """(el, text) => {
    el.textContent = text;
    const node = el.firstChild, boxes = [];
    for (let i = 0; i < text.length; i++) {
        const range = document.createRange();
        range.setStart(node, i);
        range.setEnd(node, i + 1);
        const box = range.getBoundingClientRect();
        if (text[i] !== " ") boxes.push([Math.round(box.top), box.left]);
    }
    return boxes;
}"""


def test_right_to_left_characters_never_reorder_what_the_approver_reads(
    site: str, browser: Any
) -> None:
    dana = session(browser, "dana", "finance_lead").new_page()
    for real, decoy in (
        ("1\u05be9999", "19999\u05be"),
        ("DE44 \u05f3 2222 1111", "DE44 1111 2222 \u05f3"),
    ):
        boxes = []
        for order in (real, decoy):
            dana.goto(f"{site}{INBOX}/requests/{hold(site, order)}")
            boxes.append(dana.locator("pre").screenshot())
        assert boxes[0] != boxes[1], (real, decoy)


def test_every_value_on_the_page_draws_in_stored_order(site: str, browser: Any) -> None:
    # Whatever reaches an element that shows a value (even text the escaping let
    # through), its characters draw left to right in the order they are stored:
    # each character is right of the one before it, or on a line below.
    request_id = hold(site, "o_5")
    dana = session(browser, "dana", "finance_lead").new_page()
    text = "DE44 \u05f3 2222 1111 \u05d0\u05d1 12"
    checked = []
    for path, selectors in (
        (f"/requests/{request_id}", ("pre", "main h2", "dd code", "dd", "header strong")),
        ("/", ("td code", "td")),
    ):
        dana.goto(f"{site}{INBOX}{path}")
        for selector in selectors:
            found = dana.locator(selector).first.evaluate(ORDER_OF_CHARACTERS, text)
            boxes = [(top, left) for top, left in found]
            assert len(boxes) == 17 and boxes == sorted(set(boxes)), (selector, boxes)
            checked.append(selector)
    assert len(checked) == 7
