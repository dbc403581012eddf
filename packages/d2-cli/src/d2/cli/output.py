"""What the user sees: human text (rich, colours only on a terminal) or JSON for
scripts, the errors a command can end with, and the exit codes.

Exit codes: ``0`` success; ``1`` a policy problem or a denial (invalid policy,
refused publish, failed policy test, ``d2 check`` denied); ``2`` a usage or
configuration error (bad flag, missing file, missing ``D2_TOKEN``, unreachable
control plane).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import IO, Any

import typer
from d2.core.errors import (
    BundleExpiredError,
    D2Error,
    D2PlanLimitError,
    InvalidPolicyError,
    InvalidSignatureError,
    MissingPolicyError,
    PolicyTooLargeError,
    TooManyToolsError,
)
from rich.console import Console
from rich.markup import escape

__all__ = [
    "FAILED",
    "OK",
    "USAGE",
    "CliError",
    "Output",
    "failed",
    "from_d2_error",
    "run_command",
]

OK, FAILED, USAGE = 0, 1, 2


class CliError(Exception):
    """A command could not do its job: ``message``, the exit ``code`` (1 policy
    problem, 2 usage/configuration), ``details`` (one line each, e.g. error paths)
    and a ``hint`` saying what to do next."""

    def __init__(
        self,
        message: str,
        *,
        code: int = USAGE,
        details: Sequence[str] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = tuple(details)
        self.hint = hint

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of the error."""
        return {
            "message": self.message,
            "exit_code": self.code,
            "details": list(self.details),
            "hint": self.hint,
        }


def failed(message: str, *, details: Sequence[str] = (), hint: str | None = None) -> CliError:
    """A policy problem (exit code 1)."""
    return CliError(message, code=FAILED, details=details, hint=hint)


def from_d2_error(exc: D2Error) -> CliError:
    """A D2 error as a CLI error with the right exit code."""
    if isinstance(exc, InvalidPolicyError):
        return failed(
            f"invalid policy {exc.source} ({len(exc.errors)} problem"
            f"{'s' if len(exc.errors) != 1 else ''})",
            details=exc.errors,
            hint="fix each path listed above, then run the command again",
        )
    if isinstance(exc, MissingPolicyError):
        return CliError(str(exc))
    if isinstance(
        exc,
        (
            BundleExpiredError,
            TooManyToolsError,
            PolicyTooLargeError,
            InvalidSignatureError,
            D2PlanLimitError,
        ),
    ):
        return failed(str(exc))
    return CliError(str(exc))


def _console(stream: IO[str]) -> Console:
    tty = bool(getattr(stream, "isatty", lambda: False)())
    return Console(
        file=stream,
        color_system="auto" if tty else None,  # colours only on a terminal
        highlight=False,
        emoji=False,
        width=None if tty else 120,
        soft_wrap=False,
    )


class Output:
    """Where a command writes. Human text goes to stdout, notes and warnings to
    stderr; with ``--json`` stdout carries exactly one JSON document."""

    def __init__(self, as_json: bool = False) -> None:
        self.json = as_json
        self.out = _console(sys.stdout)
        self.err = _console(sys.stderr)

    def print(self, *renderables: Any) -> None:
        """Print rich renderables (human mode only)."""
        if not self.json:
            self.out.print(*renderables)

    def line(self, text: str = "", style: str | None = None) -> None:
        """Print plain text (not markup), optionally styled (human mode only)."""
        if not self.json:
            self.out.print(escape(text), style=style, soft_wrap=True)

    def success(self, text: str) -> None:
        """A line saying what was done (human mode only)."""
        self.line(text, style="green")

    def note(self, text: str) -> None:
        """A side remark, on stderr (both modes)."""
        self.err.print(escape(text), style="dim", soft_wrap=True)

    def warn(self, text: str) -> None:
        """A warning, on stderr (both modes)."""
        self.err.print(escape(f"warning: {text}"), style="yellow", soft_wrap=True)

    def emit(self, data: Any) -> None:
        """The JSON result (``--json`` mode only), in ASCII: every other character as
        its JSON escape, so invisible or look-alike characters in a value reach a
        terminal (or ``jq``) as escapes an approver can read."""
        if self.json:
            sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=True) + "\n")
            sys.stdout.flush()

    def fail(self, error: CliError) -> None:
        """Report ``error``: JSON on stdout with ``--json``, else text on stderr."""
        if self.json:
            self.emit({"ok": False, "error": error.as_dict()})
            return
        self.err.print(escape(f"error: {error.message}"), style="bold red", soft_wrap=True)
        for detail in error.details:
            self.err.print(escape(f"  - {detail}"), style="red", soft_wrap=True)
        if error.hint:
            self.err.print(escape(f"hint: {error.hint}"), style="cyan", soft_wrap=True)


def run_command(as_json: bool, body: Callable[[Output], int | None]) -> None:
    """Run a command's ``body`` and exit with its code (0 when it returns None);
    a :class:`CliError` or a D2 error is reported and sets the exit code."""
    out = Output(as_json)
    try:
        code = body(out) or OK
    except CliError as exc:
        out.fail(exc)
        code = exc.code
    except D2Error as exc:
        error = from_d2_error(exc)
        out.fail(error)
        code = error.code
    except OSError as exc:
        error = CliError(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        out.fail(error)
        code = error.code
    raise typer.Exit(code)
