"""The command itself: entry points, exit codes of usage errors, the documented
commands, a light import, and the public surface of each module."""

from __future__ import annotations

import importlib
import pkgutil
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import d2.cli
import d2.core
import pytest
import typer
from cli_testkit import Invoke
from d2.cli import app, main

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "cli.md"
COMMANDS = {
    "init",
    "inspect",
    "diagnose",
    "check",
    "test",
    "replay",
    "renew",
    "pull",
    "draft",
    "publish",
    "revoke",
    "approvals",
}


def test_every_command_is_registered() -> None:
    group = typer.main.get_command(app)
    assert set(group.commands) == COMMANDS  # type: ignore[attr-defined]


def test_main_returns_the_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith(f"d2 {d2.core.__version__} ")
    assert main(["no-such-command"]) == 2
    assert main([]) == 2  # no command: help, and a usage error
    assert main(["init", "--format", "toml"]) == 2


def test_python_dash_m_d2_runs_the_cli(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "d2", "check", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--role" in proc.stdout
    denied = subprocess.run(
        [sys.executable, "-m", "d2", "inspect", "--policy", "missing.json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert denied.returncode == 2 and "no policy file" in denied.stderr


def test_the_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "d2"
    if not exe.exists():
        pytest.skip("the d2 script is not installed in this environment")
    proc = subprocess.run(
        [str(exe), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0 and proc.stdout.startswith("d2 ")


def test_importing_the_cli_stays_light() -> None:
    code = (
        "import sys, d2.cli\n"
        "heavy = [m for m in ('httpx', 'd2.cloud', 'jwt', 'cryptography', 'ruamel', "
        "'d2.server') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    assert out == "[]"


def test_d2_core_never_imports_the_cli() -> None:
    src = ROOT / "packages" / "d2-core" / "src"
    offenders = [
        str(path)
        for path in src.rglob("*.py")
        if re.search(r"^\s*(from|import)\s+d2\.cli\b", path.read_text(), re.M)
    ]
    assert offenders == []


def _documented() -> list[list[str]]:
    blocks = re.findall(r"^```bash\n(.*?)^```", DOC.read_text(), re.M | re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            words = shlex.split(line.split(" #", 1)[0])
            while words and "=" in words[0] and not words[0].startswith("-"):
                words = words[1:]  # VAR=value prefixes
            if words[:1] == ["d2"]:
                commands.append(words[1:])
    return commands


def test_every_command_has_a_documented_example_that_parses() -> None:
    commands = _documented()
    assert {c[0] for c in commands if c and not c[0].startswith("-")} == COMMANDS
    group = typer.main.get_command(app)
    for words in commands:
        if not words or words[0].startswith("-"):
            continue
        parent = group.make_context("d2", [words[0]])
        command = group.commands[words[0]]  # type: ignore[attr-defined]
        command.make_context(words[0], list(words[1:]), parent=parent)  # raises if bad


def test_a_bad_flag_is_a_usage_error(d2: Invoke) -> None:
    result = d2("check", "--bogus")
    assert result.exit_code == 2
    result = d2("pull", "--format", "toml")
    assert result.exit_code == 2


MODULES = sorted(m.name for m in pkgutil.iter_modules(d2.cli.__path__, "d2.cli."))


def _public(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", module.__name__) == module.__name__
        and callable(value)
    }


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_the_public_names_and_each_has_a_docstring(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__doc__
    exported = set(module.__all__)
    assert exported <= set(vars(module)), "exported but undefined"
    assert _public(module) <= exported, f"public but not exported: {_public(module) - exported}"
    for item in exported:
        value = getattr(module, item)
        if callable(value) and not isinstance(value, typer.Typer):
            assert getattr(value, "__doc__", None), f"{name}.{item} has no docstring"
