"""The approvals inbox mounted in a FastAPI app (runs offline, no server needed).

An agent asks for a refund of 250; the policy holds it for a finance lead. Dana, a
finance lead, opens the inbox at /d2/approvals, sees the request and clicks
Approve; the agent's identical call then runs, once. Identities come from
X-D2-User / X-D2-Roles, as the authenticating proxy in front of the app would set
them (see docs/approvals.md for jwt_extractor instead).

    python examples/approvals/inbox_app.py           # the scripted walk-through
    python examples/approvals/inbox_app.py --serve   # the app on 127.0.0.1:8000

With --serve, open http://127.0.0.1:8000/d2/approvals/ through a proxy (or a
browser extension) that adds X-D2-User: dana and X-D2-Roles: finance_lead, and ask
for a refund with:
    curl -X POST 127.0.0.1:8000/refund -H 'X-D2-User: agent-7' -H 'X-D2-Roles: agent'
"""

from __future__ import annotations

import asyncio
import re
import sys
import time

import httpx
from d2 import ApprovalRequiredError, InMemorySource, configure_rbac_sync, d2_guard
from d2.asgi import ASGIMiddleware, headers_extractor
from d2.asgi.approvals import inbox_app
from fastapi import FastAPI

expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))
configure_rbac_sync(
    source=InMemorySource(
        {
            "metadata": {"name": "refund-desk", "expires": expires},
            "policies": [
                {
                    "role": "agent",
                    "permissions": [
                        {
                            "tool": "payments.refund",
                            "approval": {
                                "when": {"amount": {"gt": 100}},
                                "approvers": ["finance_lead"],
                            },
                        }
                    ],
                },
                {"role": "finance_lead", "permissions": []},
            ],
        }
    )
)


@d2_guard("payments.refund")
def refund(order_id: str, amount: int) -> str:
    return f"refunded {amount} on {order_id}"


app = FastAPI()
app.add_middleware(ASGIMiddleware, user_extractor=headers_extractor)
app.mount("/d2/approvals", inbox_app(user_extractor=headers_extractor, title="Refund desk"))


@app.post("/refund")
def refund_endpoint(order_id: str = "o_1042", amount: int = 250) -> dict[str, str]:
    try:
        return {"result": refund(order_id, amount)}
    except ApprovalRequiredError as err:
        return {"waiting_for": ", ".join(err.request.approver_roles), "request": err.request.id}


AGENT = {"X-D2-User": "agent-7", "X-D2-Roles": "agent"}
DANA = {"X-D2-User": "dana", "X-D2-Roles": "finance_lead"}


async def walk_through() -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://refund-desk") as web:
        asked = (await web.post("/refund", headers=AGENT)).json()
        print("agent asks:", f"waits for {asked['waiting_for']}")
        inbox = await web.get("/d2/approvals/", headers=DANA)
        waiting = re.search(r"Waiting for you \((\d+)\)", inbox.text)
        print("dana's inbox:", waiting.group(0) if waiting else "?")
        own = await web.get("/d2/approvals/", headers={**AGENT, "X-D2-Roles": "agent,finance_lead"})
        print("agent-7's own inbox lists it:", asked["request"] in own.text)
        page = await web.get(f"/d2/approvals/requests/{asked['request']}", headers=DANA)
        print("buttons:", re.findall(r">(Approve|Reject)</button>", page.text))
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert csrf is not None
        forged = await web.post(
            f"/d2/approvals/requests/{asked['request']}",
            headers=DANA,
            data={"decision": "approve"},
        )
        print("a POST without the CSRF token:", forged.status_code)
        decided = await web.post(
            f"/d2/approvals/requests/{asked['request']}",
            headers=DANA,
            data={"csrf": csrf.group(1), "decision": "approve", "comment": "receipt checked"},
        )
        shown = await web.get(decided.headers["location"], headers=DANA)
        status = re.search(r'role="status">(.*?)</p>', shown.text)
        print("after the click:", re.sub(r"<[^>]+>", "", status.group(1)).split(" 20")[0])
        print("agent retries:", (await web.post("/refund", headers=AGENT)).json()["result"])
        again = (await web.post("/refund", headers=AGENT)).json()
        print("and once more:", "waits again" if "waiting_for" in again else again)


if __name__ == "__main__":
    if "--serve" in sys.argv:
        import uvicorn

        uvicorn.run(app, host="127.0.0.1", port=8000)
    else:
        asyncio.run(walk_through())
