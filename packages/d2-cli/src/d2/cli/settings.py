"""Where things live (the XDG config directory) and the cloud settings from the
environment (``D2_TOKEN``, ``D2_API_URL``, ``D2_JWKS_URL``, ``D2_APP``,
``D2_JWKS_THUMBPRINTS``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .output import CliError

__all__ = [
    "CloudSettings",
    "cloud_settings",
    "config_dir",
    "default_policy_path",
    "keys_dir",
    "public_url",
]


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    """``${XDG_CONFIG_HOME:-~/.config}/d2``: the directory the runtime reads."""
    e = _env(env)
    home = e.get("HOME") or os.path.expanduser("~")
    return Path(e.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")) / "d2"


def default_policy_path(fmt: str = "yaml", env: Mapping[str, str] | None = None) -> Path:
    """Where ``d2 init`` writes: ``<config dir>/policy.yaml`` (or ``.json``)."""
    return config_dir(env) / f"policy.{fmt}"


def keys_dir(env: Mapping[str, str] | None = None) -> Path:
    """``<config dir>/keys``: the device key used to sign publishes."""
    return config_dir(env) / "keys"


@dataclass(frozen=True)
class CloudSettings:
    """How to reach the control plane."""

    api_url: str
    token: str
    jwks_url: str | None = None
    app: str | None = None
    pins: frozenset[str] | None = None

    @property
    def display_url(self) -> str:
        """``api_url`` without any ``user:password@`` (what is printed or written)."""
        return public_url(self.api_url)

    def redact(self, text: str) -> str:
        """``text`` with the token and the URL's credentials taken out."""
        if self.token:
            text = text.replace(self.token, "<D2_TOKEN>")
        if self.api_url != self.display_url:
            text = text.replace(self.api_url, self.display_url)
            userinfo = urlsplit(self.api_url).netloc.rsplit("@", 1)[0]
            text = text.replace(userinfo, "<credentials>")
        return text


def public_url(url: str) -> str:
    """``url`` without its userinfo (``user:password@``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _token_problem(token: str) -> str | None:
    """Why ``token`` cannot be sent as a bearer token (never quoting it)."""
    if any(ch.isspace() for ch in token):
        return "contains whitespace"
    if any(not ch.isascii() for ch in token):
        return "contains non-ASCII characters"
    if any(not 0x21 <= ord(ch) <= 0x7E for ch in token):
        return "contains control characters"
    return None


def cloud_settings(env: Mapping[str, str] | None = None) -> CloudSettings:
    """The cloud settings; a usage error (exit 2) naming what is missing."""
    e = _env(env)
    token = (e.get("D2_TOKEN") or "").strip()
    api_url = (e.get("D2_API_URL") or "").strip()
    missing = [name for name, value in (("D2_TOKEN", token), ("D2_API_URL", api_url)) if not value]
    if missing:
        raise CliError(
            f"this command talks to the control plane and needs {' and '.join(missing)}",
            hint="export D2_TOKEN=<developer token from the dashboard; on a self-hosted "
            "control plane, create one with `d2-server token create --scope developer`> and "
            "D2_API_URL=<your control plane's base URL>",
        )
    problem = _token_problem(token)
    if problem is not None:
        raise CliError(
            f"D2_TOKEN {problem} ({len(token)} characters; not shown)",
            hint="copy the token again from the dashboard: it is one line of printable ASCII",
        )
    if not api_url.startswith(("https://", "http://")):
        raise CliError(f"D2_API_URL must be an http(s) URL, got {public_url(api_url)!r}")
    pins_raw = e.get("D2_JWKS_THUMBPRINTS") or ""
    pins = frozenset(p.strip() for p in pins_raw.split(",") if p.strip()) or None
    return CloudSettings(
        api_url=api_url.rstrip("/"),
        token=token,
        jwks_url=(e.get("D2_JWKS_URL") or "").strip() or None,
        app=(e.get("D2_APP") or "").strip() or None,
        pins=pins,
    )
