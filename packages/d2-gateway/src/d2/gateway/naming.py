"""How upstream tools, resources and prompts are named, to the policy and to clients.

- The policy's tool id of tool ``TOOL`` of upstream ``NAME`` is ``NAME.TOOL``
  (``git.git_log``).
- The name a client (and its model) sees is ``NAME__TOOL`` (``git__git_log``): a
  double underscore, because every major model API accepts tool names matching
  ``[A-Za-z0-9_-]{1,64}`` and a dot is not among them.
- A resource is ``resource:NAME:<uri>`` and a prompt ``prompt:NAME:<name>`` in the
  policy (a separate namespace, so a ``git.*`` grant for tools never opens git's
  resources or prompts); both are denied unless a grant names them.

Shown names are looked up in a table built when the upstream's tools are listed,
never parsed back: a name not in the table is unknown.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

__all__ = [
    "MAX_SHOWN",
    "SEPARATOR",
    "Entry",
    "Table",
    "check_upstream_name",
    "prompt_id",
    "resource_id",
    "shown_name",
    "tool_id",
]

SEPARATOR = "__"
MAX_SHOWN = 64  # the longest tool name the major model APIs accept
_UPSTREAM = re.compile(r"[A-Za-z0-9-]{1,32}")
_TOOL = re.compile(r"[A-Za-z0-9_-]+")
_logger = logging.getLogger("d2.gateway")


def check_upstream_name(name: str) -> str:
    """Return ``name`` when it may name an upstream (``[A-Za-z0-9-]``, 1 to 32
    characters); raise ``ValueError`` saying what is allowed otherwise."""
    if not isinstance(name, str) or _UPSTREAM.fullmatch(name) is None:
        raise ValueError(
            f"upstream name {name!r} is not allowed: use 1 to 32 letters, digits or '-' "
            "(it prefixes the policy's tool ids, NAME.TOOL, and the names clients see, "
            f"NAME{SEPARATOR}TOOL)"
        )
    return name


def tool_id(upstream: str, tool: str) -> str:
    """The policy's id of ``tool`` of ``upstream``: ``NAME.TOOL``."""
    return f"{upstream}.{tool}"


def shown_name(upstream: str, name: str) -> str:
    """The name clients see: ``NAME__TOOL`` (also used for prompts)."""
    return f"{upstream}{SEPARATOR}{name}"


def resource_id(upstream: str, uri: str) -> str:
    """The policy's id of a resource: ``resource:NAME:<uri>``."""
    return f"resource:{upstream}:{uri}"


def prompt_id(upstream: str, name: str) -> str:
    """The policy's id of a prompt: ``prompt:NAME:<name>``."""
    return f"prompt:{upstream}:{name}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One exposed item: its ``upstream``, its ``name`` there, its policy id
    (``policy_id``) and the upstream's description of it (``item``)."""

    upstream: str
    name: str
    policy_id: str
    item: object


class Table:
    """Shown name -> :class:`Entry`, rebuilt whole whenever an upstream's listing
    changes (readers see the old table or the new one, never half of one)."""

    __slots__ = ("entries", "refused")

    def __init__(self, entries: dict[str, Entry], refused: tuple[str, ...] = ()) -> None:
        self.entries = entries
        self.refused = refused

    @classmethod
    def build(cls, listings: dict[str, list[tuple[str, object]]], *, kind: str = "tool") -> Table:
        """Build the table from each upstream's ``(name, item)`` pairs, in upstream
        order. A name that is not ``[A-Za-z0-9_-]``, whose shown name is longer
        than :data:`MAX_SHOWN` or already taken, is left out and logged (never
        renamed: a renamed tool would carry a policy id nobody wrote)."""
        entries: dict[str, Entry] = {}
        refused: list[str] = []
        for upstream, items in listings.items():
            for name, item in items:
                shown = shown_name(upstream, name)
                why = None
                if not isinstance(name, str) or _TOOL.fullmatch(name) is None:
                    why = "its name has characters outside [A-Za-z0-9_-]"
                elif len(shown) > MAX_SHOWN:
                    why = f"{shown!r} is longer than {MAX_SHOWN} characters"
                elif shown in entries:
                    why = f"{shown!r} is already the name of another {kind}"
                if why is not None:
                    refused.append(f"{upstream}:{name}")
                    _logger.warning(
                        "d2-gateway: %s %r of upstream %r is not exposed: %s (shorten the "
                        "upstream name, or rename the %s upstream)",
                        kind,
                        name,
                        upstream,
                        why,
                        kind,
                    )
                    continue
                pid = tool_id(upstream, name) if kind == "tool" else prompt_id(upstream, name)
                entries[shown] = Entry(upstream, name, pid, item)
        return cls(entries, tuple(refused))

    def get(self, shown: object) -> Entry | None:
        """The entry of a shown name, or ``None``."""
        return self.entries.get(shown) if isinstance(shown, str) else None
