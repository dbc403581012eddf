"""A refund agent whose large refunds wait for a finance lead.

No model and no network: the agent is a fixed script of tool calls against the
policy in policy.yaml (next to this file). Refunds over 100 need an approval by a
user with role finance_lead, one approval runs one identical call, nobody approves
their own request, and the agent may look orders up at most 3 times per request.
Run: python examples/approvals/refund_agent.py (or `make demo`).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("D2_SILENT", "1")  # hide the local-mode banner
os.environ.pop("D2_TOKEN", None)  # this example runs in local mode

import d2
from d2 import ApprovalRequiredError, PermissionDeniedError, d2_guard

POLICY = Path(__file__).with_name("policy.yaml")


@d2_guard("orders.lookup")
def lookup_order(order_id: str) -> str:
    return f"{order_id}: paid, 2 items"


@d2_guard("payments.refund")
def refund(order_id: str, amount: float) -> str:
    return f"refunded {amount:.2f} on {order_id}"


def line(who: str, what: str, outcome: str) -> None:
    print(f"{who:<8} {what:<34} {outcome}")


def attempt(who: str, what: str, call: Callable[[], Any]) -> ApprovalRequiredError | None:
    """Make one call as the current user; print what happened."""
    try:
        line(who, what, f"ALLOWED  {call()}")
    except ApprovalRequiredError as err:  # a PermissionDeniedError: the tool did not run
        req = err.request
        roles = ", ".join(req.approver_roles)
        line(who, what, f"WAITING  {err.reason}: request {req.id[:12]}, approvers [{roles}]")
        return err
    except PermissionDeniedError as err:
        detail = err.trace[-1].detail if err.trace else str(err)
        line(who, what, f"DENIED   {err.reason}: {detail}")
    return None


def fresh_copy(tmp: str) -> Path:
    """policy.yaml with `expires` three days from now (local policies expire)."""
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3 * 86400))
    text = re.sub(r'expires: "[^"]+"', f'expires: "{soon}"', POLICY.read_text())
    path = Path(tmp, "policy.yaml")
    path.write_text(text)
    return path


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        d2.configure_rbac_sync(source=fresh_copy(tmp))
        print("Refund desk: refunds over 100 wait for a finance lead\n")

        # One request of the agent: a small refund runs, a large one waits.
        d2.set_user("agent-7", roles=["agent"])
        attempt("agent-7", "refund ord-1001 40.00", lambda: refund("ord-1001", 40))
        waiting = attempt("agent-7", "refund ord-1002 250.00", lambda: refund("ord-1002", 250))
        assert waiting is not None
        request_id = waiting.request.id
        line("", "", f"         request id: {request_id}")

        # The finance lead sees what waits for her, and approves it.
        print()
        d2.set_user("dana", roles=["finance_lead"])
        for req in d2.pending_approvals():
            minutes = round((req.expires_at - time.time()) / 60)
            line(
                "dana",
                "pending_approvals()",
                f"{req.id[:12]} {req.tool_id} {json.dumps(req.arguments)}"
                f" by {req.user_id}, expires in {minutes} min",
            )
        d2.approve(request_id)
        line("dana", f"approve({request_id[:12]})", "APPROVED")

        # The identical call runs once; the next identical one waits again (a new request).
        print()
        d2.set_user("agent-7", roles=["agent"])
        attempt("agent-7", "retry refund ord-1002 250.00", lambda: refund("ord-1002", 250))
        again = attempt("agent-7", "the same refund, once more", lambda: refund("ord-1002", 250))
        assert again is not None

        # Nobody approves their own request.
        try:
            d2.approve(again.request.id)
            line("agent-7", f"approve({again.request.id[:12]})", "APPROVED (unexpected)")
        except PermissionDeniedError as err:
            line("agent-7", f"approve({again.request.id[:12]})", f"REFUSED  {err.reason}")
            line("", "", f"         {err}")

        # A budget: at most 3 order lookups per request.
        print()
        d2.set_user("agent-7", roles=["agent"])
        for n, order in enumerate(["ord-1001", "ord-1002", "ord-1003", "ord-1004"], start=1):
            attempt("agent-7", f"lookup {order} (call {n})", lambda o=order: lookup_order(o))
        d2.set_user("agent-7", roles=["agent"])  # a new request has a new budget
        attempt("agent-7", "lookup ord-1004 (new request)", lambda: lookup_order("ord-1004"))

        d2.clear_user_context()
        d2.shutdown_rbac()  # stop the file watcher
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
