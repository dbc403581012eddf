"""Usage errors under ``--json``: click rejects a bad command line (an unknown
option, a missing argument, a bad value) before any command runs, so the
command's own ``--json`` handling never sees it. The ``d2`` group catches those
errors when ``--json`` is on the command line and prints the same JSON error
document the commands print (``{"ok": false, "error": {...}}``, exit code 2);
the usual human message goes to stderr. Without ``--json`` nothing changes."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from .output import CliError, Output

__all__ = ["JsonUsageGroup", "wants_json"]


def _click_exception() -> type[Exception]:
    """click's ``ClickException``, the base of every usage error (found through
    ``typer.BadParameter``: typer may bundle its own copy of click)."""
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == "ClickException":
            return cls
    raise ImportError("typer.BadParameter does not derive from ClickException")  # pragma: no cover


_CLICK_EXCEPTION = _click_exception()


def wants_json(args: Sequence[str]) -> bool:
    """Whether ``--json`` is among ``args`` (before a ``--`` that ends the options)."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json" or arg.startswith("--json="):
            return True
    return False


def _report(exc: Any, fallback: str) -> NoReturn:
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else fallback
    usage = ctx.get_usage().strip() if ctx is not None else None
    code = int(getattr(exc, "exit_code", 2))
    error = CliError(
        exc.format_message(),
        code=code,
        details=[usage] if usage else (),
        hint=f"run `{where} --help` for the options and arguments",
    )
    try:  # the human form, as without --json, on stderr
        from typer import rich_utils

        rich_utils.rich_format_error(exc)
    except Exception:  # pragma: no cover - rich formatting is a courtesy only
        exc.show()
    Output(as_json=True).fail(error)
    sys.exit(code)


class JsonUsageGroup(TyperGroup):
    """The ``d2`` command group: a usage error with ``--json`` on the command line
    prints one JSON error document on stdout (see the module docstring)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode or not wants_json(argv):
            return super().main(
                argv, prog_name, complete_var, standalone_mode, windows_expand_args, **extra
            )
        try:
            result = super().main(
                argv, prog_name, complete_var, False, windows_expand_args, **extra
            )
        except _CLICK_EXCEPTION as exc:
            named = next((a for a in argv if a in self.commands), None)
            _report(exc, f"{prog_name or 'd2'} {named}" if named else prog_name or "d2")
        except typer.Abort:
            Output(as_json=True).fail(CliError("aborted", code=1))
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)
