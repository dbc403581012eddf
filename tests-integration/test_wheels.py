"""The distributions as users install them: built wheels in fresh virtualenvs.

``d2-core`` alone gives ``from d2.core import ...`` and no facade; adding ``d2-sdk``
gives the ``d2`` facade over the same namespace. Dependencies are not installed
(``--no-deps``): the cold path of a JSON policy needs none, which this also proves.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UV = shutil.which("uv")
pytestmark = pytest.mark.skipif(UV is None, reason="uv is needed to build the wheels")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    for package in ("d2-core", "d2-sdk"):
        subprocess.run(
            [UV, "build", "--wheel", "--package", package, "--out-dir", str(out), "--quiet"],
            cwd=ROOT,
            check=True,
            env=env,
            timeout=300,
        )
    return {w.name.split("-")[0].replace("_", "-"): w for w in out.glob("*.whl")}


def venv_with(tmp: Path, *wheel_files: Path) -> Path:
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    subprocess.run(
        [UV, "venv", "--quiet", "--python", sys.executable, str(tmp / "venv")],
        check=True,
        env=env,
        timeout=120,
    )
    python = tmp / "venv" / "bin" / "python"
    subprocess.run(
        [
            UV,
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--python",
            str(python),
            *map(str, wheel_files),
        ],
        check=True,
        env=env,
        timeout=300,
    )
    return python


def run(python: Path, code: str, tmp: Path) -> str:
    exp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))
    doc = {"metadata": {"expires": exp}, "policies": [{"role": "r", "permissions": ["t"]}]}
    (tmp / "policy.json").write_text(json.dumps(doc))
    env = {k: v for k, v in os.environ.items() if not k.startswith("D2_")}
    env.update(D2_SILENT="1", D2_POLICY_FILE=str(tmp / "policy.json"))
    proc = subprocess.run(
        [str(python), "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_core_wheel_ships_only_its_subpackage(wheels: dict[str, Path]) -> None:
    names = zipfile.ZipFile(wheels["d2-core"]).namelist()
    assert "d2/__init__.py" not in names
    assert "d2/core/__init__.py" in names and "d2/core/py.typed" in names
    sdk = zipfile.ZipFile(wheels["d2-sdk"]).namelist()
    assert "d2/__init__.py" in sdk and "d2/py.typed" in sdk
    assert not any(n.startswith("d2/core/") for n in sdk)


def test_core_alone_works_without_the_facade(wheels: dict[str, Path], tmp_path: Path) -> None:
    python = venv_with(tmp_path, wheels["d2-core"])
    out = run(
        python,
        (
            "import d2\n"
            "from d2.core import d2_guard, set_user, configure_rbac_sync\n"
            "configure_rbac_sync()\n"
            "set_user('u', roles=['r'])\n"
            "print(d2_guard('t')(lambda: 'ran')(), hasattr(d2, 'd2_guard'))\n"
        ),
        tmp_path,
    )
    assert out == "ran False"


def test_sdk_adds_the_facade_over_core(wheels: dict[str, Path], tmp_path: Path) -> None:
    python = venv_with(tmp_path, wheels["d2-core"], wheels["d2-sdk"])
    out = run(
        python,
        (
            "import d2\n"
            "from d2 import d2_guard, set_user, configure_rbac_sync, PermissionDeniedError\n"
            "from d2.exceptions import MissingPolicyError\n"
            "configure_rbac_sync()\n"
            "set_user('u', roles=['r'])\n"
            "import d2.core\n"
            "print(d2_guard('t')(lambda: 'ran')(), d2.d2_guard is d2.core.d2_guard)\n"
        ),
        tmp_path,
    )
    assert out == "ran True"


def test_core_source_never_imports_the_optional_packages() -> None:
    # The light package must not depend on the heavy ones (like opentelemetry-api
    # never importing the SDK); the cloud hand-over goes through importlib by name.
    src = ROOT / "packages" / "d2-core" / "src"
    offenders = []
    for path in src.rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")) and any(
                mod in stripped
                for mod in (
                    "d2.cloud",
                    "d2.cli",
                    "d2.asgi",
                    "pydantic",
                    "httpx",
                    "from d2 import",
                    "import d2\n",
                )
            ):
                offenders.append(f"{path.relative_to(src)}: {stripped}")
    assert offenders == []
