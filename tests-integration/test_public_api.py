"""Every distribution's public API: ``__all__`` declared, every name in it real and
documented, and ``py.typed`` shipped (the brief's public-API standard)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["d2.core", "d2.cloud", "d2.asgi", "d2.agents", "d2.server", "d2.cli", "d2.gateway"]


def public_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        try:
            module = importlib.import_module(package)
        except ImportError:
            continue
        names.append(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                names.append(info.name)
    return names


OPTIONAL = (
    "d2.agents.mcp",
    "d2.agents.langchain",
    "d2.agents.openai_agents",
    "d2.agents.pydantic_ai",
    "d2.asgi.starlette",
    "d2.asgi.approvals",
    "d2.server.testing",
    "d2.core.stores.redis",
)


@pytest.mark.parametrize("name", public_modules())
def test_public_module_declares_and_documents_its_api(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ImportError:
        if name in OPTIONAL:
            pytest.skip(f"{name} needs an extra that is not installed")
        raise
    assert module.__doc__, f"{name} has no module docstring"
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} declares no __all__"
    undocumented = []
    for attr in exported:
        assert hasattr(module, attr), f"{name}.__all__ names a missing {attr!r}"
        value = getattr(module, attr)
        if (inspect.isclass(value) or inspect.isfunction(value)) and not inspect.getdoc(value):
            undocumented.append(attr)
    assert undocumented == [], f"{name}: no docstring on {undocumented}"


def test_every_distribution_ships_py_typed() -> None:
    for src in sorted((ROOT / "packages").glob("*/src/d2")):
        if (src / "__init__.py").exists():  # the facade
            assert (src / "py.typed").exists()
            continue
        for sub in src.iterdir():
            if sub.is_dir() and not sub.name.startswith("__"):
                assert (sub / "py.typed").exists(), sub
