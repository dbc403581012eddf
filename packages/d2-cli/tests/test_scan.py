"""The ast scanner: every way a tool is guarded, default ids as d2_guard computes
them, skipped directories, and code that is never imported."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from d2.cli.scan import module_name, scan


def write(root: Path, rel: str, code: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code))
    return path


def test_every_import_form_and_alias_is_recognised(tmp_path: Path) -> None:
    write(
        tmp_path,
        "app.py",
        """
        import d2 as x
        from d2 import d2_guard as guard
        from d2.core import d2
        from d2.core import guard as guard_module
        from d2 import core as c

        alias = x.d2_guard

        @guard("a.explicit")
        def a(): ...

        @x.d2_guard("b.attribute", on_deny=None)
        def b(): ...

        @d2
        def c_default(): ...

        @guard_module.d2_guard("e.submodule")
        def e(): ...

        @c.d2()
        def f_called_without_id(): ...

        @alias("g.module_alias")
        def g(): ...

        TOOL = "h.constant"

        @guard(TOOL)
        def h(): ...

        @guard(None)
        def i_none(): ...
        """,
    )
    write(
        tmp_path,
        "other.py",
        """
        import d2.core

        @d2.core.d2_guard(tool_id="d.keyword")
        async def d(): ...
        """,
    )
    found = scan(tmp_path)
    assert found.ids() == sorted(
        [
            "d.keyword",
            "a.explicit",
            "b.attribute",
            "app.c_default",
            "e.submodule",
            "app.f_called_without_id",
            "g.module_alias",
            "h.constant",
            "app.i_none",
        ]
    )
    assert not found.problems
    tool = found.by_id()["a.explicit"][0]
    assert (tool.path, tool.line, tool.explicit) == ("app.py", 11, True)


def test_default_ids_follow_module_and_qualname(tmp_path: Path) -> None:
    write(tmp_path, "pkg/__init__.py", "")
    write(
        tmp_path,
        "pkg/tools.py",
        """
        from d2 import d2_guard

        class Billing:
            @d2_guard
            def read(self, customer_id, *, limit=10): ...

            class Inner:
                @staticmethod
                @d2_guard()
                def deep(x, **extra): ...

        def outer():
            @d2_guard
            def inner(): ...
            return inner
        """,
    )
    found = scan(tmp_path)
    ids = found.ids()
    assert ids == [
        "pkg.tools.Billing.Inner.deep",
        "pkg.tools.Billing.read",
        "pkg.tools.outer.<locals>.inner",
    ]
    read = found.by_id()["pkg.tools.Billing.read"][0]
    assert read.params == ("self", "customer_id", "limit") and not read.var_keyword
    assert found.by_id()["pkg.tools.Billing.Inner.deep"][0].var_keyword


def test_default_id_matches_what_d2_guard_computes(tmp_path: Path) -> None:
    write(tmp_path, "proj/__init__.py", "")
    write(
        tmp_path,
        "proj/mod.py",
        """
        from d2 import d2_guard

        class K:
            @d2_guard
            def m(self): ...

        @d2_guard
        def f(): ...
        """,
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import proj.mod  # type: ignore[import-not-found]

        real = {proj.mod.f.tool_id, proj.mod.K.m.tool_id}
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == "proj" or m.startswith("proj.")]:
            del sys.modules[name]
    assert set(scan(tmp_path).ids()) == real


def test_the_call_form_and_unreadable_ids(tmp_path: Path) -> None:
    write(
        tmp_path,
        "calls.py",
        """
        from d2 import d2_guard

        search = d2_guard("web.search")(lambda q: q)

        def make(name):
            return d2_guard(f"dyn.{name}")(print)

        @d2_guard(compute_id())
        def z(): ...
        """,
    )
    found = scan(tmp_path)
    assert found.ids() == ["web.search"]
    assert not found.by_id()["web.search"][0].signature_known
    assert len(found.problems) == 2
    assert all("computed at run time" in p for p in found.problems)


def test_other_decorators_and_unrelated_d2_names_are_ignored(tmp_path: Path) -> None:
    write(
        tmp_path,
        "other.py",
        """
        import d2
        from mylib import d2 as not_ours, guard

        @guard("x")
        def a(): ...

        @not_ours("y")
        def b(): ...

        @d2
        def c(): ...  # the module, not the decorator
        """,
    )
    assert scan(tmp_path).ids() == []


def test_a_reexported_d2_guard_still_counts(tmp_path: Path) -> None:
    write(tmp_path, "x.py", 'from myapp.security import d2_guard\n@d2_guard("t")\ndef f(): ...\n')
    assert scan(tmp_path).ids() == ["t"]


def test_skips_virtualenvs_build_output_vcs_and_tests(tmp_path: Path) -> None:
    code = 'from d2 import d2_guard\n@d2_guard("{}")\ndef f(): ...\n'
    write(tmp_path, "src/app.py", code.format("kept"))
    for skipped in (
        ".venv/lib/x.py",
        "venv/x.py",
        "build/x.py",
        "dist/x.py",
        ".git/x.py",
        "node_modules/x/y.py",
        "__pycache__/x.py",
        "tests/test_x.py",
        "pkg.egg-info/x.py",
        ".tox/py/x.py",
    ):
        write(tmp_path, skipped, code.format(skipped))
    write(tmp_path, "myenv/pyvenv.cfg", "home = /usr\n")
    write(tmp_path, "myenv/lib/site.py", code.format("virtualenv"))
    assert scan(tmp_path).ids() == ["kept"]


def test_never_imports_or_runs_the_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    write(
        tmp_path,
        "danger.py",
        f"""
        open({str(marker)!r}, "w").write("ran")
        raise SystemExit("imported!")
        from d2 import d2_guard

        @d2_guard("still.found")
        def f(): ...
        """,
    )
    assert scan(tmp_path).ids() == ["still.found"]
    assert not marker.exists()


def test_unparsable_files_are_reported_not_fatal(tmp_path: Path) -> None:
    write(tmp_path, "bad.py", "import d2\ndef broken(:\n")
    write(tmp_path, "warn.py", 'import d2\nx = "\\d"\n@d2.d2_guard("ok")\ndef f(): ...\n')
    found = scan(tmp_path)
    assert found.ids() == ["ok"]
    assert found.problems and found.problems[0].startswith("bad.py: not parsed")


def test_a_single_file_can_be_scanned(tmp_path: Path) -> None:
    path = write(tmp_path, "one.py", 'from d2 import d2\n@d2("t1")\ndef f(): ...\n')
    found = scan(path)
    assert found.ids() == ["t1"] and found.tools[0].path == "one.py"


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("script.py", "script"),
        ("pkg/__init__.py", "pkg"),
        ("pkg/sub/mod.py", "pkg.sub.mod"),
        ("src/ns/core/mod.py", "ns.core.mod"),
    ],
)
def test_module_names(tmp_path: Path, rel: str, expected: str) -> None:
    write(tmp_path, "pkg/__init__.py", "")
    write(tmp_path, "pkg/sub/__init__.py", "")
    write(tmp_path, "src/ns/core/__init__.py", "")
    path = write(tmp_path, rel, "")
    assert module_name(path) == expected


@pytest.mark.parametrize(
    "body", ["x = " + "1 + " * 100_000 + "1\n", "x = " + "-" * 200_000 + "1\n"]
)
def test_deeply_nested_source_is_reported_not_fatal(tmp_path: Path, body: str) -> None:
    (tmp_path / "deep.py").write_text("import d2\n" + body)
    (tmp_path / "ok.py").write_text("import d2\n\n@d2.guard\ndef search(q): ...\n")
    found = scan(tmp_path)
    assert any(p.startswith("deep.py: not parsed") for p in found.problems), found.problems
    assert found.files == 2
