"""One digest per policy file, whichever command shows it: ``d2 inspect``, ``d2
test`` (its header and its traces) and ``d2 check``'s trace all show the SHA-256
of the file's bytes, which is what the runtime records as a local policy's
version in decision logs."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from cli_testkit import Invoke, as_json
from d2.core.limits import Limits
from d2.core.policy.load import load_policy_file
from d2.core.testing import expires_in

YAML_WITH_COMMENTS = """\
# the billing bot's policy
metadata:
  name:    billing-bot        # padded on purpose
  expires: "{expires}"


policies:
  - role: analyst             # who reads
    permissions: [billing:read,   crm.lookup]
"""

JSON_WITH_WHITESPACE = """{{ "metadata" : {{"expires":"{expires}",   "name": "billing-bot"}},
    "policies":[ {{"role":"analyst",
                  "permissions":["billing:read","crm.lookup"]}} ] }}
"""

SUITE = """\
policy: {policy}
cases:
  - name: analysts read billing
    roles: [analyst]
    tool: billing:read
    expect: allow
"""


def _short(text: str) -> str:
    found = re.search(r"digest ([0-9a-f]{12})", text)
    assert found is not None, text
    return found.group(1)


@pytest.mark.parametrize(
    ("name", "template"),
    [("policy.yaml", YAML_WITH_COMMENTS), ("policy.json", JSON_WITH_WHITESPACE)],
)
@pytest.mark.parametrize("expired", [False, True])
def test_inspect_test_and_check_show_the_same_digest(
    d2: Invoke, tmp_path: Path, name: str, template: str, expired: bool
) -> None:
    policy = tmp_path / name
    policy.write_text(template.format(expires=expires_in(-3600 if expired else 3 * 86400)))
    (tmp_path / "bot_test.yaml").write_text(SUITE.format(policy=name))
    file_digest = hashlib.sha256(policy.read_bytes()).hexdigest()

    inspected = d2("inspect", "--json", "--policy", str(policy))
    assert inspected.exit_code == (1 if expired else 0), inspected.output
    assert as_json(inspected)["digest"] == file_digest
    assert _short(d2("inspect", "--policy", str(policy)).stdout) == file_digest[:12]

    tested = d2("test", "--json", "bot_test.yaml")
    assert tested.exit_code == 0, tested.output  # tests check the rules, not the clock
    report = as_json(tested)["files"][0]
    assert report["digest"] == file_digest
    assert f"({file_digest[:12]})" in report["cases"][0]["trace"][0]["detail"]
    assert _short(d2("test", "bot_test.yaml").stdout) == file_digest[:12]

    if not expired:  # (an expired policy is not in force: no trace of it)
        checked = as_json(d2("check", "--json", "--policy", str(policy), "-r", "analyst", "x"))
        assert f"({file_digest[:12]})" in checked["trace"][0]["detail"]
        # the version the runtime records for this file
        assert load_policy_file(policy, Limits()).version_text == file_digest


def test_the_policy_option_of_d2_test_shows_the_file_digest_too(d2: Invoke, tmp_path: Path) -> None:
    policy = tmp_path / "candidate.yaml"
    policy.write_text(YAML_WITH_COMMENTS.format(expires=expires_in()))
    (tmp_path / "bot_test.yaml").write_text(SUITE.format(policy="missing.yaml"))
    result = as_json(d2("test", "--json", "--policy", str(policy), "bot_test.yaml"))
    assert result["files"][0]["digest"] == hashlib.sha256(policy.read_bytes()).hexdigest()
