"""Attacks on local-mode loading found by a hostile review, kept as regression tests
(docs/security.md, "A half-written policy file")."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from d2.core import LocalFileSource, configure_rbac_sync, is_allowed, set_user
from d2.core.testing import expires_in

REFUND = "billing.refund"


def teller_policy() -> str:
    """Every prefix that ends a line grants ``billing.refund``; the last line takes
    it away from tellers."""
    return f"""\
metadata:
  name: bank
  expires: "{expires_in(86400)}"
policies:
  - role: teller
    permissions:
      - "billing:read"
      - "billing.*"
      - tool: {REFUND}
        allow: false
"""


def test_a_process_starting_during_a_slow_write_never_runs_the_prefix(tmp_path: Path) -> None:
    """Attack/accident: the policy file is being rewritten in place (the last line,
    ``allow: false``, takes the refund away) when the process starts, e.g. a worker
    restarted by the supervisor, or an autoscaled replica. The watcher would wait for
    ``stable_checks`` identical reads, but the first load (``LocalFileSource.load``)
    reads once and puts the prefix in force at once, with no pause needed from the
    writer: the refund is granted until the watcher catches up."""
    path = tmp_path / "policy.yaml"
    text = teller_policy()
    prefix, last = text[: text.rindex("        allow: false")], "        allow: false\n"
    prefix_written = threading.Event()

    def writer() -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(prefix)
            fh.flush()
            prefix_written.set()
            time.sleep(0.25)  # shorter than the two poll intervals the watcher needs
            fh.write(last)
            fh.flush()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        prefix_written.wait(5)
        configure_rbac_sync(source=LocalFileSource(path, poll_interval=0.2))
        set_user("t", roles=["teller"])
        granted_at_start = is_allowed(REFUND)
    finally:
        thread.join()
    assert not granted_at_start, "the half-written prefix was put in force at startup"
