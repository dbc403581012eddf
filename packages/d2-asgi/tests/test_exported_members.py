"""The public surface: ``__all__`` matches the public names, every one is documented,
and Starlette is imported only when the 403 handler is used."""

from __future__ import annotations

import subprocess
import sys
import types

import d2
import d2.asgi
import d2.asgi.types
import pytest


def public_names(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_all_is_sorted_and_matches_the_public_names() -> None:
    assert d2.asgi.__all__ == sorted(set(d2.asgi.__all__))
    for name in d2.asgi.__all__:
        getattr(d2.asgi, name)  # resolves the lazily imported names too
    assert public_names(d2.asgi) - {"annotations", "TYPE_CHECKING", "Any"} == set(d2.asgi.__all__)
    assert dir(d2.asgi) == d2.asgi.__all__


def test_every_public_name_has_a_docstring() -> None:
    for name in d2.asgi.__all__:
        value = getattr(d2.asgi, name)
        if isinstance(value, str):  # the header-name constants
            continue
        assert (value.__doc__ or "").strip(), name


def test_the_types_module_exports_its_aliases() -> None:
    exported = set(d2.asgi.types.__all__)
    assert exported == public_names(d2.asgi.types) - {
        "annotations",
        "Any",
        "Awaitable",
        "Callable",
        "Iterable",
        "MutableMapping",
        "Protocol",
        "TracebackType",
    }


def test_an_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        d2.asgi.no_such_name


def test_the_d2_facade_resolves_to_these_objects() -> None:
    assert d2.ASGIMiddleware is d2.asgi.ASGIMiddleware
    assert d2.headers_extractor is d2.asgi.headers_extractor


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_importing_d2_asgi_does_not_import_starlette() -> None:
    proc = run(
        "import sys, d2.asgi\n"
        "assert d2.asgi.ASGIMiddleware and d2.asgi.WSGIMiddleware\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'fastapi')))"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_without_starlette_the_middleware_works_and_the_handler_names_the_extra() -> None:
    proc = run(
        "import sys\n"
        "sys.modules['starlette'] = None  # as if it were not installed\n"
        "import d2.asgi\n"
        "assert callable(d2.asgi.ASGIMiddleware(lambda s, r, w: None))\n"
        "try:\n"
        "    from d2.asgi import add_permission_denied_handler\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "d2-sdk[asgi]"' in proc.stdout


def test_importing_d2_asgi_imports_neither_pyjwt_nor_httpx() -> None:
    proc = run(
        "import sys, d2.asgi, d2.asgi.bearer, d2.asgi.testing\n"
        "assert callable(d2.asgi.jwt_extractor)\n"
        "heavy = ('jwt', 'httpx', 'cryptography')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_without_pyjwt_the_jwt_extractor_names_the_extra() -> None:
    proc = run(
        "import sys\n"
        "sys.modules['jwt'] = None  # as if it were not installed\n"
        "from d2.asgi import jwt_extractor\n"
        "try:\n"
        "    jwt_extractor(jwks_url='https://idp.invalid/jwks', audience='a')\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "d2-asgi[jwt]"' in proc.stdout


def test_without_starlette_the_inbox_names_the_extra() -> None:
    proc = run(
        "import sys\n"
        "sys.modules['starlette'] = None\n"
        "try:\n"
        "    import d2.asgi.approvals\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "d2-sdk[asgi]"' in proc.stdout


def test_bearer_protected_is_imported_on_first_use() -> None:
    proc = run(
        "import sys, d2.asgi\n"
        "print('d2.asgi.protected' in sys.modules)\n"
        "from d2.asgi import BearerProtected\n"
        "print('d2.asgi.protected' in sys.modules, BearerProtected.__module__)"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["False", "True d2.asgi.protected"]
