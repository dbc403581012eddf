"""A CRM tool whose output is filtered per role (decision step 8).

Support agents see a customer without the SSN and with card numbers in notes
redacted; analysts also lose the email and see at most 3 orders; a result that
still carries an internal flag is refused for everyone but admins. The tool
returns the same record every time: D2 never mutates it, each role gets its own
sanitized copy. Run: python examples/crm_output.py
"""

from __future__ import annotations

import os
import time
from typing import Any

from d2 import (
    InMemorySource,
    PermissionDeniedError,
    configure_rbac_sync,
    d2_guard,
    set_user,
    shutdown_rbac,
)

os.environ.setdefault("D2_SILENT", "1")

POLICY = {
    "metadata": {
        "name": "crm-demo",
        "expires": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3 * 86400)),
    },
    "policies": [
        {"role": "admin", "permissions": ["*"]},
        {
            "role": "support",
            "permissions": [
                {
                    "tool": "crm.lookup",
                    "conditions": {
                        "input": {"customer_id": {"type": "string", "matches": "^c_[0-9]+$"}},
                        "output": {
                            "ssn": {"action": "filter"},
                            "notes": {
                                "matches": "[0-9]{4}-[0-9]{4}-[0-9]{4}-[0-9]{4}",
                                "action": "redact",
                            },
                            "require_fields_absent": ["internal_flag"],
                        },
                    },
                }
            ],
        },
        {
            "role": "analyst",
            "permissions": [
                {
                    "tool": "crm.lookup",
                    "conditions": {
                        "output": {
                            "ssn": {"action": "filter"},
                            "email": {"action": "filter"},
                            "notes": {"action": "redact"},
                            "orders": {"maxLength": 3, "action": "truncate"},
                            "orders.amount": {"max": 1000, "action": "redact"},
                        },
                    },
                }
            ],
        },
    ],
}

RECORD: dict[str, Any] = {
    "id": "c_1042",
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "ssn": "123-45-6789",
    "notes": "prefers email; card 4111-1111-1111-1111 on file",
    "orders": [{"id": n, "amount": a} for n, a in enumerate([120, 5400, 80, 60, 30])],
}


@d2_guard("crm.lookup")
def crm_lookup(customer_id: str) -> dict[str, Any]:
    return RECORD


def main() -> None:
    configure_rbac_sync(source=InMemorySource(POLICY, name="crm-demo"))
    for user, role in (("root", "admin"), ("sam", "support"), ("ann", "analyst")):
        set_user(user, roles=[role])
        print(f"{role}:")
        try:
            for key, value in crm_lookup("c_1042").items():
                print(f"    {key:<7} {value}")
        except PermissionDeniedError as err:
            print(f"    DENIED {err.reason}: {err}")
        print()
    RECORD["internal_flag"] = True
    set_user("sam", roles=["support"])
    try:
        crm_lookup("c_1042")
    except PermissionDeniedError as err:
        print(f"support, record with internal_flag: DENIED ({err.reason})")
    set_user("sam", roles=["support"])
    try:
        crm_lookup("1042; DROP TABLE")
    except PermissionDeniedError as err:
        print(f"support, bad customer id: DENIED ({err.reason}): {err.trace[-1].detail}")
    del RECORD["internal_flag"]
    print(f"\nthe tool's own record is untouched: ssn={RECORD['ssn']!r}")
    shutdown_rbac()


if __name__ == "__main__":
    main()
