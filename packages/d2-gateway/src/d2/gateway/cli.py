"""``d2-gateway serve``: run the gateway (see docs/gateway.md).

Exit codes: 0 stopped normally, 2 a usage or configuration error (said on
stderr). Nothing but MCP ever goes to stdout (``--stdio`` owns it)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import anyio
import typer
from d2.core import ConfigurationError, D2Error

from .config import UpstreamSpec, load_config_file, parse_upstream
from .gateway import Gateway, Identity
from .http import Wrap, http_app
from .upstream import DEFAULT_MAX_RESULT_BYTES

__all__ = ["app", "main", "serve"]

app = typer.Typer(
    name="d2-gateway",
    help="D2 policies in front of any MCP server.",
    no_args_is_help=True,
    add_completion=False,
)
_logger = logging.getLogger("d2.gateway")


def _version(value: bool) -> None:
    if value:
        from d2.core import __version__ as core_version

        from ._version import __version__

        sys.stdout.write(f"d2-gateway {__version__} (d2-core {core_version})\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """D2 policies in front of any MCP server."""


def _fail(message: str) -> typer.Exit:
    sys.stderr.write(f"d2-gateway: {message}\n")
    return typer.Exit(2)


def _pick(given: Any, config: dict[str, Any], key: str, default: Any = None) -> Any:
    if given not in (None, [], ()):
        return given
    return config.get(key, default)


def _listen_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigurationError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8765")
    return host.strip("[]") or "127.0.0.1", int(port)


def _identity_layer(options: dict[str, Any]) -> Wrap:
    """The bearer-JWT layer for ``--listen`` (401 for no, bad or expired tokens)."""
    audience = options.get("audience")
    jwks_url, oidc_issuer = options.get("jwks_url"), options.get("oidc_issuer")
    if not audience:
        raise ConfigurationError(
            "--audience is required with --listen: the gateway accepts only bearer tokens "
            "issued for it (the aud claim)"
        )
    if bool(jwks_url) == bool(oidc_issuer):
        raise ConfigurationError(
            "give exactly one of --jwks-url (the identity provider's JWKS) or --oidc-issuer "
            "(its issuer URL, whose discovery document names the JWKS) with --listen"
        )
    from d2.asgi.bearer import jwt_extractor
    from d2.asgi.protected import BearerProtected

    extractor = jwt_extractor(
        jwks_url=jwks_url or None,
        oidc_issuer=oidc_issuer or None,
        audience=audience,
        issuer=options.get("issuer") or None,
        user_claim=options.get("user_claim") or "sub",
        roles_claim=options.get("roles_claim") or "roles",
    )
    resource = options.get("resource") or None

    def wrap(app: Any) -> Any:
        return BearerProtected(
            app, extractor=extractor, resource=resource, resource_name="d2-gateway"
        )

    return wrap


async def _configure(policy: str | None) -> None:
    from d2.core import configure_rbac_async

    if policy is not None:
        if os.environ.get("D2_TOKEN", "").strip():
            raise ConfigurationError(
                "--policy selects a local policy file, but D2_TOKEN is set, which selects "
                "cloud mode: give one of them"
            )
        await configure_rbac_async(source=policy)
    else:
        await configure_rbac_async()  # D2_TOKEN (cloud), D2_POLICY_FILE or discovery


async def _shut_down() -> None:
    """Shut D2 down when serving ends, before the upstreams stop: a cloud
    instance's last usage events and the approval webhook's queue are flushed
    (at most 5 s; a client that ends a stdio gateway waits 2 s before a signal)."""
    from d2.core import shutdown_rbac

    with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
        await shutdown_rbac()


async def _serve_stdio(gateway: Gateway, policy: str | None, startup_wait: float) -> None:
    from mcp.server.stdio import stdio_server

    await _configure(policy)
    async with gateway.running():
        try:
            await gateway.wait_tried(startup_wait)  # upstreams that start later appear later
            async with stdio_server() as (read, write):
                await gateway.server.run(read, write, gateway.initialization_options())
        finally:
            await _shut_down()


async def _serve_http(
    gateway: Gateway,
    policy: str | None,
    host: str,
    port: int,
    wrap: Wrap,
    allowed_hosts: list[str] | None,
    issuer: str | None,
    sessions: tuple[int, float],
) -> None:
    import uvicorn

    await _configure(policy)
    asgi = http_app(
        gateway,
        wrap=wrap,
        host=host,
        allowed_hosts=allowed_hosts,
        issuer=issuer,
        max_sessions_per_user=sessions[0],
        session_idle_timeout=sessions[1],
        on_shutdown=_shut_down,
    )
    config = uvicorn.Config(asgi, host=host, port=port, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve()  # a signal ends it after the lifespan's exit


def serve(options: dict[str, Any]) -> None:
    """Run the gateway with ``options`` (the CLI's, merged with the config file)."""
    specs: list[UpstreamSpec] = list(options.get("upstreams") or [])
    if not specs:
        raise ConfigurationError("no upstream: give --upstream NAME=stdio:COMMAND or NAME=URL")
    listen, stdio = options.get("listen"), bool(options.get("stdio"))
    if bool(listen) == stdio:
        raise ConfigurationError("give exactly one of --listen HOST:PORT or --stdio")
    timeout = float(options.get("call_timeout") or 120.0)
    if not timeout > 0:
        raise ConfigurationError("--call-timeout must be a positive number of seconds")
    limit = options.get("max_result_bytes")
    try:
        max_result = DEFAULT_MAX_RESULT_BYTES if limit is None else int(limit)
    except (TypeError, ValueError):
        raise ConfigurationError("--max-result-bytes takes a whole number of bytes") from None
    if max_result < 1:
        raise ConfigurationError("--max-result-bytes must be at least 1")
    policy = options.get("policy")
    if stdio:
        user = options.get("user")
        if not user:
            raise ConfigurationError("--stdio needs the client's identity: --user ID --roles R1,R2")
        roles = tuple(r.strip() for r in str(options.get("roles") or "").split(",") if r.strip())
        identity: Identity = (str(user), roles)
        gateway = Gateway(
            specs, identity=identity, call_timeout=timeout, max_result_bytes=max_result
        )
        anyio.run(_serve_stdio, gateway, policy, float(options.get("startup_wait") or 15.0))
        return
    if options.get("user"):
        raise ConfigurationError(
            "--user is for --stdio only: over HTTP each request's user comes from its bearer token"
        )
    host, port = _listen_address(str(listen))
    wrap = _identity_layer(options)
    gateway = Gateway(specs, call_timeout=timeout, max_result_bytes=max_result)
    issuer = options.get("issuer") or options.get("oidc_issuer") or None
    sessions = _session_limits(options)
    allowed = options.get("allowed_hosts")
    anyio.run(lambda: _serve_http(gateway, policy, host, port, wrap, allowed, issuer, sessions))


def _session_limits(options: dict[str, Any]) -> tuple[int, float]:
    """``--max-sessions-per-user`` and ``--session-idle-timeout`` (validated)."""
    import math

    from .sessions import DEFAULT_IDLE_TIMEOUT, DEFAULT_SESSIONS_PER_USER

    per_user = options.get("max_sessions_per_user")
    idle = options.get("session_idle_timeout")
    try:
        cap = DEFAULT_SESSIONS_PER_USER if per_user is None else int(per_user)
        timeout = DEFAULT_IDLE_TIMEOUT if idle is None else float(idle)
    except (TypeError, ValueError):
        raise ConfigurationError(
            "--max-sessions-per-user takes a whole number, --session-idle-timeout seconds"
        ) from None
    if cap < 1:
        raise ConfigurationError("--max-sessions-per-user must be at least 1")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ConfigurationError("--session-idle-timeout must be a positive number of seconds")
    return cap, timeout


@app.command("serve")
def serve_command(
    config: Annotated[
        str | None, typer.Option("--config", help="gateway.yaml holding these options.")
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(
            "--policy",
            help="Policy file (default: D2_TOKEN cloud mode, D2_POLICY_FILE, discovery).",
        ),
    ] = None,
    upstream: Annotated[
        list[str] | None,
        typer.Option(
            "--upstream", help="NAME=stdio:COMMAND ARGS... or NAME=https://host/mcp (repeatable)."
        ),
    ] = None,
    listen: Annotated[
        str | None, typer.Option("--listen", help="Serve Streamable HTTP at HOST:PORT/mcp.")
    ] = None,
    stdio: Annotated[
        bool, typer.Option("--stdio", help="Serve one client on stdin/stdout.")
    ] = False,
    user: Annotated[str | None, typer.Option("--user", help="--stdio: the user id.")] = None,
    roles: Annotated[
        str | None, typer.Option("--roles", help="--stdio: the user's roles, R1,R2.")
    ] = None,
    jwks_url: Annotated[
        str | None, typer.Option("--jwks-url", help="HTTP: the identity provider's JWKS URL.")
    ] = None,
    oidc_issuer: Annotated[
        str | None, typer.Option("--oidc-issuer", help="HTTP: issuer URL (OIDC discovery).")
    ] = None,
    audience: Annotated[
        str | None, typer.Option("--audience", help="HTTP: the aud tokens must name (required).")
    ] = None,
    issuer: Annotated[
        str | None, typer.Option("--issuer", help="HTTP: the iss tokens must have.")
    ] = None,
    user_claim: Annotated[
        str | None, typer.Option("--user-claim", help="HTTP: claim of the user id (sub).")
    ] = None,
    roles_claim: Annotated[
        str | None,
        typer.Option("--roles-claim", help="HTTP: claim of the roles, a dotted path (roles)."),
    ] = None,
    resource: Annotated[
        str | None,
        typer.Option("--resource", help="HTTP: the public URL of /mcp (protected-resource doc)."),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option("--allowed-host", help="HTTP: Host header values accepted (repeatable)."),
    ] = None,
    call_timeout: Annotated[
        float | None, typer.Option("--call-timeout", help="Seconds an upstream call may take.")
    ] = None,
    max_result_bytes: Annotated[
        int | None,
        typer.Option("--max-result-bytes", help="Largest upstream result passed on (8 MiB)."),
    ] = None,
    max_sessions_per_user: Annotated[
        int | None,
        typer.Option("--max-sessions-per-user", help="HTTP: open sessions per user (32)."),
    ] = None,
    session_idle_timeout: Annotated[
        float | None,
        typer.Option("--session-idle-timeout", help="HTTP: seconds an idle session lives (900)."),
    ] = None,
) -> None:
    """Serve MCP clients, deciding every request with the D2 policy."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    try:
        from_file = load_config_file(config) if config else {}
        specs = [parse_upstream(u) for u in upstream or []] or from_file.get("upstreams", [])
        options = {
            "upstreams": specs,
            "policy": _pick(policy, from_file, "policy"),
            "listen": _pick(listen, from_file, "listen"),
            "stdio": stdio or bool(from_file.get("stdio")),
            "user": _pick(user, from_file, "user"),
            "roles": _pick(roles, from_file, "roles"),
            "jwks_url": _pick(jwks_url, from_file, "jwks_url"),
            "oidc_issuer": _pick(oidc_issuer, from_file, "oidc_issuer"),
            "audience": _pick(audience, from_file, "audience"),
            "issuer": _pick(issuer, from_file, "issuer"),
            "user_claim": _pick(user_claim, from_file, "user_claim"),
            "roles_claim": _pick(roles_claim, from_file, "roles_claim"),
            "resource": _pick(resource, from_file, "resource"),
            "allowed_hosts": _pick(allowed_host, from_file, "allowed_hosts"),
            "call_timeout": _pick(call_timeout, from_file, "call_timeout"),
            "max_result_bytes": _pick(max_result_bytes, from_file, "max_result_bytes"),
            "max_sessions_per_user": _pick(
                max_sessions_per_user, from_file, "max_sessions_per_user"
            ),
            "session_idle_timeout": _pick(session_idle_timeout, from_file, "session_idle_timeout"),
        }
        serve(options)
    except (D2Error, ValueError) as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        return


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``d2-gateway`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name="d2-gateway")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        sys.stderr.write(f"{code}\n")
        return 1
    return 0
