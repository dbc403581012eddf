"""Hot reload of a watched policy file: only what a complete write produced is put
in force (docs/local-mode.md, "Hot reload"; docs/security.md, "A half-written policy
file"), and a deleted file keeps its policy only until it expires."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from d2.core import (
    BundleExpiredError,
    ConfigurationError,
    Limits,
    LocalFileSource,
    configure_rbac_sync,
    d2_guard,
    is_allowed,
    set_user,
)
from d2.core.evaluate import Evaluator
from d2.core.policy.model import CompiledPolicy
from d2.core.testing import expires_in

REFUND = "billing.refund"


def teller_policy(*, final: bool = True, expires: str | None = None) -> str:
    """A policy whose last line takes ``billing.refund`` away from tellers. Every
    prefix of it that ends a line is valid YAML that grants the refund."""
    text = f"""\
metadata:
  name: bank
  expires: "{expires or expires_in(86400)}"
policies:
  - role: teller
    permissions:
      - "billing:read"
      - "billing.*"
      - tool: {REFUND}
"""
    return text + ("        allow: false\n" if final else "")


def grants_refund(policy: CompiledPolicy) -> bool:
    ev = Evaluator("reload-probe")
    ev.policy = policy
    assert ev.decide("billing:read", set_user("t", roles=["teller"])) is None
    return ev.decide(REFUND) is None


def write_in_place_slowly(path: Path, text: str, pause: float) -> list[float]:
    """Rewrite ``path`` in place (truncate, then one line at a time, flushed), with
    ``pause`` seconds after each line; returns the pauses as they really were."""
    lines = text.splitlines(keepends=True)
    pauses = []
    with open(path, "w", encoding="utf-8") as fh:
        for i, line in enumerate(lines):
            fh.write(line)
            fh.flush()
            if i >= len(lines) - 3:  # the last lines: each prefix grants the refund
                start = time.monotonic()
                time.sleep(pause)
                pauses.append(time.monotonic() - start)
    return pauses


def watched(path: Path, interval: float, **kwargs: Any) -> tuple[LocalFileSource, list[Any]]:
    source = LocalFileSource(path, poll_interval=interval, **kwargs)
    source.load(Limits())
    installed: list[CompiledPolicy] = []
    source.watch(Limits(), installed.append)
    return source, installed


def test_a_slow_write_in_place_never_puts_its_prefix_in_force(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    interval = 0.3
    for _attempt in range(3):  # a pause stretched by a busy machine voids the run
        path.write_text(teller_policy(final=True) + "# the version before\n")
        source, installed = watched(path, interval)
        try:
            # each pause spans more than one poll interval (the old rule loaded the
            # prefix: its stat was unchanged for one interval) but less than two
            pauses = write_in_place_slowly(path, teller_policy(final=True), 1.6 * interval)
            deadline = time.monotonic() + 20 * interval
            while not installed and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            source.close()
        if max(pauses) < 2 * interval:
            break
    else:
        pytest.skip("the machine is too busy to pace the writer")
    assert installed, "the complete file was never put in force"
    assert not any(grants_refund(p) for p in installed), "a prefix granting more was installed"
    assert installed[-1].raw == path.read_bytes()


def test_the_rule_is_the_same_content_at_consecutive_checks_and_it_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(teller_policy())
    source = LocalFileSource(path, poll_interval=None)
    source.load(Limits())
    installed: list[CompiledPolicy] = []

    def check() -> None:
        source._check(Limits(), installed.append)

    path.write_text(teller_policy(final=False))  # the prefix: a valid policy
    check()
    check()  # the same content twice: not yet
    assert installed == []
    path.write_text(teller_policy(final=True) + "# done\n")
    check()
    check()
    assert installed == []  # the count restarts when the content changes
    check()  # third identical read: in force
    assert len(installed) == 1 and not grants_refund(installed[0])
    for _ in range(5):
        check()
    assert len(installed) == 1  # unchanged content is not installed again

    path.write_text("policies: [")  # stable but invalid: refused, logged once
    for _ in range(6):
        check()
    assert len(installed) == 1
    assert caplog.text.count("was refused") == 1

    replacement = tmp_path / "new.yaml"  # an atomic replace waits the same way
    replacement.write_text(teller_policy(final=False))
    os.replace(replacement, path)
    check()
    check()
    assert len(installed) == 1
    check()
    assert len(installed) == 2 and grants_refund(installed[1])


def test_stable_checks_and_poll_interval_are_validated() -> None:
    for bad in (1, 0, True, 2.5):
        with pytest.raises(ConfigurationError, match="stable_checks"):
            LocalFileSource("p.yaml", stable_checks=bad)  # type: ignore[arg-type]
    for interval in (0, -1.0):
        with pytest.raises(ConfigurationError, match="poll_interval"):
            LocalFileSource("p.yaml", poll_interval=interval)
    assert LocalFileSource("p.yaml", stable_checks=2).stable_checks == 2


def test_a_deleted_file_warns_once_and_its_policy_lasts_only_until_it_expires(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="d2")
    path = tmp_path / "policy.yaml"
    path.write_text(teller_policy(final=False, expires=expires_in(3600)))
    configure_rbac_sync(source=LocalFileSource(path, poll_interval=0.02))
    refund = d2_guard(REFUND)(lambda: "refunded")
    set_user("t", roles=["teller"])
    assert refund() == "refunded"

    os.unlink(path)
    time.sleep(0.3)  # about 15 checks of a missing file
    warnings = [r for r in caplog.records if "was deleted" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "policy_expired" in warnings[0].getMessage()
    assert refund() == "refunded"  # the policy in force stays...

    clock = time.time
    monkeypatch.setattr("d2.core.evaluate._now", lambda: clock() + 3601)
    with pytest.raises(BundleExpiredError) as info:  # ...until its expires
        refund()
    assert info.value.reason == "policy_expired"

    monkeypatch.setattr("d2.core.evaluate._now", clock)
    path.write_text(teller_policy(final=True))  # re-created: loaded, no restart
    assert wait_for(lambda: not is_allowed(REFUND))
    assert is_allowed("billing:read")
    assert "is back" in caplog.text


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False
