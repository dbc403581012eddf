"""One version for every distribution: the repository's VERSION file."""

from __future__ import annotations

import re
from pathlib import Path

import d2
import d2.core
import tomllib

ROOT = Path(__file__).resolve().parents[3]


def test_every_package_and_pin_uses_the_single_version() -> None:
    version = (ROOT / "VERSION").read_text().strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+([a-z]+\d+)?", version)
    assert d2.__version__ == d2.core.__version__ == version
    names = []
    for pyproject in sorted((ROOT / "packages").glob("*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        names.append(project["name"])
        assert project["version"] == version, pyproject
        deps = list(project.get("dependencies", []))
        for extra in project.get("optional-dependencies", {}).values():
            deps += extra
        for dep in deps:
            if dep.startswith("d2-"):
                assert dep.endswith(f"=={version}"), (pyproject, dep)
    assert {"d2-core", "d2-sdk"} <= set(names)


def test_the_commands_report_the_same_version() -> None:
    import subprocess
    import sys

    version = (ROOT / "VERSION").read_text().strip()
    d2_cli = subprocess.run(
        [sys.executable, "-m", "d2", "--version"], capture_output=True, text=True, check=True
    )
    assert d2_cli.stdout.split() == ["d2", version, "(d2-core", f"{version})"]
    server = subprocess.run(
        [sys.executable, "-c", "from d2.server.cli import main; main(['--version'])"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert server.returncode == 0, server.stderr
    assert server.stdout.strip() == f"d2-server {version}"
    from d2.server import __version__ as server_version

    assert server_version == version


def test_version_is_2_so_the_package_index_picks_it_over_1x() -> None:
    # d2-sdk 1.2.2 is on the package index: a lower version would never be installed
    major = int((ROOT / "VERSION").read_text().strip().split(".")[0])
    assert major >= 2
