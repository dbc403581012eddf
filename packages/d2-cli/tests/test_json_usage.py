"""``--json`` and a command line the command never got to run: an unknown option,
a missing option or argument, a bad value or choice. Stdout carries exactly one
JSON document, shaped like every other JSON error, and the exit code is 2; without
``--json`` the human usage message is unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_testkit import Invoke
from d2.cli import main
from d2.cli.usage import wants_json

USAGE_ERRORS = [
    # unknown option
    (["inspect", "--bogus"], "No such option: --bogus"),
    (["diagnose", "--nope"], "No such option: --nope"),
    (["renew", "--weeks", "1"], "No such option: --weeks"),
    (["publish", "--bogus"], "No such option: --bogus"),
    # missing option value / missing required option
    (["check", "--role"], "'--role' requires an argument"),
    (["replay", "--policy", "candidate.yaml"], "Missing option '--log'"),
    # missing argument
    (["check"], "Missing argument 'tool'"),
    (["check", "--role", "analyst"], "Missing argument 'tool'"),
    # bad choice
    (["init", "--format", "toml"], "'toml' is not one of 'yaml', 'json'"),
    (["pull", "--stage", "final"], "'final' is not one of 'published', 'draft'"),
    # bad value
    (["renew", "--days", "many"], "Invalid value for '--days'"),
    (["draft", "--version", "-1"], "--version"),
    # no such command
    (["renw"], "No such command 'renw'"),
]


def _one_document(stdout: str) -> Any:
    """The single JSON document on stdout (json.loads refuses trailing text)."""
    return json.loads(stdout)


@pytest.mark.parametrize(("args", "message"), USAGE_ERRORS, ids=lambda v: str(v))
@pytest.mark.parametrize("where", ["first", "last"])
def test_a_usage_error_with_json_is_one_json_document_and_exit_code_2(
    d2: Invoke, args: list[str], message: str, where: str
) -> None:
    argv = [args[0], "--json", *args[1:]] if where == "first" else [*args, "--json"]
    if argv[-2:] == ["--role", "--json"]:  # --json is taken as the value of --role
        message = "Missing argument 'tool'"
    result = d2(*argv)
    assert result.exit_code == 2, result.output
    document = _one_document(result.stdout)
    assert document["ok"] is False
    error = document["error"]
    assert set(error) == {"message", "exit_code", "details", "hint"}  # the usual shape
    assert message in error["message"]
    assert error["exit_code"] == 2
    assert "--help" in error["hint"]
    assert "Error" in result.stderr  # the human form, on stderr


def test_the_hint_names_the_command(d2: Invoke) -> None:
    error = _one_document(d2("check", "--json", "--role").stdout)["error"]
    assert error["hint"] == "run `d2 check --help` for the options and arguments"
    error = _one_document(d2("renew", "--days", "x", "--json").stdout)["error"]
    assert error["details"] == ["Usage: d2 renew [OPTIONS] [file]"]


@pytest.mark.parametrize(("args", "message"), USAGE_ERRORS[:4], ids=lambda v: str(v))
def test_without_json_the_human_usage_message_is_unchanged(
    d2: Invoke, args: list[str], message: str
) -> None:
    result = d2(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert message in result.stderr and "Usage: d2 " in result.stderr


def test_an_error_after_parsing_keeps_its_own_json_error(d2: Invoke) -> None:
    result = d2("inspect", "--json", "--policy", "missing.yaml")
    assert result.exit_code == 2
    error = _one_document(result.stdout)["error"]
    assert "no policy file at missing.yaml" in error["message"]


def test_json_after_a_double_dash_is_not_the_option() -> None:
    assert wants_json(["check", "--json"]) and wants_json(["--json"])
    assert not wants_json(["check", "--", "--json"])
    assert not wants_json(["check", "--jsonx"])


def test_help_and_version_with_json_still_print_them(d2: Invoke) -> None:
    result = d2("renew", "--json", "--help")
    assert result.exit_code == 0 and "--days" in result.stdout


def test_main_and_python_dash_m_d2_print_the_json_error_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--json"]) == 2
    captured = capsys.readouterr()
    assert _one_document(captured.out)["error"]["message"] == "Missing argument 'tool'."
    proc = subprocess.run(
        [sys.executable, "-m", "d2", "diagnose", "--bogus", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert _one_document(proc.stdout)["error"]["message"].startswith("No such option: --bogus")
    assert "No such option" in proc.stderr


def test_a_successful_json_command_still_exits_with_its_code(d2: Invoke, write_policy: Any) -> None:
    write_policy({"role": "analyst", "permissions": ["billing:read"]})
    allowed = d2("check", "--json", "--role", "analyst", "billing:read")
    assert allowed.exit_code == 0 and _one_document(allowed.stdout)["allowed"] is True
    denied = d2("check", "--json", "--role", "analyst", "billing:refund")
    assert denied.exit_code == 1 and _one_document(denied.stdout)["allowed"] is False
    assert main(["check", "--json", "--role", "analyst", "billing:refund"]) == 1
