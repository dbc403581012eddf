"""The policy every example in this folder runs under, and a little printing help.

An ``analyst`` may search the web, read users (at most 50 at a time, e-mail
addresses redacted from what comes back) and send HTTP requests, but never send one
after reading users in the same request: that is how data leaves. A ``viewer`` may
only search. Framework tools are called ``web_search``, ``read_users`` and
``http_request``; ``TOOL_IDS`` maps them to the policy's ids.
"""

from __future__ import annotations

import os
import time
from typing import Any

os.environ.setdefault("D2_SILENT", "1")

TOOL_IDS = {
    "web_search": "web.search",
    "read_users": "db.read_users",
    "http_request": "http.request",
}

USERS = [
    {"name": "Ada", "email": "ada@example.com"},
    {"name": "Grace", "email": "grace@example.com"},
]

POLICY: dict[str, Any] = {
    "metadata": {
        "name": "agents-examples",
        "expires": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3 * 86400)),
    },
    "policies": [
        {
            "role": "analyst",
            "permissions": [
                "web.search",
                {
                    "tool": "db.read_users",
                    "conditions": {
                        "input": {"limit": {"type": "int", "min": 1, "max": 50}},
                        "output": {"email": {"action": "redact"}},
                    },
                },
                "http.request",
            ],
            "sequence": [{"deny": ["db.read_users", "http.request"], "reason": "exfiltration"}],
        },
        {"role": "viewer", "permissions": ["web.search"]},
    ],
}


def show(label: str, outcome: object) -> None:
    """Print one step: what was attempted and what came back."""
    print(f"  {label:<44} -> {outcome}")
