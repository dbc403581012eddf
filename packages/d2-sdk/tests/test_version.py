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
