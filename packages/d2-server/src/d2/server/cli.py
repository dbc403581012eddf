"""The ``d2-server`` command: ``init``, ``serve``, ``migrate``, ``rotate-key``,
``token create``.

Every command takes ``--db`` (default ``$D2_SERVER_DB``, else ``./d2-server.db``):
a SQLite file path or a ``postgresql://user:password@host:port/dbname`` URL.
``init`` and ``migrate`` bring the schema to this version's; the other commands
refuse a database whose schema is behind (naming ``d2-server migrate``) or ahead.
Exit status: 0 done, 1 refused (for example ``init`` on a database that already
has an account), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._version import __version__
from .config import Quotas, ServerConfig, check_event_setting
from .database import database_url, describe
from .schema import SchemaError
from .service import ControlPlane, check_app_name
from .signing import ALGORITHMS, DEFAULT_ALGORITHM
from .store import SQLStorage

__all__ = ["DEFAULT_DB", "build_parser", "main"]

DEFAULT_DB = "d2-server.db"


class _Refused(Exception):
    """A command that cannot proceed; the message says why."""


def _db_default() -> str:
    return os.environ.get("D2_SERVER_DB") or DEFAULT_DB


def _event_option(setting: str, convert: Callable[[str], int | float]) -> Callable[[str], Any]:
    """An argparse type for the ``ServerConfig`` field ``setting``: a refused value
    is a usage error that argparse prints with the option's name."""

    def parse(text: str) -> int | float:
        value: object
        try:
            value = convert(text.strip())
        except ValueError:
            value = text  # not a number: refused below, quoted as typed
        try:
            check_event_setting(setting, value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        assert isinstance(value, (int, float))
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``d2-server``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        default=None,
        help="SQLite file path or postgresql://user:password@host:port/dbname URL "
        f"(default: $D2_SERVER_DB or ./{DEFAULT_DB})",
    )
    parser = argparse.ArgumentParser(
        prog="d2-server", description="D2 reference control plane (self-hosted)."
    )
    parser.add_argument("--version", action="version", version=f"d2-server {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    init = sub.add_parser(
        "init", parents=[common], help="create the database, an account, an app and tokens"
    )
    init.add_argument("--app", default="default", help="app name (default: default)")
    init.add_argument("--alg", choices=ALGORITHMS, default=DEFAULT_ALGORITHM)
    defaults = Quotas()
    init.add_argument("--plan", default=defaults.plan)
    for name in ("max_tools", "bundle_size_bytes", "event_batch", "ingest_interval", "max_apps"):
        init.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    init.add_argument("--json", action="store_true", help="print JSON")

    serve = sub.add_parser("serve", parents=[common], help="run the HTTP server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8787)
    config = ServerConfig()
    serve.add_argument("--poll-seconds", type=int, default=config.poll_seconds)
    serve.add_argument(
        "--bundle-lifetime", type=int, default=config.bundle_lifetime, help="exp - iat, seconds"
    )
    serve.add_argument(
        "--bundle-refresh", type=int, default=None, help="re-sign bundles this old (seconds)"
    )
    serve.add_argument("--ingest-burst", type=int, default=config.ingest_burst)
    serve.add_argument("--ingest-window", type=float, default=config.ingest_window)
    serve.add_argument(
        "--events-retention",
        metavar="DAYS",
        type=_event_option("events_retention_days", int),
        default=config.events_retention_days,
        help="delete usage events received more than DAYS ago (1-36500; default %(default)s)",
    )
    serve.add_argument(
        "--events-max-per-app",
        metavar="N",
        type=_event_option("events_max_per_app", int),
        default=config.events_max_per_app,
        help="keep at most N usage events per app, dropping the oldest (default %(default)s)",
    )
    serve.add_argument(
        "--events-max-bytes-per-app",
        metavar="N",
        type=_event_option("events_max_bytes_per_app", int),
        default=config.events_max_bytes_per_app,
        help="keep at most N bytes of usage-event data per app, dropping the oldest "
        "(default %(default)s)",
    )
    serve.add_argument(
        "--events-prune-interval",
        metavar="SECONDS",
        type=_event_option("events_prune_interval", float),
        default=config.events_prune_interval,
        help="seconds between pruning passes; one also runs at startup (default %(default)g)",
    )
    serve.add_argument("--log-level", default="info")

    sub.add_parser(
        "migrate", parents=[common], help="upgrade the database's schema to this version's"
    )

    rotate = sub.add_parser("rotate-key", parents=[common], help="add a new bundle signing key")
    rotate.add_argument("--alg", choices=ALGORITHMS, default=DEFAULT_ALGORITHM)
    rotate.add_argument(
        "--overlap",
        type=float,
        default=86400.0,
        help="seconds the previous key stays in the JWKS (default 86400)",
    )

    token = sub.add_parser("token", help="manage API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", parents=[common], help="create a token")
    create.add_argument(
        "--scope",
        default="runtime",
        help="runtime, developer, or scopes like 'policy:read events:write' (default runtime)",
    )
    create.add_argument("--account", default=None, help="account id (default: the only one)")
    create.add_argument("--app", default=None, help="app name (created if new; default: first)")
    create.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _print(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
        return
    width = max(len(k) for k in data)
    for key, value in data.items():
        print(f"{key + ':':<{width + 1}} {value}")


def _init(plane: ControlPlane, args: argparse.Namespace) -> None:
    if plane.storage.accounts():
        raise _Refused(
            "the database already has an account; use `d2-server token create` for more tokens"
        )
    quotas = Quotas(
        plan=args.plan,
        max_tools=args.max_tools,
        bundle_size_bytes=args.bundle_size_bytes,
        event_batch=args.event_batch,
        ingest_interval=args.ingest_interval,
        max_apps=args.max_apps,
    )
    plane.ensure_signing_key(args.alg)
    account, app = plane.create_account(args.app, quotas)
    key = plane.ensure_signing_key()
    _print(
        {
            "database": describe(args.db),
            "account_id": account.id,
            "app_name": app.name,
            "runtime_token": plane.create_token(app, "runtime"),
            "developer_token": plane.create_token(app, "developer"),
            "signing_key": f"{key.alg} {key.kid}",
        },
        args.json,
    )
    if not args.json:
        print("Tokens are shown once; only their hashes are stored.")


def _token(plane: ControlPlane, args: argparse.Namespace) -> None:
    accounts = plane.storage.accounts()
    if args.account is None:
        if len(accounts) != 1:
            raise _Refused(
                "no account; run `d2-server init`"
                if not accounts
                else "several accounts; choose one with --account"
            )
        account = accounts[0]
    else:
        found = plane.storage.get_account(args.account)
        if found is None:
            raise _Refused(f"no account {args.account!r}")
        account = found
    if args.app is None:
        apps = plane.storage.apps(account.id)
        if not apps:
            raise _Refused("the account has no app; pass --app NAME")
        app = apps[0]
    else:
        app = plane.app(account.id, args.app)
    token = plane.create_token(app, args.scope)
    principal = plane.authenticate(f"Bearer {token}")
    data = {
        "account_id": account.id,
        "app_name": app.name,
        "scopes": " ".join(principal.scopes),
        "token": token,
    }
    _print(data, args.json)


def _rotate(plane: ControlPlane, args: argparse.Namespace) -> None:
    if plane.storage.active_signing_key() is None:
        raise _Refused("no signing key yet; run `d2-server init`")
    key = plane.rotate_key(args.alg, overlap=args.overlap)
    print(f"new signing key: {key.alg} {key.kid}")
    print(
        f"the previous key stays in the JWKS for {args.overlap:g} s; bundles signed "
        "meanwhile carry jwks_refresh"
    )


def _serve(storage: SQLStorage, args: argparse.Namespace) -> None:
    import uvicorn

    from .app import create_app

    config = ServerConfig(
        poll_seconds=args.poll_seconds,
        bundle_lifetime=args.bundle_lifetime,
        bundle_refresh=args.bundle_refresh,
        ingest_burst=args.ingest_burst,
        ingest_window=args.ingest_window,
        events_retention_days=args.events_retention,
        events_max_per_app=args.events_max_per_app,
        events_max_bytes_per_app=args.events_max_bytes_per_app,
        events_prune_interval=args.events_prune_interval,
    )
    plane = ControlPlane(storage, config)
    if storage.active_signing_key() is None or not storage.accounts():
        db = describe(args.db)
        raise _Refused(f"{db} is not initialized; run `d2-server init --db {db}`")
    uvicorn.run(
        create_app(plane),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=True,
        lifespan="on",  # the lifespan runs the usage-event pruner
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``d2-server``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.db = args.db or _db_default()
    if args.command == "init":
        try:  # before the database is created: a refused init leaves nothing behind
            check_app_name(args.app)
        except ValueError as exc:
            print(f"d2-server: {exc}", file=sys.stderr)
            return 1
    db = describe(args.db)
    try:
        sqlite = database_url(args.db).get_backend_name() == "sqlite"
    except ValueError as exc:
        print(f"d2-server: {exc}", file=sys.stderr)
        return 2
    if args.command != "init" and sqlite and not os.path.exists(args.db):
        print(f"d2-server: no database at {db}; run `d2-server init` first", file=sys.stderr)
        return 1
    try:
        storage = SQLStorage(args.db, migrate=args.command in ("init", "migrate"))
    except SchemaError as exc:
        print(f"d2-server: {db}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        reason = getattr(exc, "orig", None) or exc  # the driver's words, not SQLAlchemy's
        print(f"d2-server: cannot open {db}: {reason}", file=sys.stderr)
        return 1
    try:
        if args.command == "migrate":
            print(f"{db}: schema at revision {storage.schema_revision()} (the newest)")
            return 0
        if args.command == "serve":
            _serve(storage, args)
            return 0
        plane = ControlPlane(storage)
        if args.command == "init":
            _init(plane, args)
        elif args.command == "rotate-key":
            _rotate(plane, args)
        else:
            _token(plane, args)
    except (_Refused, ValueError) as exc:
        print(f"d2-server: {exc}", file=sys.stderr)
        return 1
    finally:
        storage.close()
    return 0
