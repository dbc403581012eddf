"""Read a local policy: find the file, parse YAML or JSON, enforce the local limits.

YAML needs ruamel.yaml (``pip install "d2-core[yaml]"``); it is imported only when a
YAML file is read, so JSON policies keep the cold start small.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Mapping
from typing import Any

from ..errors import (
    BundleExpiredError,
    ConfigurationError,
    InvalidPolicyError,
    MissingPolicyError,
    PolicyTooLargeError,
    TooManyToolsError,
)
from ..limits import Limits
from .compile import compile_policy
from .model import CompiledPolicy

__all__ = [
    "check_limits",
    "discover_policy_file",
    "load_policy_bytes",
    "load_policy_file",
    "read_policy_bytes",
]

_NAMES = ("policy.yaml", "policy.yml", "policy.json")


def discover_policy_file(env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
    """The policy file local mode reads.

    Order: ``D2_POLICY_FILE`` (must exist), then
    ``${XDG_CONFIG_HOME:-~/.config}/d2/policy.{yaml,yml,json}``, then
    ``./policy.{yaml,yml,json}``. Raises :class:`MissingPolicyError` when none exists.
    """
    env = os.environ if env is None else env
    explicit = env.get("D2_POLICY_FILE")
    if explicit:
        path = os.path.expanduser(explicit)
        if not os.path.isfile(path):
            raise MissingPolicyError(
                f"D2_POLICY_FILE points to {path!r}, which is not a file; "
                "fix the path or unset D2_POLICY_FILE to use discovery",
                reason="missing_policy",
            )
        return path
    home = env.get("HOME") or os.path.expanduser("~")
    xdg = env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    searched = [os.path.join(xdg, "d2", n) for n in _NAMES]
    searched += [os.path.join(cwd or os.getcwd(), n) for n in _NAMES]
    for path in searched:
        if os.path.isfile(path):
            return path
    raise MissingPolicyError(
        "no local policy file found; looked for: "
        + ", ".join(searched)
        + ". Create one with `d2 init`, set D2_POLICY_FILE, or set D2_TOKEN for cloud mode",
        reason="missing_policy",
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r} (a policy must say one thing once)")
        out[key] = value
    return out


def parse_document(data: bytes, source: str) -> Any:
    """Parse JSON (a ``.json`` file, or text starting with ``{``) or YAML. Duplicate
    keys are refused in both, as are documents nested too deeply to walk."""
    try:
        return _parse(data, source)
    except (RecursionError, MemoryError) as exc:
        raise InvalidPolicyError(
            source, [f"<root>: nested too deeply: {type(exc).__name__}"]
        ) from None


def _parse(data: bytes, source: str) -> Any:
    if source.endswith(".json") or data.lstrip()[:1] == b"{":
        try:
            return json.loads(data, object_pairs_hook=_unique_keys)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidPolicyError(source, [f"<root>: not valid JSON: {exc}"]) from exc
    try:
        from ruamel.yaml import YAML
        from ruamel.yaml.error import YAMLError
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            f'{source} is YAML, which needs ruamel.yaml: pip install "d2-sdk[yaml]" '
            '(or "d2-core[yaml]"), or write the policy as JSON'
        ) from exc
    try:
        return YAML(typ="safe").load(data)
    except (YAMLError, UnicodeDecodeError) as exc:
        raise InvalidPolicyError(source, [f"<root>: not valid YAML: {exc}"]) from exc


def check_limits(policy: CompiledPolicy, limits: Limits, now: float) -> None:
    """Refuse a compiled local policy that breaks ``limits`` (tool count, expiry);
    each error says how to fix it. The size is checked on the bytes, before parsing."""
    src = policy.source
    if policy.tool_count > limits.max_tools:
        raise TooManyToolsError(
            f"{src} names {policy.tool_count} tools; local mode allows at most "
            f"{limits.max_tools}. Remove unused tools, use a prefix wildcard ('billing:*'), "
            "move to cloud mode, or raise Limits(max_tools=...)",
            tool_count=policy.tool_count,
            limit=limits.max_tools,
        )
    exp = policy.expires_at
    if exp == float("inf"):
        raise BundleExpiredError(
            f"{src} has no metadata.expires; add one at most "
            f"{limits.max_expiry_seconds / 86400:g} days ahead, e.g. expires: "
            f'"{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 6 * 86400))}"',
            reason="policy_expired",
        )
    if exp <= now:
        raise BundleExpiredError(
            f"{src} expired at {_iso(exp)}; set metadata.expires to a future time "
            f"(at most {limits.max_expiry_seconds / 86400:g} days ahead)",
            reason="policy_expired",
            expiry_date=_iso(exp),
        )
    if exp - now > limits.max_expiry_seconds:
        raise BundleExpiredError(
            f"{src} expires at {_iso(exp)}, more than "
            f"{limits.max_expiry_seconds / 86400:g} days ahead; local policies must be "
            "renewed weekly: set metadata.expires closer, or raise Limits(max_expiry_seconds=...)",
            reason="policy_expired",
            expiry_date=_iso(exp),
        )


def _too_large(source: str, size: int, limits: Limits) -> PolicyTooLargeError:
    return PolicyTooLargeError(
        f"{source} is {size} bytes; local mode allows at most {limits.max_bytes}. "
        "Use tool groups or prefix wildcards to shorten it, or raise Limits(max_bytes=...)",
        bundle_size=size,
        size_limit=limits.max_bytes,
    )


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def load_policy_bytes(
    data: bytes, source: str, limits: Limits, now: float | None = None
) -> CompiledPolicy:
    """Parse, validate, compile and limit-check a local policy's bytes."""
    now = time.time() if now is None else now
    if len(data) > limits.max_bytes:  # refuse before parsing a huge file
        raise _too_large(source, len(data), limits)
    policy = compile_policy(parse_document(data, source), source=source, raw=data)
    check_limits(policy, limits, now)
    return policy


def load_policy_file(
    path: str | os.PathLike[str], limits: Limits, now: float | None = None
) -> CompiledPolicy:
    """Read and load the policy file at ``path``."""
    path = os.fspath(path)
    return load_policy_bytes(read_policy_bytes(path, limits), path, limits, now)


def read_policy_bytes(path: str, limits: Limits) -> bytes:
    """The bytes of the regular file at ``path``, refusing anything larger than
    ``limits.max_bytes`` without reading it (and never blocking on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise MissingPolicyError(
            f"cannot read policy file {path!r}: {exc}", reason="missing_policy"
        ) from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MissingPolicyError(
                f"policy file {path!r} is not a regular file", reason="missing_policy"
            )
        if st.st_size > limits.max_bytes:
            raise _too_large(path, st.st_size, limits)
        data = fh.read(int(min(limits.max_bytes, 1 << 40)) + 1)
    if len(data) > limits.max_bytes:
        raise _too_large(path, len(data), limits)
    return data
