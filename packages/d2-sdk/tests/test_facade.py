"""The stable ``d2`` facade: every 1.x name still imports, ``__all__`` matches the
public names, optional parts fail with the extra to install."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import d2
import d2.core
import d2.exceptions
import pytest

# The stable symbols the 1.x releases documented (the seed's list).
STABLE_1X = {
    "d2_guard",
    "d2",
    "configure_rbac_async",
    "configure_rbac_sync",
    "shutdown_rbac",
    "shutdown_all_rbac",
    "get_policy_manager",
    "set_user",
    "set_user_context",
    "get_user_context",
    "clear_user_context",
    "warn_if_context_set",
    "ASGIMiddleware",
    "headers_extractor",
    "clear_context",
    "clear_context_async",
    "PermissionDeniedError",
    "MissingPolicyError",
    "BundleExpiredError",
    "TooManyToolsError",
    "PolicyTooLargeError",
    "InvalidSignatureError",
    "ConfigurationError",
    "D2PlanLimitError",
    "D2Error",
    # in the 1.x __all__ too (its API reference)
    "configure_rbac",
    "PolicyError",
    "ContextLeakWarning",
    "D2NoContextError",
}


def test_every_stable_1x_symbol_is_exported() -> None:
    assert set(d2.__all__) >= STABLE_1X


def test_all_is_sorted_unique_and_matches_public_names() -> None:
    assert d2.__all__ == sorted(set(d2.__all__))
    public = {
        n for n, v in vars(d2).items() if not n.startswith("_") and not isinstance(v, type(sys))
    } | set(d2._LAZY)
    public.add("__version__")
    assert set(d2.__all__) == public
    assert dir(d2) == sorted(d2.__all__)


def test_facade_objects_are_the_core_objects() -> None:
    for name in d2.__all__:
        if name in d2._LAZY:
            continue
        core_name = "configure_rbac_async" if name == "configure_rbac" else name  # 1.x alias
        assert getattr(d2, name) is getattr(d2.core, core_name), name


def test_core_all_matches_its_public_names() -> None:
    public = {
        n
        for n, v in vars(d2.core).items()
        if not n.startswith("_") and not isinstance(v, type(sys))
    }
    assert set(d2.core.__all__) == public | {"__version__"}


def test_exceptions_module_keeps_the_1x_import_path() -> None:
    from d2.exceptions import PermissionDeniedError

    assert PermissionDeniedError is d2.PermissionDeniedError
    assert set(d2.exceptions.__all__) == {n for n in STABLE_1X if n.endswith("Error")} | {
        "InvalidPolicyError",
        "ApprovalRequiredError",
        "PolicyError",
        "D2NoContextError",
        "ContextLeakWarning",
        "STATUS_MAP",
    }


def test_names_from_missing_packages_fail_with_the_extra_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['d2.asgi'] = None  # as if d2-asgi were not installed\n"
        "import d2\n"
        "try:\n"
        "    from d2 import ASGIMiddleware\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert 'pip install "d2-sdk[asgi]"' in out


def test_lazy_names_resolve_when_installed() -> None:
    for name, (module, attr, _extra) in d2._LAZY.items():
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        assert getattr(d2, name) is getattr(importlib.import_module(module), attr)


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        d2.no_such_name  # type: ignore[attr-defined]


def test_facade_starts_with_extend_path_and_has_a_docstring() -> None:
    source = Path(d2.__file__ or "").read_text(encoding="utf-8")
    assert source.startswith('__path__ = __import__("pkgutil").extend_path(__path__, __name__)')
    assert d2.__doc__ and "default-deny" in d2.__doc__


def test_python_dash_m_d2_without_cli_names_the_extra() -> None:
    code = (
        "import runpy, sys\n"
        "sys.modules['d2.cli'] = None  # as if d2-cli were not installed\n"
        "sys.argv = ['d2']\n"
        "runpy.run_module('d2', run_name='__main__')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 2
    assert 'pip install "d2-sdk[cli]"' in proc.stderr


def test_python_dash_m_d2_runs_the_cli_when_installed() -> None:
    pytest.importorskip("d2.cli")
    proc = subprocess.run(
        [sys.executable, "-m", "d2", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0 and "publish" in proc.stdout


def test_cold_import_pulls_no_heavy_module() -> None:
    code = (
        "import sys, d2, os, json, tempfile, time\n"
        "exp = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(time.time() + 86400))\n"
        "doc = {'metadata': {'expires': exp}, 'policies': [{'role': 'a', 'permissions': ['t']}]}\n"
        "path = os.path.join(tempfile.mkdtemp(), 'policy.json')\n"
        "open(path, 'w').write(json.dumps(doc))\n"
        "os.environ['D2_SILENT'] = '1'\n"
        "m = d2.configure_rbac_sync(source=path)\n"
        "d2.set_user('u', roles=['a'])\n"
        "assert d2.d2_guard('t')(lambda: 1)() == 1\n"
        "heavy = [n for n in ('pydantic', 'ruamel', 'asyncio', 'inspect', 'dataclasses',\n"
        "         'logging', 'pathlib', 'd2.cloud', 'd2.cli', 'd2.asgi') if n in sys.modules]\n"
        "m.shutdown()\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    assert out == "[]"
