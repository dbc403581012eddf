"""The distributions as users install them: every wheel and sdist as ``make dist``
builds them, checked for what the package index shows, and installed in fresh
virtualenvs.

``d2-core`` alone gives ``from d2.core import ...`` and no facade; adding ``d2-sdk``
gives the ``d2`` facade over the same namespace. Those two are installed without
dependencies (``--no-deps``): the cold path of a JSON policy needs none, which this
also proves. The last test installs ``d2-sdk[yaml]`` with pip from the built files
and the package index together, as the quickstart does, and checks that pip picks
the built release over every earlier one on the index.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
UV = shutil.which("uv")
pytestmark = pytest.mark.skipif(UV is None, reason="uv is needed to build the wheels")


DISTRIBUTIONS = sorted(
    tomllib.loads(p.read_text())["project"]["name"]
    for p in (ROOT / "packages").glob("*/pyproject.toml")
)
VERSION = (ROOT / "VERSION").read_text().strip()


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every wheel and sdist, built the way ``make dist`` builds them."""
    out = tmp_path_factory.mktemp("dist")
    make = (ROOT / "Makefile").read_text()
    assert "build --all-packages --out-dir dist" in make  # the same command as below
    subprocess.run(
        [UV, "build", "--all-packages", "--out-dir", str(out), "--quiet"],
        cwd=ROOT,
        check=True,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
        timeout=600,
    )
    return out


@pytest.fixture(scope="module")
def wheels(dist: Path) -> dict[str, Path]:
    return {w.name.split("-")[0].replace("_", "-"): w for w in dist.glob("*.whl")}


def _metadata(text: str) -> email.message.Message:
    return email.message_from_string(text, policy=email.policy.compat32)


def test_make_dist_builds_a_wheel_and_an_sdist_of_every_distribution(dist: Path) -> None:
    built = sorted(p.name for p in dist.iterdir() if p.name.endswith((".whl", ".tar.gz")))
    expected = []
    for name in DISTRIBUTIONS:
        stem = name.replace("-", "_")
        expected += [f"{stem}-{VERSION}-py3-none-any.whl", f"{stem}-{VERSION}.tar.gz"]
    assert built == sorted(expected)


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_every_file_carries_the_license_and_what_the_index_shows(dist: Path, name: str) -> None:
    stem = name.replace("-", "_")
    license_text = (ROOT / "LICENSE").read_text()
    assert "Change Date:" in license_text and "Business Source License 1.1" in license_text
    with zipfile.ZipFile(dist / f"{stem}-{VERSION}-py3-none-any.whl") as wheel:
        info = f"{stem}-{VERSION}.dist-info"
        assert wheel.read(f"{info}/licenses/LICENSE").decode() == license_text
        meta = _metadata(wheel.read(f"{info}/METADATA").decode())
    with tarfile.open(dist / f"{stem}-{VERSION}.tar.gz") as sdist:
        top = f"{stem}-{VERSION}"
        member = sdist.extractfile(f"{top}/LICENSE")
        assert member is not None and member.read().decode() == license_text
        pkg_info = sdist.extractfile(f"{top}/PKG-INFO")
        assert pkg_info is not None
        assert _metadata(pkg_info.read().decode())["Version"] == VERSION
    assert meta["Name"] == name and meta["Version"] == VERSION
    assert meta["License-Expression"] == "BUSL-1.1"
    assert meta["Author"] == "The D2 authors"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert urls["Homepage"] == "https://pypi.org/project/d2-sdk/"
    description = meta.get_payload()
    assert meta["Description-Content-Type"] == "text/markdown"
    # useful on the index: what it is, how to install it, an example, links
    assert description.startswith(f"# {name}\n") and len(description) > 600
    assert "pip install" in description
    assert "```python" in description or "```bash" in description
    assert "https://pypi.org/project/d2-sdk/" in description
    assert "](docs/" not in description and "](../" not in description  # no dead links


def test_the_all_extra_is_every_other_extra(dist: Path) -> None:
    with zipfile.ZipFile(dist / f"d2_sdk-{VERSION}-py3-none-any.whl") as wheel:
        meta = _metadata(wheel.read(f"d2_sdk-{VERSION}.dist-info/METADATA").decode())
    from packaging.requirements import Requirement

    by_extra: dict[str, dict[str, set[str]]] = {}
    for line in meta.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None:
            continue
        extra = str(req.marker).split("==")[1].strip().strip("'\"")
        by_extra.setdefault(extra, {}).setdefault(req.name, set()).update(req.extras)
    everything = by_extra.pop("all")
    for extra, requirements in by_extra.items():
        for name, extras in requirements.items():
            assert name in everything and extras <= everything[name], (extra, name, extras)
    assert {"d2-server", "d2-cloud", "d2-cli", "d2-agents", "d2-asgi", "d2-gateway"} <= set(
        everything
    )
    assert {"otel", "redis", "yaml"} <= everything["d2-core"]


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


def test_pip_installs_the_built_release_of_d2_sdk_yaml_over_the_index(
    dist: Path, tmp_path: Path
) -> None:
    # the quickstart's first command, with the freshly built files next to the index
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True, timeout=120)
    python = tmp_path / "venv" / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "D2_"))}
    proc = subprocess.run(
        [
            str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--find-links", str(dist), "d2-sdk[yaml]",
        ],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = run(
        python,
        (
            "import importlib.metadata as m, d2, ruamel.yaml\n"
            "print(m.version('d2-sdk'), m.version('d2-core'), d2.__version__)\n"
        ),
        tmp_path,
    )
    assert out == f"{VERSION} {VERSION} {VERSION}"


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
