"""Find the guarded tools of a code base by reading its source with :mod:`ast`;
nothing is imported or run.

A tool is a function decorated with ``@d2_guard`` or ``@d2`` (bare, called with an
explicit id, or called with only options), imported under any name::

    from d2 import d2_guard as guard        # @guard("billing:read")
    import d2 as x                          # @x.d2_guard(...)  @x.d2
    from d2.core import d2                  # @d2
    guarded = d2.core.d2_guard              # @guarded("t") (module-level alias)

and the call form ``d2_guard("tool.id")(function)``. Without an explicit id the id
is ``module.qualname``, as ``d2_guard`` computes it: the module is the file's
import path (packages are directories with ``__init__.py``; a ``src/`` layout
namespace package counts too). Virtualenvs, build output, caches, VCS and hidden
directories, ``node_modules`` and test directories are skipped.
"""

from __future__ import annotations

import ast
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SKIP_DIRS", "GuardedTool", "ScanResult", "module_name", "scan"]

SKIP_DIRS = frozenset(
    {
        "__pycache__",
        "build",
        "dist",
        "env",
        "venv",
        "site-packages",
        "dist-packages",
        "node_modules",
        "tests",
        "test",
    }
)
_GUARDS = frozenset(
    f"{module}.{name}"
    for module in ("d2", "d2.core", "d2.core.guard")
    for name in ("d2_guard", "d2")
)
_GUARD_MODULES = frozenset({"d2", "d2.core", "d2.core.guard"})
_MAX_FILE = 5 * 1024 * 1024


@dataclass(frozen=True)
class GuardedTool:
    """One guarded function: its tool id, where it is (``path`` relative to the
    scanned root, ``line``), its ``qualname``, whether the id was written out
    (``explicit``), and its parameters (``var_keyword``: it takes ``**kwargs``;
    ``signature_known`` is False for the call form, whose target is not read)."""

    tool_id: str
    path: str
    line: int
    qualname: str
    explicit: bool
    params: tuple[str, ...] = ()
    var_keyword: bool = False
    signature_known: bool = True
    defaults: tuple[tuple[str, Any], ...] = ()  # literal defaults only

    @property
    def where(self) -> str:
        """``path:line``."""
        return f"{self.path}:{self.line}"


@dataclass
class ScanResult:
    """What a scan found: the ``tools``, how many Python ``files`` were read, and
    ``problems`` (unparsable files, ids that cannot be read without running code)."""

    root: Path
    tools: list[GuardedTool] = field(default_factory=list)
    files: int = 0
    problems: list[str] = field(default_factory=list)

    def ids(self) -> list[str]:
        """The distinct tool ids, sorted."""
        return sorted({t.tool_id for t in self.tools})

    def by_id(self) -> dict[str, list[GuardedTool]]:
        """Tool id -> every function guarded under it."""
        out: dict[str, list[GuardedTool]] = {}
        for tool in self.tools:
            out.setdefault(tool.tool_id, []).append(tool)
        return out


def _skipped(directory: str, name: str) -> bool:
    return (
        name in SKIP_DIRS
        or name.startswith(".")
        or name.endswith(".egg-info")
        or os.path.isfile(os.path.join(directory, name, "pyvenv.cfg"))  # any virtualenv
    )


def _python_files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not _skipped(directory, d))
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield Path(directory, name)


def module_name(path: Path) -> str:
    """The import path of the module in ``path``: its package directories (those
    with ``__init__.py``) and, in a ``src/`` layout, the namespace package under
    ``src``."""
    path = path.resolve()
    parts = [] if path.stem == "__init__" else [path.stem]
    directory = path.parent
    while (directory / "__init__.py").is_file():
        parts.insert(0, directory.name)
        directory = directory.parent
    if directory.parent.name == "src" and directory.name.isidentifier():
        parts.insert(0, directory.name)
    return ".".join(parts) or path.stem


class _Names:
    """What the names of one module refer to: d2 modules and guard functions."""

    def __init__(self, tree: ast.Module) -> None:
        self.modules: dict[str, str] = {}
        self.guards: dict[str, str] = {}
        self.constants: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        self.modules[alias.asname] = alias.name
                    else:
                        top = alias.name.split(".")[0]
                        self.modules[top] = top
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                self._import_from(node.module, node.names)
        for stmt in tree.body:  # module-level aliases and string constants, in order
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                target = stmt.targets[0]
                if not isinstance(target, ast.Name):
                    continue
                if isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
                    self.constants[target.id] = stmt.value.value
                elif self.is_guard(stmt.value):
                    self.guards[target.id] = self.resolve(stmt.value) or "d2.d2_guard"

    def _import_from(self, module: str, names: list[ast.alias]) -> None:
        for alias in names:
            if alias.name == "*":
                if module in _GUARD_MODULES:
                    self.guards.setdefault("d2_guard", f"{module}.d2_guard")
                    self.guards.setdefault("d2", f"{module}.d2")
                continue
            full = f"{module}.{alias.name}"
            local = alias.asname or alias.name
            if full in _GUARDS:
                self.guards[local] = full
            elif full in _GUARD_MODULES:
                self.modules[local] = full

    def resolve(self, node: ast.expr) -> str | None:
        """The dotted name ``node`` refers to, when it starts from a known name."""
        if isinstance(node, ast.Name):
            return self.guards.get(node.id) or self.modules.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def is_guard(self, node: ast.expr) -> bool:
        """Whether ``node`` is ``d2_guard`` (or ``d2``) under any of its names.
        A bare ``d2_guard`` counts even when imported from elsewhere (re-exports)."""
        if isinstance(node, ast.Name) and node.id == "d2_guard":
            return True
        return self.resolve(node) in _GUARDS

    def literal(self, node: ast.expr) -> str | None:
        """A string the source spells out: a literal or a module-level constant."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return self.constants.get(node.id)
        return None


def _tool_id_arg(call: ast.Call) -> ast.expr | None:
    if call.args:
        return call.args[0]
    return next((k.value for k in call.keywords if k.arg == "tool_id"), None)


class _Visitor(ast.NodeVisitor):
    def __init__(self, names: _Names, module: str, rel: str, result: ScanResult) -> None:
        self.names = names
        self.module = module
        self.rel = rel
        self.result = result
        self.scope: list[str] = []

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._function(node)

    def visit_Call(self, node: ast.Call) -> None:
        # d2_guard("tool.id")(function): the call form
        inner = node.func
        if isinstance(inner, ast.Call) and self.names.is_guard(inner.func):
            arg = _tool_id_arg(inner)
            tool_id = self.names.literal(arg) if arg is not None else None
            if tool_id:
                self._add(
                    GuardedTool(tool_id, self.rel, node.lineno, "<call>", True, (), True, False)
                )
            else:
                self._unreadable(node.lineno)
        self.generic_visit(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        qualname = ".".join([*self.scope, node.name])
        for dec in node.decorator_list:
            self._decorator(dec, node, qualname)
        for dec in node.decorator_list:
            self.visit(dec)
        self.scope.extend([node.name, "<locals>"])
        for stmt in node.body:
            self.visit(stmt)
        del self.scope[-2:]

    def _decorator(
        self, dec: ast.expr, node: ast.FunctionDef | ast.AsyncFunctionDef, qualname: str
    ) -> None:
        explicit: str | None = None
        if self.names.is_guard(dec):
            pass
        elif isinstance(dec, ast.Call) and self.names.is_guard(dec.func):
            arg = _tool_id_arg(dec)
            if arg is not None and not (isinstance(arg, ast.Constant) and arg.value is None):
                explicit = self.names.literal(arg)
                if not explicit:
                    self._unreadable(dec.lineno)
                    return
        else:
            return
        a = node.args
        params = tuple(p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs))
        tool_id = explicit or f"{self.module}.{qualname}"
        positional = (*a.posonlyargs, *a.args)
        pairs = list(zip(positional[len(positional) - len(a.defaults) :], a.defaults, strict=True))
        pairs += [(p, d) for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is not None]
        defaults = []
        for param, node_default in pairs:
            try:
                defaults.append((param.arg, ast.literal_eval(node_default)))
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue  # not a literal: only known at run time
        self._add(
            GuardedTool(
                tool_id,
                self.rel,
                node.lineno,
                qualname,
                explicit is not None,
                params,
                a.kwarg is not None,
                defaults=tuple(defaults),
            )
        )

    def _add(self, tool: GuardedTool) -> None:
        self.result.tools.append(tool)

    def _unreadable(self, line: int) -> None:
        self.result.problems.append(
            f"{self.rel}:{line}: the tool id is computed at run time, so a scan cannot "
            "read it; write it as a string literal or a module-level constant"
        )


def scan(root: Path) -> ScanResult:
    """Scan ``root`` (a directory or one file) for guarded tools."""
    root = root.resolve()
    result = ScanResult(root)
    for path in _python_files(root):
        rel = path.name if root.is_file() else path.relative_to(root).as_posix()
        try:
            if path.stat().st_size > _MAX_FILE:
                continue
            data = path.read_bytes()
        except OSError:
            continue
        result.files += 1
        if b"d2" not in data:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. invalid escapes: not our business
                tree = ast.parse(data, filename=str(path))
        except (SyntaxError, ValueError) as exc:
            result.problems.append(f"{rel}: not parsed ({type(exc).__name__}: {exc})")
            continue
        except (RecursionError, MemoryError) as exc:
            result.problems.append(f"{rel}: not parsed ({type(exc).__name__}: nested too deeply)")
            continue
        try:
            _Visitor(_Names(tree), module_name(path), rel, result).visit(tree)
        except (RecursionError, MemoryError) as exc:
            result.problems.append(f"{rel}: not parsed ({type(exc).__name__}: nested too deeply)")
    return result
