"""docs/integrations.md: every Python block is valid Python, and the names it uses
from ``d2.asgi`` exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import d2.asgi

DOC = Path(__file__).resolve().parents[3] / "docs" / "integrations.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def python_blocks() -> list[str]:
    return [body for kind, body in FENCE.findall(DOC.read_text()) if kind == "python"]


def test_every_python_block_in_the_integrations_doc_parses() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 6
    for block in blocks:
        ast.parse(block)


def test_names_the_doc_imports_from_d2_asgi_exist() -> None:
    imported = set()
    for block in python_blocks():
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module == "d2.asgi":
                imported |= {alias.name for alias in node.names}
    assert imported
    assert imported <= set(d2.asgi.__all__)


def test_the_reference_table_lists_every_public_name() -> None:
    text = DOC.read_text()
    for name in d2.asgi.__all__:
        assert f"`{name}" in text, name
