"""The key a pydantic secret is digested with (``D2_APPROVAL_SECRET_KEY``)."""

from __future__ import annotations

import os
import subprocess
import sys

_DIGEST = """
from pydantic import SecretStr
from d2.core.approval_data import call_digest
print(call_digest("doors.unlock", {"pin": SecretStr("4821")}, "u", "v1"))
"""


def _digest(key: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "D2_APPROVAL_SECRET_KEY"}
    if key is not None:
        env["D2_APPROVAL_SECRET_KEY"] = key
    done = subprocess.run(
        [sys.executable, "-c", _DIGEST], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_processes_sharing_the_key_agree_on_a_secret_s_digest() -> None:
    key = "k" * 40
    assert _digest(key) == _digest(key)  # a retry in another worker finds the approval
    assert _digest(key) != _digest("j" * 40)


def test_without_a_key_each_process_digests_a_secret_with_its_own() -> None:
    assert _digest(None) != _digest(None)  # nothing in the store lets a reader guess it
