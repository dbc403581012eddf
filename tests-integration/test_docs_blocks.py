"""Every ```python block of the docs runs: docs/, the README and each distribution's
README (its long description on the package index). Every output a page shows is
produced by the code before it and compared.

Markers, each on the line right above a fence (indented like it):

- ``<!-- fragment: reason -->``: the python block cannot run alone (it needs the
  reader's app); it is still compiled, so it cannot rot into invalid Python.
- ``<!-- file: NAME -->``: the block (a policy, say) is saved as ``NAME`` in the
  working directory of every block of the same page, with any ``expires: "..."``
  moved to three days from now (local policies expire within 7 days).
- ``<!-- run -->`` above a ```bash block: its commands run (``bash -e``, the ``d2``
  commands of this checkout on the PATH) before every python block after it on the
  page, in page order, as a reader following the page runs them.
- ``<!-- output -->`` above a ```text block: the python block (or ``run`` bash block)
  before it on the page prints exactly that. ``...`` in a line of it stands for any
  text (ids, times, ports that change from run to run). ``<!-- output:
  examples/NAME.py -->``: what that example prints (``make demo`` and friends).
- ``<!-- not-output: what it is -->`` above a ```text block: it shows no program's
  output (a synopsis, a file tree, the shape of a message); every other ```text block
  must be an ``output``, so no page can claim an output nobody checks.

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
MARKER = re.compile(
    r"^[ \t]*<!-- (?P<kind>fragment|file|output|run|not-output)(?::(?P<arg>[^>]*))?\s*-->\s*$"
)


@dataclass
class Block:
    lang: str
    code: str
    marker: str | None = None  # fragment, file, run, output or not-output
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


DOCS = [
    *sorted((ROOT / "docs").rglob("*.md")),
    ROOT / "README.md",
    *sorted((ROOT / "packages").glob("*/README.md")),
]
PAGES = [parse(p) for p in DOCS]
PYTHON = [
    pytest.param(page, block, id=f"{page.path.relative_to(ROOT)}:{block.line}")
    for page in PAGES
    for block in page.blocks
    if block.lang == "python"
]


def expected_output(page: Page, block: Block) -> str | None:
    """The ``<!-- output -->`` text block that follows ``block`` on its page, if any."""
    after = page.blocks[page.blocks.index(block) + 1 :]
    for other in after:
        if other.lang == "python" or other.marker == "run":
            return None
        if other.lang == "text" and other.marker == "output":
            return other.code
    return None


def matches(shown: str, printed: str) -> bool:
    """``printed`` is ``shown``, where ``...`` in a line of ``shown`` is any text."""
    want, got = shown.splitlines(), printed.splitlines()
    if len(want) != len(got):
        return False
    for line, actual in zip(want, got, strict=True):
        pattern = ".*".join(re.escape(part) for part in line.split("..."))
        if re.fullmatch(pattern, actual) is None:
            return False
    return True


def environment(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("D2_", "OTEL_"))}
    bin_dir = str(Path(sys.executable).parent)  # this checkout's python and d2 commands
    env.update(
        D2_SILENT="1",
        HOME=str(tmp_path),
        XDG_CONFIG_HOME=str(tmp_path),
        PATH=bin_dir + os.pathsep + env.get("PATH", ""),
    )
    return env


def run(argv: list[str], cwd: Path, env: dict[str, str], where: str) -> str:
    """Run ``argv`` as a reader would; its stdout (a failure shows its stderr)."""
    proc = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert proc.returncode == 0, f"{where} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def run_shell(page: Page, block: Block, cwd: Path, env: dict[str, str]) -> str:
    where = f"{page.path.relative_to(ROOT)}:{block.line}"
    return run(["bash", "-euo", "pipefail", "-c", block.code], cwd, env, where)


def prepare(page: Page, block: Block, tmp_path: Path) -> dict[str, str]:
    """The page's files, and its ``run`` blocks before ``block``, as a reader has them."""
    for name, text in page.files().items():
        (tmp_path / name).write_text(fresh(text))
    env = environment(tmp_path)
    for earlier in page.blocks[: page.blocks.index(block)]:
        if earlier.marker == "run":
            run_shell(page, earlier, tmp_path, env)
    return env


def fresh(text: str) -> str:
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3 * 86400))
    return re.sub(r'(expires"?: ")[^"]+"', lambda m: f'{m.group(1)}{soon}"', text)


@pytest.mark.parametrize(("page", "block"), PYTHON)
def test_docs_python_block_runs(page: Page, block: Block, tmp_path: Path) -> None:
    compile(block.code, f"{page.path.name}:{block.line}", "exec")
    if block.marker == "fragment":
        assert block.arg.strip(), "a fragment marker says why the block cannot run alone"
        return
    env = prepare(page, block, tmp_path)
    where = f"{page.path.relative_to(ROOT)}:{block.line}"
    printed = run([sys.executable, "-c", block.code], tmp_path, env, where)
    shown = expected_output(page, block)
    if shown is not None:
        assert matches(shown, printed), f"the block prints otherwise:\n{printed}"


SHELL_OUTPUTS = [
    pytest.param(page, block, id=f"{page.path.relative_to(ROOT)}:{block.line}")
    for page in PAGES
    for block in page.blocks
    if block.marker == "run" and expected_output(page, block) is not None
]


@pytest.mark.parametrize(("page", "block"), SHELL_OUTPUTS)
def test_docs_shell_block_prints_what_the_page_shows(
    page: Page, block: Block, tmp_path: Path
) -> None:
    env = prepare(page, block, tmp_path)
    printed = run_shell(page, block, tmp_path, env)
    shown = expected_output(page, block)
    assert shown is not None and matches(shown, printed), f"it prints otherwise:\n{printed}"


def test_every_text_block_is_a_checked_output_or_says_what_it_is() -> None:
    unchecked = [
        f"{page.path.relative_to(ROOT)}:{block.line}"
        for page in PAGES
        for block in page.blocks
        if block.lang in ("text", "console", "") and block.marker not in ("output", "not-output")
    ]
    assert unchecked == [], (
        "mark each <!-- output --> (and make it true) or <!-- not-output: ... -->"
    )


EXAMPLE_OUTPUTS = [
    pytest.param(page, block, id=f"{page.path.relative_to(ROOT)}:{block.line}")
    for page in PAGES
    for block in page.blocks
    if block.marker == "output" and block.arg.strip().startswith("examples/")
]


@pytest.mark.parametrize(("page", "block"), EXAMPLE_OUTPUTS)
def test_docs_show_what_the_examples_print(page: Page, block: Block, tmp_path: Path) -> None:
    env = environment(tmp_path)
    env.pop("D2_SILENT")
    where = f"{page.path.relative_to(ROOT)}:{block.line}"
    printed = run([sys.executable, str(ROOT / block.arg.strip())], tmp_path, env, where)
    assert matches(block.code, printed), f"it prints otherwise:\n{printed}"


def test_troubleshooting_shows_the_error_hierarchy_of_the_code() -> None:
    import d2.core.errors

    doc = d2.core.errors.__doc__ or ""
    tree = doc[doc.index("    D2Error") : doc.index("\n\n(*)")]
    expected = "\n".join(line[4:] for line in tree.splitlines()).replace("``", "")
    page = next(p for p in PAGES if p.path.name == "troubleshooting.md")
    shown = next(b.code for b in page.blocks if b.code.startswith("D2Error"))
    assert shown.strip() == expected.strip()


def test_every_output_follows_the_code_that_prints_it() -> None:
    for page in PAGES:
        for block in page.blocks:
            if block.marker != "output" or block.arg.strip().startswith("examples/"):
                continue
            before = page.blocks[: page.blocks.index(block)]
            code = [b for b in before if b.lang == "python" or b.marker == "run"]
            where = f"{page.path.relative_to(ROOT)}:{block.line}"
            assert code, f"{where}: an output with no code before it"
            assert code[-1].marker != "fragment", f"{where}: the code before it never runs"


STALE = re.compile(
    r"not (yet )?implemented|not implemented yet|coming (later|soon)|in a (later|future) "
    r"(release|version)|(will|to) be added later|planned for a later",
    re.IGNORECASE,
)


def test_no_page_promises_as_future_what_exists() -> None:
    # whatever a page says is coming must be checked against the code when it lands;
    # the phrases are refused so a stale promise cannot survive silently
    found = [
        f"{page.path.relative_to(ROOT)}:{n}: {line.strip()}"
        for page in PAGES
        for n, line in enumerate(page.path.read_text().splitlines(), 1)
        if STALE.search(line)
    ]
    assert found == []


def test_output_and_file_markers_sit_on_the_right_blocks() -> None:
    for page in PAGES:
        for block in page.blocks:
            if block.marker == "output":
                assert block.lang == "text", f"{page.path.name}:{block.line}"
            if block.marker == "file":
                assert block.arg.strip(), f"{page.path.name}:{block.line}"
            if block.lang == "python" and block.marker not in (None, "fragment"):
                raise AssertionError(f"{page.path.name}:{block.line}: {block.marker} on python")
            if block.marker == "run":
                assert block.lang == "bash", f"{page.path.name}:{block.line}"
            if block.marker == "not-output":
                assert block.lang == "text" and block.arg.strip(), f"{page.path.name}:{block.line}"


def test_the_readme_and_the_docs_list_every_extra_of_d2_sdk() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "packages" / "d2-sdk" / "pyproject.toml").read_text())
    extras = set(project["project"]["optional-dependencies"])
    for page in (
        ROOT / "README.md",
        ROOT / "docs" / "index.md",
        ROOT / "packages" / "d2-sdk" / "README.md",
    ):
        text = page.read_text()
        missing = sorted(e for e in extras if f"`{e}`" not in text)
        assert missing == [], f"{page.relative_to(ROOT)} does not list {missing}"
