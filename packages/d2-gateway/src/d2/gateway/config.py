"""The gateway's settings: upstreams (``NAME=stdio:COMMAND ARGS...`` or
``NAME=https://host/mcp``) and a ``gateway.yaml`` that may hold every option of
``d2-gateway serve``."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from d2.core import ConfigurationError

from .naming import check_upstream_name

__all__ = ["UpstreamSpec", "load_config_file", "parse_upstream"]


@dataclass(frozen=True)
class UpstreamSpec:
    """One upstream MCP server: ``name`` (the prefix of its tool ids) and either a
    ``command`` with ``args`` (started and supervised over stdio; ``env`` is added
    to the minimal environment the MCP SDK gives a child process) or a Streamable
    HTTP ``url`` (``headers`` are sent with each of its requests, e.g. the
    upstream's own credentials; never logged)."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        """``stdio`` or ``http``."""
        return "stdio" if self.command is not None else "http"

    def describe(self) -> str:
        """A one-line description for logs (never the environment's values)."""
        if self.command is not None:
            return f"{self.name} (stdio: {shlex.join([self.command, *self.args])})"
        return f"{self.name} ({self.url})"


def _http_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def parse_upstream(text: str) -> UpstreamSpec:
    """Parse ``NAME=stdio:COMMAND ARGS...`` (shell-style quoting) or
    ``NAME=http(s)://host/mcp``; raise :class:`ConfigurationError` naming the
    expected form."""
    name, sep, target = text.partition("=")
    if not sep or not target:
        raise ConfigurationError(
            f"--upstream {text!r}: expected NAME=stdio:COMMAND ARGS... or NAME=https://host/mcp"
        )
    try:
        name = check_upstream_name(name.strip())
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    target = target.strip()
    if target.startswith("stdio:"):
        try:
            words = shlex.split(target[len("stdio:") :])
        except ValueError as exc:
            raise ConfigurationError(f"--upstream {text!r}: {exc}") from None
        if not words:
            raise ConfigurationError(f"--upstream {text!r}: no command after stdio:")
        return UpstreamSpec(name=name, command=words[0], args=tuple(words[1:]))
    if _http_url(target):
        return UpstreamSpec(name=name, url=target)
    raise ConfigurationError(
        f"--upstream {text!r}: the target must start with stdio: (a command to run) or "
        "http:// / https:// (a Streamable HTTP endpoint)"
    )


def _upstream_from_mapping(name: str, value: Any, where: str) -> UpstreamSpec:
    if isinstance(value, str):
        return parse_upstream(f"{name}={value}")
    if not isinstance(value, dict):
        raise ConfigurationError(f"{where}.{name}: expected a string or a mapping")
    try:
        check_upstream_name(name)
    except ValueError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    unknown = sorted(set(value) - {"command", "args", "url", "env", "cwd", "headers"})
    if unknown:
        raise ConfigurationError(f"{where}.{name}: unknown key(s) {unknown}")
    command, url = value.get("command"), value.get("url")
    if (command is None) == (url is None):
        raise ConfigurationError(f"{where}.{name}: give exactly one of command or url")
    args = value.get("args", [])
    env = value.get("env", {})
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ConfigurationError(f"{where}.{name}.args: expected a list of strings")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ConfigurationError(f"{where}.{name}.env: expected a mapping of strings")
    if url is not None and (not isinstance(url, str) or not _http_url(url)):
        raise ConfigurationError(f"{where}.{name}.url: expected an http:// or https:// URL")
    if command is not None and not isinstance(command, str):
        raise ConfigurationError(f"{where}.{name}.command: expected a string")
    headers = value.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigurationError(f"{where}.{name}.headers: expected a mapping of strings")
    if headers and url is None:
        raise ConfigurationError(f"{where}.{name}.headers: only an upstream with a url has headers")
    cwd = value.get("cwd")
    return UpstreamSpec(
        name=name,
        command=command,
        args=tuple(args),
        url=url,
        env={k: _expand(v, f"{where}.{name}.env.{k}") for k, v in env.items()},
        cwd=str(cwd) if cwd is not None else None,
        headers={k: _expand(v, f"{where}.{name}.headers.{k}") for k, v in headers.items()},
    )


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: str, where: str) -> str:
    """``${NAME}`` replaced by the environment variable ``NAME`` (so secrets stay
    out of the file); an unset variable is an error, never an empty string."""

    def one(match: re.Match[str]) -> str:
        found = os.environ.get(match.group(1))
        if found is None:
            raise ConfigurationError(
                f"{where}: the environment variable {match.group(1)} is not set"
            )
        return found

    return _VARIABLE.sub(one, value)


_KEYS = frozenset(
    {
        "policy",
        "upstreams",
        "listen",
        "stdio",
        "user",
        "roles",
        "jwks_url",
        "oidc_issuer",
        "audience",
        "issuer",
        "user_claim",
        "roles_claim",
        "resource",
        "allowed_hosts",
        "call_timeout",
        "max_result_bytes",
        "max_sessions_per_user",
        "session_idle_timeout",
    }
)


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``gateway.yaml`` (or JSON): the options of ``d2-gateway serve`` by
    their long names with ``_`` for ``-``, and ``upstreams`` as a mapping of name
    to ``stdio:...`` / URL string or ``{command, args, env, cwd}`` / ``{url}``.
    Relative paths (``policy``) are relative to the file. Returns the options,
    with ``upstreams`` as a list of :class:`UpstreamSpec`."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read the gateway config {file}: {exc}") from None
    try:
        from ruamel.yaml import YAML

        data = YAML(typ="safe").load(text)
    except Exception as exc:
        raise ConfigurationError(f"{file}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigurationError(f"{file}: expected a mapping of option names to values")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigurationError(f"{file}: unknown option(s) {unknown}; known: {sorted(_KEYS)}")
    out = dict(data)
    raw = data.get("upstreams", {})
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{file}: upstreams: expected a mapping of name to upstream")
    out["upstreams"] = [
        _upstream_from_mapping(str(n), v, f"{file}: upstreams") for n, v in raw.items()
    ]
    policy = data.get("policy")
    if isinstance(policy, str) and not os.path.isabs(policy):
        out["policy"] = str(file.parent / policy)
    roles = data.get("roles")
    if isinstance(roles, list):
        out["roles"] = ",".join(str(r) for r in roles)
    return out
