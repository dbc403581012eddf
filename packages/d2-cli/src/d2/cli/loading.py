"""Which policy a command looks at: an explicit file, else the cloud bundle when
``D2_TOKEN`` is set, else the local file the runtime would read
(``D2_POLICY_FILE``, then ``${XDG_CONFIG_HOME:-~/.config}/d2/policy.*``, then
``./policy.*``)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from d2.core.errors import BundleExpiredError, D2Error, MissingPolicyError
from d2.core.limits import Limits
from d2.core.policy.compile import compile_policy
from d2.core.policy.load import check_limits, discover_policy_file

from .describe import PolicyView
from .documents import read_document
from .output import CliError
from .settings import config_dir

__all__ = [
    "POLICY_NAMES",
    "Discovery",
    "discover",
    "load_file",
    "load_in_force",
    "local_policy_path",
    "same_file",
    "without_expiry",
]

POLICY_NAMES = ("policy.yaml", "policy.yml", "policy.json")  # discovery's order in a directory


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file (links and ``..`` resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


@dataclass(frozen=True)
class Discovery:
    """What local-mode discovery sees: the file it reads (``in_force``; ``None``
    when there is none, ``problem`` saying why; ``origin`` says where it was
    found) and every other existing policy file it would have read otherwise
    (``shadowed``), each with the reason."""

    in_force: Path | None
    shadowed: tuple[tuple[Path, str], ...] = ()
    problem: str | None = None
    origin: str | None = None

    def is_shadowed(self, path: Path) -> bool:
        """Whether ``path`` is one of the files discovery passes over."""
        return any(same_file(path, other) for other, _ in self.shadowed)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "in_force": str(self.in_force) if self.in_force is not None else None,
            "shadowed": [{"file": str(p), "why": why} for p, why in self.shadowed],
            "problem": self.problem,
        }


def discover() -> Discovery:
    """The file local mode reads and the policy files it shadows, in
    ``discover_policy_file``'s order: ``D2_POLICY_FILE``, then
    ``${XDG_CONFIG_HOME:-~/.config}/d2/policy.{yaml,yml,json}``, then
    ``./policy.{yaml,yml,json}``."""
    explicit = os.environ.get("D2_POLICY_FILE")
    candidates: list[tuple[Path, str]] = []
    problem = None
    if explicit:
        path = Path(os.path.expanduser(explicit))
        if path.is_file():
            candidates.append((path, "D2_POLICY_FILE"))
        else:
            problem = (
                f"D2_POLICY_FILE points to {str(path)!r}, which is not a file: the runtime "
                "finds no policy (every guarded call is denied)"
            )
    candidates += [(config_dir() / n, "the config directory") for n in POLICY_NAMES]
    candidates += [(Path.cwd() / n, "the current directory") for n in POLICY_NAMES]
    found: list[tuple[Path, str]] = []
    for path, where in candidates:
        if path.is_file() and not any(same_file(path, f) for f, _ in found):
            found.append((path, where))
    if problem is not None:
        why = "D2_POLICY_FILE is set (to a missing file), so it is not read"
        return Discovery(None, tuple((p, why) for p, _ in found), problem)
    if not found:
        return Discovery(None, (), "no local policy file found")
    (first, first_where), rest = found[0], found[1:]
    shadowed = []
    for path, where in rest:
        if first_where == "D2_POLICY_FILE":
            why = "D2_POLICY_FILE is set and is read instead"
        elif where == first_where:
            why = f"{first.name} comes first in {where}"
        else:
            why = f"{first_where} is searched before {where}"
        shadowed.append((path, why))
    return Discovery(first, tuple(shadowed), origin=first_where)


def local_policy_path(explicit: Path | None = None) -> Path:
    """``explicit``, or the file local mode would read; a usage error when none."""
    if explicit is not None:
        return explicit
    try:
        return Path(discover_policy_file())
    except MissingPolicyError as exc:
        raise CliError(str(exc), hint="run `d2 init`, or pass the file explicitly") from None


def without_expiry(document: Any) -> Any:
    """``document`` without ``metadata.expires``."""
    if isinstance(document, Mapping) and isinstance(document.get("metadata"), Mapping):
        meta = {k: v for k, v in document["metadata"].items() if k != "expires"}
        return {**document, "metadata": meta}
    return document


def load_file(
    path: Path,
    *,
    origin: str = "local",
    limits: Limits | None = None,
    check_expiry: bool = True,
) -> PolicyView:
    """Load the policy file at ``path``. An invalid document raises
    ``InvalidPolicyError``; breaking the local ``limits`` (expiry, tool count,
    size) is recorded in ``problems`` (the runtime would refuse it).

    Every command reads a local file through here, so all show the same digest:
    the SHA-256 of the file's bytes, which the runtime records as the policy's
    version. ``check_expiry=False`` (``d2 test``) leaves ``metadata.expires`` out
    of the rules and of the problems; the digest is still the file's."""
    document, raw = read_document(path)
    if not check_expiry:
        document = without_expiry(document)
    policy = compile_policy(document, source=str(path), raw=raw)
    limits = limits or Limits()
    problems = []
    if len(raw) > limits.max_bytes:
        problems.append(f"{path} is {len(raw)} bytes; local mode allows at most {limits.max_bytes}")
    try:
        check_limits(policy, limits, time.time())
    except BundleExpiredError as exc:
        if check_expiry:
            problems.append(str(exc))
    except D2Error as exc:
        problems.append(str(exc))
    meta = document.get("metadata") if isinstance(document, dict) else None
    version = meta.get("version") if isinstance(meta, dict) else None
    return PolicyView(
        policy,
        origin,
        str(path),
        version if isinstance(version, (int, str)) else None,
        problems,
    )


def load_in_force(
    explicit: Path | None, *, local: bool = False, app_name: str | None = None
) -> PolicyView:
    """The policy in force for this environment (see the module docstring);
    ``local`` ignores ``D2_TOKEN``; ``app_name`` is the app a cloud token must be for."""
    if explicit is not None:
        return load_file(explicit, origin="file")
    if os.environ.get("D2_TOKEN") and not local:
        from .remote import fetch_view

        return fetch_view(app_name)
    return load_file(local_policy_path())
