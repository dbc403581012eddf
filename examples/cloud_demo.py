"""The quickstart in cloud mode, against a local d2-server (make demo-cloud).

A control plane starts on 127.0.0.1 (a temporary database, nothing leaves the
machine); a developer publishes a signed policy; the app, holding only a runtime
token, verifies the bundle and guards its tools; then a new version is published and
picked up, and finally the policy is revoked: every call is denied.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from d2 import PermissionDeniedError, configure_rbac_sync, d2_guard, set_user
from d2.server.testing import start_server

os.environ.setdefault("D2_SILENT", "1")


@d2_guard("billing:read")
def read_billing(customer_id: str) -> dict[str, object]:
    return {"customer": customer_id, "balance": 0}


@d2_guard("billing:refund")
def refund(customer_id: str, amount: float) -> str:
    return f"refunded {amount} to {customer_id}"


def attempt(label: str, call: object) -> None:
    try:
        print(f"  {label:<28} ALLOWED -> {call() if callable(call) else call}")
    except PermissionDeniedError as err:
        print(f"  {label:<28} DENIED  ({err.reason})")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, start_server(tmp, poll_seconds=5) as server:
        print(
            f"control plane on {server.base_url} (account {server.account_id}, "
            f"app {server.app_name})"
        )
        server.register_key()  # the developer's Ed25519 device key
        server.publish(server.policy({"role": "analyst", "permissions": ["billing:read"]}))
        print("published version 1 (signed by the control plane)\n")

        manager = configure_rbac_sync(  # same call as local mode; D2_TOKEN picks cloud
            token=server.runtime_token,
            api_url=server.base_url,
            state_path=str(Path(tmp) / "bundles.json"),
        )
        print(f"app: cloud mode, bundle version {manager.policy.version} verified")
        set_user("alice", roles=["analyst"])
        attempt("read_billing('c_42')", lambda: read_billing("c_42"))
        attempt("refund('c_42', 10)", lambda: refund("c_42", 10.0))

        server.publish(
            server.policy({"role": "analyst", "permissions": ["billing:read", "billing:refund"]})
        )
        manager.reload()  # the poller would pick it up within one interval (5 s here)
        print(f"\npublished version 2; the app now runs version {manager.policy.version}")
        attempt("refund('c_42', 10)", lambda: refund("c_42", 10.0))

        server.revoke()
        try:
            manager.reload()
        except Exception:
            pass
        print("\nrevoked in the control plane: every guarded call is denied")
        attempt("read_billing('c_42')", lambda: read_billing("c_42"))
        manager.shutdown()


if __name__ == "__main__":
    main()
