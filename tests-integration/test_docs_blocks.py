"""Every ```python block in docs/ runs (the README's are run by test_docs_examples.py).

Markers, each on the line right above a fence (indented like it):

- ``<!-- fragment: reason -->``: the block cannot run alone (it needs the reader's
  app); it is still compiled, so it cannot rot into invalid Python.
- ``<!-- file: NAME -->``: the block (a policy, say) is saved as ``NAME`` in the
  working directory of every block of the same page, with any ``expires: "..."``
  moved to three days from now (local policies expire within 7 days).
- ``<!-- output -->`` above a ```text block: the python block before it on the page
  prints exactly that.

Blocks inside admonitions and tabs (indented fences) count like any other.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OPEN = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n`]*$")
MARKER = re.compile(r"^[ \t]*<!-- (?P<kind>fragment|file|output)(?::(?P<arg>[^>]*))?\s*-->\s*$")


@dataclass
class Block:
    lang: str
    code: str
    marker: str | None = None  # fragment, file or output
    arg: str = ""
    line: int = 0


@dataclass
class Page:
    path: Path
    blocks: list[Block] = field(default_factory=list)

    def files(self) -> dict[str, str]:
        return {b.arg.strip(): b.code for b in self.blocks if b.marker == "file"}


def parse(path: Path) -> Page:
    """The fenced blocks of a Markdown page, with the marker above each."""
    page = Page(path)
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = OPEN.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, lang = m.group("indent"), m.group("lang")
        end = i + 1
        while end < len(lines) and lines[end].rstrip() != f"{indent}```":
            end += 1
        body = [ln.removeprefix(indent) for ln in lines[i + 1 : end]]
        block = Block(lang, textwrap.dedent("\n".join(body) + "\n"), line=i + 1)
        marker = MARKER.match(lines[i - 1]) if i > 0 else None
        if marker is not None:
            block.marker, block.arg = marker.group("kind"), marker.group("arg") or ""
        page.blocks.append(block)
        i = end + 1
    return page


PAGES = [parse(p) for p in sorted((ROOT / "docs").rglob("*.md"))]
PYTHON = [
    pytest.param(page, block, id=f"{page.path.name}:{block.line}")
    for page in PAGES
    for block in page.blocks
    if block.lang == "python"
]


def expected_output(page: Page, block: Block) -> str | None:
    """The ``<!-- output -->`` text block that follows ``block`` on its page, if any."""
    after = page.blocks[page.blocks.index(block) + 1 :]
    for other in after:
        if other.lang == "python":
            return None
        if other.lang == "text" and other.marker == "output":
            return other.code
    return None


def fresh(text: str) -> str:
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3 * 86400))
    return re.sub(r'expires: "[^"]+"', f'expires: "{soon}"', text)


@pytest.mark.parametrize(("page", "block"), PYTHON)
def test_docs_python_block_runs(page: Page, block: Block, tmp_path: Path) -> None:
    compile(block.code, f"{page.path.name}:{block.line}", "exec")
    if block.marker == "fragment":
        assert block.arg.strip(), "a fragment marker says why the block cannot run alone"
        return
    for name, text in page.files().items():
        (tmp_path / name).write_text(fresh(text))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("D2_", "OTEL_"))}
    env.update(D2_SILENT="1", HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-c", block.code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = expected_output(page, block)
    if shown is not None:
        assert proc.stdout == shown, f"the block prints otherwise:\n{proc.stdout}"


def test_output_and_file_markers_sit_on_the_right_blocks() -> None:
    for page in PAGES:
        for block in page.blocks:
            if block.marker == "output":
                assert block.lang == "text", f"{page.path.name}:{block.line}"
            if block.marker == "file":
                assert block.arg.strip(), f"{page.path.name}:{block.line}"
            if block.lang == "python" and block.marker not in (None, "fragment"):
                raise AssertionError(f"{page.path.name}:{block.line}: {block.marker} on python")
