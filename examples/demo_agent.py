"""D2 demo: one scripted "agent" plan, run as different users.

No model and no network: the agent is a fixed list of tool calls. Every tool is
guarded with @d2_guard, and the policy below decides, per user, which calls run.
Run it with `make demo`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("D2_SILENT", "1")  # hide the local-mode banner
os.environ.pop("D2_TOKEN", None)  # this demo runs in local mode

import d2
from d2 import PermissionDeniedError, d2_guard


# The tools the agent can call. The guard runs first; a denied call never runs.
@d2_guard("web.search")
async def web_search(query: str) -> str:  # an async tool: awaited like any coroutine
    await asyncio.sleep(0)
    return f"3 results for {query!r}"


@d2_guard("crm.lookup")
def crm_lookup(customer_id: str) -> str:
    return f"customer {customer_id}: Ada Lovelace, plan=pro"


@d2_guard("billing:read")
def billing_read(customer_id: str) -> str:
    return f"{customer_id}: 2 invoices, balance $0.00"


@d2_guard("billing:refund")
def billing_refund(customer_id: str, amount: float) -> str:
    return f"refunded ${amount:.2f} to {customer_id}"


@d2_guard("email.send")
def email_send(to: str, body: str) -> str:
    return f"email queued to {to}"


@d2_guard("db.drop_table")
def db_drop_table(table: str) -> str:
    return f"dropped table {table}"


# The policy: admin may do anything; support gets an exact id, a prefix wildcard,
# a tool group, and an explicit deny that overrides the wildcard.
POLICY = {
    "metadata": {
        "name": "support-bot-demo",
        # Local policies must expire within 7 days; renew by editing the file.
        "expires": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3 * 86400)),
        "tool_groups": {"customer_ops": ["crm.lookup", "email.send"]},
    },
    "policies": [
        {"role": "admin", "permissions": ["*"]},
        {
            "role": "support",
            "permissions": [
                "web.search",  # exact tool id
                "billing:*",  # prefix wildcard: billing:read, billing:refund, ...
                "@customer_ops",  # every tool of the group
                {"tool": "billing:refund", "allow": False},  # explicit deny wins
            ],
        },
    ],
}

# The agent's plan: the same calls, whoever is asking.
PLAN: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
    (web_search, ("refund policy",)),
    (crm_lookup, ("c_1042",)),
    (billing_read, ("c_1042",)),
    (billing_refund, ("c_1042", 25.0)),
    (email_send, ("ada@example.com", "Your refund is on its way")),
    (db_drop_table, ("customers",)),
]

USERS = [("alice", ["admin"]), ("sam", ["support"]), ("guest", ["visitor"])]

ROW = "{:<7} {:<9} {:<15} {:<8} {:<14} {}"


def short_why(err: PermissionDeniedError) -> str:
    """First sentence of the message, minus the "'tool' denied for user 'x':" lead."""
    text = re.sub(r"^'[^']*' denied( for user '[^']*')?: ", "", str(err))
    return re.split(r"(?<=[.;])\s", text, maxsplit=1)[0].rstrip(";")


def run_call(user: str, roles: list[str], tool: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """Make one call of the plan and print its row of the table."""
    try:
        result = tool(*args)
        if asyncio.iscoroutine(result):  # the async tool: the guard runs when awaited
            result = asyncio.run(result)
        outcome = ("ALLOWED", "-", f"-> {result}")
    except PermissionDeniedError as err:  # every refusal is one; the tool did not run
        outcome = ("DENIED", err.reason, short_why(err))
    print(ROW.format(user, ",".join(roles) or "-", tool.tool_id, *outcome))  # type: ignore[attr-defined]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        try:  # YAML when ruamel.yaml is installed (d2-sdk[yaml]), else JSON
            from ruamel.yaml import YAML

            path = Path(tmp, "policy.yaml")
            with path.open("w") as fh:
                YAML().dump(POLICY, fh)
        except ImportError:
            path = Path(tmp, "policy.json")
            path.write_text(json.dumps(POLICY, indent=2))

        print(f"Policy ({path.name}):\n")
        print("  " + path.read_text().strip().replace("\n", "\n  ") + "\n")
        d2.configure_rbac_sync(source=path)  # load once at startup (file is watched)

        print("What each user's model would be offered (allowed_tools):")
        for user, roles in USERS:
            d2.set_user(user, roles=roles)
            offered = ", ".join(d2.allowed_tools()) or "(none)"
            print(f"  {user:<6} {','.join(roles):<8} {offered}")
        d2.clear_user_context()

        print("\n" + ROW.format("USER", "ROLES", "TOOL", "RESULT", "REASON", "DETAIL / WHY"))
        print("-" * 100)
        for user, roles in USERS:
            d2.set_user(user, roles=roles)  # once per request, from your auth layer
            for tool, args in PLAN:
                run_call(user, roles, tool, args)
            d2.clear_user_context()  # end of the request
            print()
        # A call made with no user set at all (say, a request that skipped auth).
        run_call("(none)", [], web_search, ("anything",))

        d2.shutdown_rbac()  # stop the file watcher
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
