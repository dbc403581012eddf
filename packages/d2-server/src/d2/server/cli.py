"""The ``d2-server`` command, a typer application like ``d2``: ``init``, ``serve``,
``migrate``, ``rotate-key``, ``token create``, ``token revoke``.

Every command takes ``--db`` (default ``$D2_SERVER_DB``, else ``./d2-server.db``):
a SQLite file path or a ``postgresql://user:password@host:port/dbname`` URL.
``init`` and ``migrate`` bring the schema to this version's; the other commands
refuse a database whose schema is behind (naming ``d2-server migrate``) or ahead.
Option names follow the ``d2`` command where both name the
same thing (``--app-name``, ``--json``); the old spellings still work but are not
shown in ``--help``. Exit status: 0 done, 1 refused (for example ``init`` on a
database that already has an account), 2 usage error (a bad option or value), 3
``serve`` could not start (signing keys the secret cannot use, checked before it
listens, or a worker process that failed to start).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Annotated, Any, NoReturn

import typer

from ._version import __version__
from .config import Quotas, ServerConfig, check_event_setting
from .database import database_url, describe
from .keyseal import KeySecretError
from .schema import SchemaError
from .service import ControlPlane, check_app_name
from .serving import STARTUP_FAILURE, ServeSettings, serve
from .signing import DEFAULT_ALGORITHM
from .store import SQLStorage

__all__ = ["DEFAULT_DB", "Algorithm", "app", "main", "parse_args"]

DEFAULT_DB = "d2-server.db"
_QUOTAS = Quotas()
_CONFIG = ServerConfig()


class Algorithm(str, Enum):
    """A bundle signing algorithm."""

    EdDSA = "EdDSA"
    ES256 = "ES256"
    RS256 = "RS256"


_DEFAULT_ALG = Algorithm(DEFAULT_ALGORITHM)


class _Refused(Exception):
    """A command that cannot proceed; the message says why (exit status 1)."""


def _version(value: bool) -> None:
    if value:
        typer.echo(f"d2-server {__version__}")
        raise typer.Exit(0)


app = typer.Typer(
    name="d2-server",
    help="D2 reference control plane (self-hosted): signed policy bundles, JWKS, "
    "publishing, usage events, on one SQLite file.\n\n"
    "Exit codes: 0 ok, 1 refused (the message says why), 2 usage error, "
    "3 serve could not start (the message says why).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # never print locals (tokens) in a traceback
    context_settings={"help_option_names": ["-h", "--help"]},
)
_token_app = typer.Typer(
    name="token",
    help="Manage API tokens.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(_token_app, name="token")


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """D2 reference control plane (self-hosted)."""


# shared options

_DbOption = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="D2_SERVER_DB",
        metavar="DB",
        show_default=False,
        help="SQLite file path or postgresql://user:password@host:port/dbname URL "
        f"(default: $D2_SERVER_DB or ./{DEFAULT_DB}).",
    ),
]
_JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout (for scripts).")
]
_AlgorithmOption = Annotated[
    Algorithm,
    typer.Option(
        "--alg",
        help="Bundle signing algorithm: EdDSA (Ed25519), ES256 (P-256) or RS256 (RSA 3072).",
    ),
]
_OldAppOption = Annotated[
    str | None, typer.Option("--app", hidden=True, help="Old spelling of --app-name.")
]


def _app_name(app_name: str | None, old: str | None) -> str | None:
    """``--app-name``, or its old spelling ``--app``; both at once must agree."""
    if app_name is not None and old is not None and app_name != old:
        raise typer.BadParameter(
            "give the app once: --app is the old spelling of --app-name", param_hint="--app"
        )
    return app_name if app_name is not None else old


def _event_parser(setting: str, convert: Callable[[str], int | float]) -> Callable[[Any], Any]:
    """The parser of the option for the ``ServerConfig`` field ``setting``: a refused
    value is a usage error naming the option (exit status 2)."""

    def parse(text: Any) -> int | float:
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            return text  # the default
        value: object
        try:
            value = convert(str(text).strip())
        except ValueError:
            value = text  # not a number: refused below, quoted as typed
        try:
            check_event_setting(setting, value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        assert isinstance(value, (int, float))
        return value

    return parse


# output and errors


def _print(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
        return
    width = max(len(k) for k in data)
    for key, value in data.items():
        print(f"{key + ':':<{width + 1}} {value}")


def _fail(message: str, as_json: bool) -> NoReturn:
    """Report a refusal (stderr; with ``--json`` also the JSON error document on
    stdout, as ``d2`` does) and exit with status 1."""
    print(f"d2-server: {message}", file=sys.stderr)
    if as_json:
        error = {"message": message, "exit_code": 1, "details": [], "hint": None}
        print(json.dumps({"ok": False, "error": error}, indent=2))
    raise typer.Exit(1)


def _open(
    db: str, *, create: bool, migrate: bool | None = None, as_json: bool = False
) -> SQLStorage:
    """The storage of ``db``. ``create`` (init): a missing SQLite file is made.
    ``migrate`` (init and migrate; default: ``create``): the schema is brought to
    this version's, else a schema behind or ahead is refused. The URL's password is
    never printed."""
    shown = describe(db)
    try:
        sqlite = database_url(db).get_backend_name() == "sqlite"
    except ValueError as exc:  # not a database d2-server can use: a usage error (2)
        raise typer.BadParameter(str(exc), param_hint="'--db'") from None
    if not create and sqlite and not os.path.exists(db):
        _fail(f"no database at {shown}; run `d2-server init` first", as_json)
    try:
        return SQLStorage(db, migrate=create if migrate is None else migrate)
    except SchemaError as exc:
        _fail(f"{shown}: {exc}", as_json)
    except Exception as exc:
        reason = getattr(exc, "orig", None) or exc  # the driver's words, not SQLAlchemy's
        _fail(f"cannot open {shown}: {reason}", as_json)


def _run(db: str, as_json: bool, body: Callable[[ControlPlane], None], *, create: bool) -> None:
    storage = _open(db, create=create, as_json=as_json)
    try:
        body(ControlPlane(storage))
    except (_Refused, ValueError) as exc:
        _fail(str(exc), as_json)
    finally:
        storage.close()


# commands


@app.command("init")
def _init(
    db: _DbOption = DEFAULT_DB,
    app_name: Annotated[
        str | None,
        typer.Option(
            "--app-name",
            metavar="NAME",
            help="The first app's name: letters, digits, '.', '_', '-' (default: default).",
        ),
    ] = None,
    old_app: _OldAppOption = None,
    alg: _AlgorithmOption = _DEFAULT_ALG,
    plan: Annotated[
        str, typer.Option("--plan", help="Plan name reported by /v1/accounts/me.")
    ] = _QUOTAS.plan,
    max_tools: Annotated[
        int, typer.Option("--max-tools", help="Tools a policy may name (402 above).")
    ] = _QUOTAS.max_tools,
    bundle_size_bytes: Annotated[
        int, typer.Option("--bundle-size-bytes", help="Size of a published policy (402 above).")
    ] = _QUOTAS.bundle_size_bytes,
    event_batch: Annotated[
        int, typer.Option("--event-batch", help="Events per ingest request (413 above).")
    ] = _QUOTAS.event_batch,
    ingest_interval: Annotated[
        int,
        typer.Option("--ingest-interval", help="Seconds between event uploads, told to SDKs."),
    ] = _QUOTAS.ingest_interval,
    max_apps: Annotated[
        int, typer.Option("--max-apps", help="Apps with a policy in force (403 above).")
    ] = _QUOTAS.max_apps,
    as_json: _JsonOption = False,
) -> None:
    """Create the database, an account, an app and two tokens."""
    name = _app_name(app_name, old_app) or "default"
    try:  # before the database is created: a refused init leaves nothing behind
        check_app_name(name)
    except ValueError as exc:
        _fail(str(exc), as_json)

    def body(plane: ControlPlane) -> None:
        if plane.storage.accounts():
            raise _Refused(
                "the database already has an account; use `d2-server token create` for more tokens"
            )
        quotas = Quotas(
            plan=plan,
            max_tools=max_tools,
            bundle_size_bytes=bundle_size_bytes,
            event_batch=event_batch,
            ingest_interval=ingest_interval,
            max_apps=max_apps,
        )
        plane.ensure_signing_key(alg.value)
        account, created = plane.create_account(name, quotas)
        key = plane.ensure_signing_key()
        data = {
            "database": describe(db),
            "account_id": account.id,
            "app_name": created.name,
            "runtime_token": plane.create_token(created, "runtime"),
            "developer_token": plane.create_token(created, "developer"),
            "signing_key": f"{key.alg} {key.kid}",
        }
        _print(data, as_json)
        if not as_json:
            print("Tokens are shown once; only their hashes are stored.")

    _run(db, as_json, body, create=True)


@app.command("serve")
def _serve(
    db: _DbOption = DEFAULT_DB,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8787,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=256,
            help="Worker processes sharing the port (SQLite in WAL mode; rate limits "
            "count per worker).",
        ),
    ] = 1,
    poll_seconds: Annotated[
        int,
        typer.Option("--poll-seconds", help="Sent as X-D2-Poll-Seconds; SDKs poll this often."),
    ] = _CONFIG.poll_seconds,
    bundle_lifetime: Annotated[
        int, typer.Option("--bundle-lifetime", help="exp - iat of every bundle, seconds.")
    ] = _CONFIG.bundle_lifetime,
    bundle_refresh: Annotated[
        int | None,
        typer.Option(
            "--bundle-refresh",
            help="Re-sign bundles this old, seconds (default: half the lifetime).",
        ),
    ] = None,
    ingest_burst: Annotated[
        int, typer.Option("--ingest-burst", help="Event uploads per token per window...")
    ] = _CONFIG.ingest_burst,
    ingest_window: Annotated[
        float, typer.Option("--ingest-window", help="...of this many seconds (then 429).")
    ] = _CONFIG.ingest_window,
    events_retention: Annotated[
        int,
        typer.Option(
            "--events-retention",
            metavar="DAYS",
            parser=_event_parser("events_retention_days", int),
            help="Delete usage events received more than DAYS ago (1-36500).",
        ),
    ] = _CONFIG.events_retention_days,
    events_max_per_app: Annotated[
        int,
        typer.Option(
            "--events-max-per-app",
            metavar="N",
            parser=_event_parser("events_max_per_app", int),
            help="Keep at most N usage events per app, dropping the oldest.",
        ),
    ] = _CONFIG.events_max_per_app,
    events_max_bytes_per_app: Annotated[
        int,
        typer.Option(
            "--events-max-bytes-per-app",
            metavar="N",
            parser=_event_parser("events_max_bytes_per_app", int),
            help="Keep at most N bytes of usage-event data per app, dropping the oldest.",
        ),
    ] = _CONFIG.events_max_bytes_per_app,
    events_prune_interval: Annotated[
        float,
        typer.Option(
            "--events-prune-interval",
            metavar="SECONDS",
            parser=_event_parser("events_prune_interval", float),
            help="Seconds between pruning passes; one also runs at startup.",
        ),
    ] = _CONFIG.events_prune_interval,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's log level.")] = "info",
) -> None:
    """Run the HTTP server. Exit status 3 when it cannot start: the signing keys
    and D2_SERVER_SECRET (checked before it listens), or a worker that failed."""
    settings = ServeSettings(
        db,
        {
            "poll_seconds": poll_seconds,
            "bundle_lifetime": bundle_lifetime,
            "bundle_refresh": bundle_refresh,
            "ingest_burst": ingest_burst,
            "ingest_window": ingest_window,
            "events_retention_days": events_retention,
            "events_max_per_app": events_max_per_app,
            "events_max_bytes_per_app": events_max_bytes_per_app,
            "events_prune_interval": events_prune_interval,
        },
    )
    try:
        settings.server_config()
    except ValueError as exc:
        _fail(str(exc), False)
    storage = _open(db, create=False)
    try:
        ready = storage.active_signing_key() is not None and bool(storage.accounts())
    finally:
        storage.close()
    if not ready:
        shown = describe(db)
        _fail(f"{shown} is not initialized; run `d2-server init --db {shown}`", False)
    try:
        serve(settings, host=host, port=port, workers=workers, log_level=log_level)
    except KeySecretError as exc:  # checked before anything listens, any --workers
        print(f"d2-server: {exc}", file=sys.stderr)
        raise typer.Exit(STARTUP_FAILURE) from None
    except SystemExit as exc:
        if exc.code == STARTUP_FAILURE and workers > 1:
            print(
                "d2-server: a worker process could not start (its error is logged "
                "above); every worker was stopped",
                file=sys.stderr,
            )
        raise


@app.command("migrate")
def _migrate(db: _DbOption = DEFAULT_DB) -> None:
    """Upgrade the database's schema to this version's (after installing a newer
    d2-server; each upgrade is one transaction)."""
    storage = _open(db, create=False, migrate=True)
    try:
        print(f"{describe(db)}: schema at revision {storage.schema_revision()} (the newest)")
    finally:
        storage.close()


@app.command("rotate-key")
def _rotate_key(
    db: _DbOption = DEFAULT_DB,
    alg: _AlgorithmOption = _DEFAULT_ALG,
    overlap: Annotated[
        float,
        typer.Option("--overlap", help="Seconds the previous key stays in the JWKS."),
    ] = 86400.0,
    replace_secret: Annotated[
        bool,
        typer.Option(
            "--replace-secret",
            help="Store the new key under D2_SERVER_SECRET even though it does not "
            "decrypt the published keys (a lost or leaked secret); needs --overlap 0. "
            "Restart every replica with the new secret afterwards.",
        ),
    ] = False,
) -> None:
    """Add a new bundle signing key. D2_SERVER_SECRET must be the secret the
    published keys are stored with (else nothing changes), unless --replace-secret."""
    if replace_secret and overlap != 0:
        raise typer.BadParameter(
            "--replace-secret needs --overlap 0: keys under the old secret must leave "
            "the JWKS with the rotation",
            param_hint="'--overlap'",
        )

    def body(plane: ControlPlane) -> None:
        if plane.storage.active_signing_key() is None:
            raise _Refused("no signing key yet; run `d2-server init`")
        key = plane.rotate_key(alg.value, overlap=overlap, replace_secret=replace_secret)
        print(f"new signing key: {key.alg} {key.kid}")
        if replace_secret:
            print(
                "the previous keys left the JWKS; restart every replica with the new "
                "D2_SERVER_SECRET"
            )
            return
        print(
            f"the previous key stays in the JWKS for {overlap:g} s; bundles signed "
            "meanwhile carry jwks_refresh"
        )

    _run(db, False, body, create=False)


@_token_app.command("create")
def _token_create(
    db: _DbOption = DEFAULT_DB,
    scope: Annotated[
        str,
        typer.Option(
            "--scope",
            help="runtime, developer, or scopes like 'policy:read events:write'.",
        ),
    ] = "runtime",
    account: Annotated[
        str | None, typer.Option("--account", help="Account id (default: the only one).")
    ] = None,
    app_name: Annotated[
        str | None,
        typer.Option(
            "--app-name",
            metavar="NAME",
            help="App of the token, created if new (default: the account's first).",
        ),
    ] = None,
    old_app: _OldAppOption = None,
    as_json: _JsonOption = False,
) -> None:
    """Create a token (shown once)."""
    name = _app_name(app_name, old_app)

    def body(plane: ControlPlane) -> None:
        accounts = plane.storage.accounts()
        if account is None:
            if len(accounts) != 1:
                raise _Refused(
                    "no account; run `d2-server init`"
                    if not accounts
                    else "several accounts; choose one with --account"
                )
            chosen = accounts[0]
        else:
            found = plane.storage.get_account(account)
            if found is None:
                raise _Refused(f"no account {account!r}")
            chosen = found
        if name is None:
            apps = plane.storage.apps(chosen.id)
            if not apps:
                raise _Refused("the account has no app; pass --app-name NAME")
            target = apps[0]
        else:
            target = plane.app(chosen.id, name)
        token = plane.create_token(target, scope)
        principal = plane.authenticate(f"Bearer {token}")
        data = {
            "account_id": chosen.id,
            "app_name": target.name,
            "scopes": " ".join(principal.scopes),
            "token": token,
        }
        _print(data, as_json)

    _run(db, as_json, body, create=False)


@_token_app.command("revoke")
def _token_revoke(
    db: _DbOption = DEFAULT_DB,
    token: Annotated[
        str | None,
        typer.Argument(
            help="The token to revoke; read from standard input when omitted (keeps it "
            "out of the shell history and the process list).",
            show_default=False,
        ),
    ] = None,
    as_json: _JsonOption = False,
) -> None:
    """Revoke a token: every replica refuses it (401) from its next request."""
    given = token if token is not None else sys.stdin.readline()

    def body(plane: ControlPlane) -> None:
        principal = plane.revoke_token(given)
        _print(
            {
                "revoked": True,
                "account_id": principal.account.id,
                "app_name": principal.app.name,
                "scopes": " ".join(principal.scopes),
            },
            as_json,
        )

    _run(db, as_json, body, create=False)


# entry points


def parse_args(argv: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Parse a command line without running it: the command path (for example
    ``["token", "create"]``) and its parameters. A usage error raises typer's
    ``BadParameter``/``UsageError`` (click exceptions)."""
    command = typer.main.get_command(app)
    ctx = command.make_context("d2-server", list(argv))
    path: list[str] = []
    while hasattr(ctx.command, "resolve_command"):
        rest = [*ctx._protected_args, *ctx.args]
        name, sub, args = ctx.command.resolve_command(ctx, rest)
        assert name is not None and sub is not None
        path.append(name)
        ctx = sub.make_context(name, args, parent=ctx)
    return path, dict(ctx.params)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``d2-server`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit
    status."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name="d2-server")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        sys.stderr.write(f"{code}\n")
        return 1
    return 0
