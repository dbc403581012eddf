"""The public surface: ``__all__`` lists exactly the public names of each module."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import types

import d2.server
import pytest

MODULES = sorted(m.name for m in pkgutil.iter_modules(d2.server.__path__, "d2.server."))


def _public(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and name.isidentifier()  # pydantic files its generic classes as "RootModel[...]"
        and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", module.__name__) == module.__name__
        and name not in {"annotations"}
    }


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_every_public_name_defined_in_the_module(name: str) -> None:
    module = importlib.import_module(name)
    exported = set(module.__all__)
    assert exported <= set(vars(module)), "exported but undefined"
    defined_here = {n for n in _public(module) if callable(vars(module)[n])}
    assert defined_here <= exported, f"public but not exported: {defined_here - exported}"


def test_the_package_exports_its_entry_points() -> None:
    assert sorted(d2.server.__all__) == sorted(
        [
            "ApiError",
            "ControlPlane",
            "Quotas",
            "SQLStorage",
            "ServerConfig",
            "SigningKey",
            "Storage",
            "__version__",
            "create_app",
        ]
    )
    for name in d2.server.__all__:
        assert getattr(d2.server, name) is not None


def test_the_package_never_imports_the_test_harness() -> None:
    # d2.server.testing needs httpx, which is not a dependency of d2-server.
    spec = importlib.util.find_spec("d2.server")
    assert spec is not None and spec.origin is not None
    with open(spec.origin) as fh:
        imports = [line for line in fh if line.startswith(("from ", "import "))]
    assert not any("testing" in line for line in imports)
