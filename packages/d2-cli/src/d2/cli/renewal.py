"""A policy document with a new ``metadata.expires`` and nothing else changed.

The value's text is replaced where it stands (YAML and JSON alike: ruamel.yaml
gives each node's position), so comments, key order, quoting, indentation and
line endings stay byte for byte; a missing ``expires`` is inserted as the first
key of ``metadata`` (and a missing ``metadata`` as the first key of the
document). Where that is not possible (a block scalar, an alias, a null
``metadata``) the document is rewritten: YAML through ruamel.yaml's round trip
(comments and order kept), JSON with its indentation kept. Either way the result
is parsed again and must be the original document with only ``metadata.expires``
changed; otherwise nothing is returned but an error.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable
from typing import Any

from d2.core.errors import InvalidPolicyError
from d2.core.policy.load import parse_document

from .documents import to_plain
from .output import failed

__all__ = ["is_json", "with_expires"]


def is_json(data: bytes, source: str) -> bool:
    """Whether d2-core parses ``data`` as JSON (a ``.json`` name, or text starting
    with ``{``), as :func:`d2.core.policy.load.parse_document` decides."""
    return source.endswith(".json") or data.lstrip()[:1] == b"{"


def with_expires(data: bytes, source: str, expires: str) -> bytes:
    """``data`` (a policy file's bytes) with ``metadata.expires`` set to
    ``expires`` (RFC 3339 UTC text). Raises :class:`InvalidPolicyError` when
    ``data`` does not parse, and a CLI error (exit 1) when the document cannot be
    changed without changing anything else."""
    original = parse_document(data, source)
    if not isinstance(original, dict):
        raise InvalidPolicyError(
            source, [f"<root>: expected a mapping with 'policies', got {type(original).__name__}"]
        )
    meta = original.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise InvalidPolicyError(
            source, [f"metadata: expected a mapping, got {type(meta).__name__}"]
        )
    expected = copy.deepcopy(original)
    expected["metadata"] = {**(meta or {}), "expires": expires}
    want = to_plain(expected)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise failed(f"{source} is not UTF-8 text; set metadata.expires by hand") from None
    json_mode = is_json(data, source)
    edits: list[Callable[[str, str], str | None]] = [_in_place]
    edits.append(_json_rewrite if json_mode else _yaml_rewrite)
    for edit in edits:
        try:
            candidate = edit(text, expires)
        except Exception:  # any failure here only means: try the next way
            continue
        if candidate is None:
            continue
        out = candidate.encode("utf-8")
        try:
            if to_plain(parse_document(out, source)) == want:
                return out
        except InvalidPolicyError:
            continue
    raise failed(
        f"cannot set metadata.expires in {source} without changing anything else "
        "(anchors, aliases or tags around it?)",
        hint="set metadata.expires by hand",
    )


def _newline(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


def _entry(mapping: Any, name: str) -> Any:
    for key, value in mapping.value:
        if getattr(key, "value", None) == name and str(key.tag or "").endswith(":str"):
            return key, value
    return None


def _in_place(text: str, expires: str) -> str | None:
    from ruamel.yaml import YAML
    from ruamel.yaml.nodes import MappingNode, ScalarNode

    root = YAML(typ="rt").compose(io.StringIO(text))
    if not isinstance(root, MappingNode):
        return None
    quoted = json.dumps(expires)
    found = _entry(root, "metadata")
    if found is None:
        return _insert(
            text,
            root,
            block=["metadata:", f"  expires: {quoted}"],
            flow=f'"metadata": {{"expires": {quoted}}}',
        )
    key, meta = found
    if not isinstance(meta, MappingNode) or meta.start_mark.index < key.end_mark.index:
        return None  # null, a list, an alias: rewritten instead
    found = _entry(meta, "expires")
    if found is None:
        return _insert(text, meta, block=[f"expires: {quoted}"], flow=f'"expires": {quoted}')
    key, value = found
    start, end = value.start_mark.index, value.end_mark.index
    if not isinstance(value, ScalarNode) or start < key.end_mark.index or start >= end:
        return None
    if value.style not in (None, '"', "'"):
        return None  # a block scalar (| or >)
    if value.style == "'":
        new = f"'{expires}'"
    elif value.style is None and str(value.tag or "").endswith(":timestamp"):
        new = expires  # a plain YAML timestamp stays one
    else:
        new = quoted
    return text[:start] + new + text[end:]


def _insert(text: str, mapping: Any, *, block: list[str], flow: str) -> str | None:
    """An entry inserted as the first key of ``mapping``: the ``block`` lines in a
    block mapping (at its keys' indentation), the ``flow`` text (valid JSON and
    YAML) in ``{...}``."""
    nl = _newline(text)
    if mapping.flow_style:
        brace = mapping.start_mark.index
        if text[brace] != "{":
            return None
        if not mapping.value:
            return text[: brace + 1] + flow + text[brace + 1 :]
        first = mapping.value[0][0].start_mark
        line_start = first.index - first.column
        if text[line_start : first.index].strip() == "":  # the first key on a line of its own
            indent = text[line_start : first.index]
            return text[:line_start] + f"{indent}{flow},{nl}" + text[line_start:]
        gap = " " if ", " in text or ": " in text else ""
        return text[: first.index] + f"{flow},{gap}" + text[first.index :]
    if not mapping.value:
        return None
    first = mapping.value[0][0].start_mark
    line_start = first.index - first.column
    if text[line_start : first.index].strip() != "":
        return None  # the first key shares its line with something else (a "- ")
    indent = text[line_start : first.index]
    return text[:line_start] + "".join(f"{indent}{line}{nl}" for line in block) + text[line_start:]


def _yaml_rewrite(text: str, expires: str) -> str:
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)  # d2 init's layout
    document = yaml.load(text)
    meta = document.get("metadata")
    if not isinstance(meta, CommentedMap):
        meta = CommentedMap()
        if "metadata" in document:
            document["metadata"] = meta
        else:
            document.insert(0, "metadata", meta)
    if "expires" in meta:
        meta["expires"] = expires
    else:
        meta.insert(0, "expires", expires)
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    return buffer.getvalue()


def _json_rewrite(text: str, expires: str) -> str:
    document = json.loads(text)
    meta = document.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    if "expires" in meta:
        meta["expires"] = expires
    else:
        meta = {"expires": expires, **meta}
    if "metadata" in document:
        document["metadata"] = meta
    else:
        document = {"metadata": meta, **document}
    indent: str | int | None = None
    if "\n" in text:  # pretty-printed: the second line's indentation (only "\n" ends lines)
        second = text.split("\n", 2)[1]
        indent = second[: len(second) - len(second.lstrip(" \t"))]
        if set(indent) <= {" "}:
            indent = len(indent)
    separators = (",", ": ") if indent is not None else (", ", ": ")
    if indent is None and '": ' not in text:
        separators = (",", ":")
    out = json.dumps(
        document,
        indent=indent,
        separators=separators,
        ensure_ascii=text.isascii(),
    )
    return out + (_newline(text) if text.endswith(("\n", "\r")) else "")
