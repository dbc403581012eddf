"""Where things live (the XDG config directory) and the cloud settings from the
environment (``D2_TOKEN``, ``D2_API_URL``, ``D2_JWKS_URL``, ``D2_APP``,
``D2_JWKS_THUMBPRINTS``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .output import CliError

__all__ = ["CloudSettings", "cloud_settings", "config_dir", "default_policy_path", "keys_dir"]


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


def cloud_settings(env: Mapping[str, str] | None = None) -> CloudSettings:
    """The cloud settings; a usage error (exit 2) naming what is missing."""
    e = _env(env)
    token = (e.get("D2_TOKEN") or "").strip()
    api_url = (e.get("D2_API_URL") or "").strip()
    missing = [name for name, value in (("D2_TOKEN", token), ("D2_API_URL", api_url)) if not value]
    if missing:
        raise CliError(
            f"this command talks to the control plane and needs {' and '.join(missing)}",
            hint="export D2_TOKEN=<developer token from the dashboard> and "
            "D2_API_URL=<your control plane's base URL>",
        )
    if not api_url.startswith(("https://", "http://")):
        raise CliError(f"D2_API_URL must be an http(s) URL, got {api_url!r}")
    pins_raw = e.get("D2_JWKS_THUMBPRINTS") or ""
    pins = frozenset(p.strip() for p in pins_raw.split(",") if p.strip()) or None
    return CloudSettings(
        api_url=api_url.rstrip("/"),
        token=token,
        jwks_url=(e.get("D2_JWKS_URL") or "").strip() or None,
        app=(e.get("D2_APP") or "").strip() or None,
        pins=pins,
    )
