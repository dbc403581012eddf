"""What a new user runs first: `make demo` and the examples (the README's blocks are
run by test_docs_blocks.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks(text: str, lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(text) if kind == lang]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("D2_")}
    env.update(extra)
    return env


def test_make_demo_runs_and_shows_allowed_and_denied_calls(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo_agent.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=clean_env(HOME=str(tmp_path)),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "ALLOWED" in out and "DENIED" in out
    for reason in ("explicit_deny", "not_granted", "no_user"):
        assert reason in out


def run_example(name: str, tmp_path: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=clean_env(HOME=str(tmp_path)),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_exfiltration_example_stops_the_chain_and_the_pivot(tmp_path: Path) -> None:
    out = run_example("exfiltration.py", tmp_path)
    request2 = out.split("Request 2")[1]
    assert "ALLOWED  db.read_users()" in request2
    assert "DENIED   http.request" in request2 and "DENIED   email.send" in request2
    assert "exfiltration" in request2
    assert "ALLOWED  web.search('weather')" in request2


def test_crm_example_filters_output_per_role(tmp_path: Path) -> None:
    out = run_example("crm_output.py", tmp_path)
    admin, support, analyst = (
        out.split(f"{r}:\n")[1].split("\n\n")[0] for r in ("admin", "support", "analyst")
    )
    assert "123-45-6789" in admin and "4111-1111-1111-1111" in admin
    assert "ssn" not in support and "card [REDACTED] on file" in support
    assert "email" not in analyst and "'[REDACTED]'" in analyst
    assert "DENIED (output_validation)" in out and "DENIED (input_validation)" in out
    assert "untouched: ssn='123-45-6789'" in out


def test_refund_agent_waits_for_a_finance_lead(tmp_path: Path) -> None:
    out = run_example("approvals/refund_agent.py", tmp_path)
    lines = out.splitlines()

    def row(start: str) -> str:
        found = [ln for ln in lines if ln.startswith(start)]
        assert len(found) == 1, f"one line starts with {start!r}:\n{out}"
        return found[0]

    assert "ALLOWED  refunded 40.00 on ord-1001" in row("agent-7  refund ord-1001 40.00")
    waiting = row("agent-7  refund ord-1002 250.00")
    assert "WAITING  approval_required: request" in waiting
    assert "approvers [finance_lead]" in waiting
    request_id = out.split("request id: ")[1].split()[0]
    assert re.fullmatch(r"[0-9a-f]{64}", request_id)
    pending = row("dana     pending_approvals()")
    assert request_id[:12] in pending and "payments.refund" in pending
    assert '{"order_id": "ord-1002", "amount": 250} by agent-7' in pending
    assert "APPROVED" in row(f"dana     approve({request_id[:12]})")
    assert "ALLOWED  refunded 250.00 on ord-1002" in row("agent-7  retry refund ord-1002")
    again = row("agent-7  the same refund, once more")
    assert "WAITING  approval_required" in again
    again_id = again.split("request ")[1].split(",")[0]
    assert again_id != request_id[:12]  # a new request: the used one is closed
    assert "REFUSED  approval_not_permitted" in row(f"agent-7  approve({again_id})")
    assert "cannot approve or reject it" in out
    for n in (1, 2, 3):
        assert "ALLOWED" in row(f"agent-7  lookup ord-100{n} (call {n})")
    budget = row("agent-7  lookup ord-1004 (call 4)")
    assert "DENIED   budget_exceeded: the budget of 3 per request is used up" in budget
    assert "ALLOWED" in row("agent-7  lookup ord-1004 (new request)")


def test_inbox_example_approves_in_the_page_and_the_call_runs_once(tmp_path: Path) -> None:
    out = run_example("approvals/inbox_app.py", tmp_path)
    assert "dana's inbox: Waiting for you (1)" in out
    assert "agent-7's own inbox lists it: False" in out
    assert "a POST without the CSRF token: 403" in out
    assert "agent retries: refunded 250 on o_1042" in out and "waits again" in out
