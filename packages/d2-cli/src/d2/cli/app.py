"""The ``d2`` command: the typer application and its entry point."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Annotated

import typer

from . import approvals_cmd, cloud, init_cmd, local, publish, renew, replay_cmd, tests_cmd
from .usage import JsonUsageGroup

__all__ = ["app", "approvals", "main"]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"d2 {version('d2-cli')} (d2-core {version('d2-core')})")
        raise typer.Exit(0)


app = typer.Typer(
    name="d2",
    cls=JsonUsageGroup,  # --json: usage errors as a JSON document too
    help="D2 policies from the command line: write, inspect, check, test and publish them.\n\n"
    "Exit codes: 0 ok, 1 policy problem or denial, 2 usage or configuration error.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # never print locals (tokens) in a traceback
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """D2 policies from the command line."""


_COMMANDS = (
    ("init", init_cmd.init, "Scan the code for guarded tools; write a starter policy."),
    ("inspect", local.inspect, "Show the policy in force: roles x tools, guardrails, expiry."),
    ("diagnose", local.diagnose_command, "Check the local policy: errors, limits, code drift."),
    ("check", local.check, "Decide a call and explain why, without running anything."),
    ("renew", renew.renew, "Set a local policy's expiry N days ahead (default 7)."),
    ("test", tests_cmd.run_tests, "Run policy unit tests (*_test.yaml)."),
    ("replay", replay_cmd.replay, "Replay a decision log against a candidate policy."),
    ("pull", cloud.pull, "Download the app's policy (signature verified first)."),
    ("draft", cloud.draft, "Upload a policy as the app's draft."),
    ("publish", publish.publish, "Sign and publish a policy as the next version."),
    ("revoke", cloud.revoke, "Revoke the app's policy (every guarded call is denied)."),
)
for _name, _function, _summary in _COMMANDS:
    app.command(_name, short_help=_summary)(_function)

approvals = typer.Typer(
    name="approvals",
    help="Decide approval requests as --as USER --roles R1,R2 on the app's shared store "
    "(--store / D2_STORE_URL): list, show, approve, reject; or serve the inbox page.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
_APPROVALS: tuple[tuple[str, Callable[..., None], str], ...] = (
    ("list", approvals_cmd.list_command, "The pending requests you may decide."),
    ("show", approvals_cmd.show_command, "One request: the call, its arguments, its state."),
    ("approve", approvals_cmd.approve_command, "Approve a request: the call runs once."),
    ("reject", approvals_cmd.reject_command, "Reject a request: the call is refused."),
    ("serve", approvals_cmd.serve_command, "Serve the inbox page (JWT sign-in)."),
)
for _verb, _handler, _about in _APPROVALS:
    approvals.command(_verb, short_help=_about)(_handler)
app.add_typer(approvals, name="approvals", short_help="Decide approval requests (list, show, ...).")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``d2`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name="d2")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        sys.stderr.write(f"{code}\n")
        return 1
    return 0
