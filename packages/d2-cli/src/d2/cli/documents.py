"""Policy documents as files: read and parse (d2-core's parser), render as YAML or
JSON, serialise to the JSON bytes a publish signs, and write atomically."""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from d2.core.limits import Limits
from d2.core.policy.load import parse_document, read_policy_bytes

from .output import CliError

__all__ = [
    "FORMATS",
    "format_for",
    "json_bytes",
    "read_document",
    "render",
    "tidy",
    "to_plain",
    "write_file",
]

FORMATS = ("yaml", "json")
_READ_LIMIT = Limits(max_bytes=64 * 1024 * 1024)  # what the CLI agrees to read at all


def format_for(path: Path, explicit: str | None) -> str:
    """``explicit`` when given, else ``json`` for a ``.json`` path, else ``yaml``."""
    if explicit is not None:
        fmt = explicit.lower()
        if fmt not in FORMATS:
            raise CliError(f"--format must be yaml or json, got {explicit!r}")
        return fmt
    return "json" if path.suffix.lower() == ".json" else "yaml"


def read_document(path: Path) -> tuple[Any, bytes]:
    """The parsed document at ``path`` and its bytes. A missing or unreadable file
    is a usage error; a file that is not YAML/JSON raises ``InvalidPolicyError``."""
    if not path.is_file():
        raise CliError(f"no policy file at {path}", hint="check the path, or run `d2 init`")
    data = read_policy_bytes(str(path), _READ_LIMIT)
    return parse_document(data, str(path)), data


def _utc_text(value: _dt.datetime | _dt.date) -> str:
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        value = value.astimezone(_dt.timezone.utc)
        return value.strftime("%Y-%m-%dT%H:%M:%S") + (
            f".{value.microsecond:06d}Z" if value.microsecond else "Z"
        )
    return f"{value.isoformat()}T00:00:00Z"


def to_plain(value: Any) -> Any:
    """``value`` with YAML-only types made JSON-ready (timestamps become RFC 3339
    UTC text, mappings plain dicts, sequences lists)."""
    if isinstance(value, (_dt.datetime, _dt.date)):
        return _utc_text(value)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def json_bytes(document: Any) -> bytes:
    """The compact JSON bytes of ``document``: what a publish sends and signs."""
    return json.dumps(
        to_plain(document), separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def render(document: Any, fmt: str, header: Sequence[str] = ()) -> str:
    """``document`` as YAML (with ``header`` as ``#`` comments) or indented JSON."""
    plain = to_plain(document)
    if fmt == "json":
        return json.dumps(plain, indent=2, ensure_ascii=False) + "\n"
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 4096  # never fold long lines (ids, descriptions)
    yaml.indent(mapping=2, sequence=4, offset=2)
    buffer = io.StringIO()
    yaml.dump(plain, buffer)
    comments = "".join(f"# {line}".rstrip() + "\n" for line in header)
    return comments + ("\n" if comments else "") + buffer.getvalue()


_TOP = ("metadata", "policies")
_META = ("name", "description", "expires", "mode", "version", "tool_groups", "data_flow")
_ENTRY = ("role", "roles", "description", "permissions", "sequence")
_GRANT = ("tool", "allow", "description", "conditions")


def _ordered(mapping: Mapping[str, Any], first: tuple[str, ...]) -> dict[str, Any]:
    keys = [k for k in first if k in mapping] + [k for k in mapping if k not in first]
    return {k: mapping[k] for k in keys}


def tidy(document: Any) -> Any:
    """``document`` with its keys in reading order (``metadata`` first, ``role``
    before ``permissions``...): a bundle's payload comes with sorted keys."""
    if not isinstance(document, Mapping):
        return document
    out = _ordered(document, _TOP)
    if isinstance(out.get("metadata"), Mapping):
        out["metadata"] = _ordered(out["metadata"], _META)
    if isinstance(out.get("policies"), list):
        entries = []
        for entry in out["policies"]:
            if isinstance(entry, Mapping):
                entry = _ordered(entry, _ENTRY)
                if isinstance(entry.get("permissions"), list):
                    entry["permissions"] = [
                        _ordered(p, _GRANT) if isinstance(p, Mapping) else p
                        for p in entry["permissions"]
                    ]
            entries.append(entry)
        out["policies"] = entries
    return out


def write_file(
    path: Path, content: str | bytes, *, overwrite: bool, unchanged: bytes | None = None
) -> None:
    """Write ``content`` (text as UTF-8, or bytes as they are) to ``path``
    atomically: a temporary file in the same directory, flushed to disk, given the
    old file's mode, then renamed over it, so a reader sees the old file or the new
    one, never half of one. Without ``overwrite`` an existing file is never
    replaced: ``FileExistsError``, even when another process creates it meanwhile.
    With ``unchanged``, the file must still hold exactly those bytes just before it
    is replaced (someone else's edit is never lost): else a :class:`CliError`.
    A symbolic link is written through (the link stays)."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    if path.is_symlink():
        path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o644
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if overwrite:
            if unchanged is not None and _current(path) != unchanged:
                raise CliError(
                    f"{path} changed while this command ran; nothing was written",
                    hint="run the command again",
                )
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if the path exists: no check-then-write race
            except FileExistsError:
                raise
            except OSError:  # no hard links here: claim the name, then rename over it
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
                os.replace(tmp, path)
        _sync_directory(path.parent)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _current(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _sync_directory(directory: Path) -> None:
    """Make a rename durable (best effort: not every platform opens directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
