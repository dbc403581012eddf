"""Every ```python block in docs/ runs. A fragment that cannot run alone (it needs
the reader's app) says so on the line above it, ``<!-- fragment: reason -->``; it is
still compiled, so it cannot rot into invalid Python."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"(<!-- fragment:[^>]*-->\n)?^```python\n(.*?)^```", re.M | re.S)
BLOCKS = [
    pytest.param(body, bool(marker), id=f"{path.name}:{n}")
    for path in sorted((ROOT / "docs").rglob("*.md"))
    for n, (marker, body) in enumerate(FENCE.findall(path.read_text()))
]


@pytest.mark.parametrize(("code", "fragment"), BLOCKS)
def test_docs_python_block_runs(code: str, fragment: bool, tmp_path: Path) -> None:
    compile(code, "<docs>", "exec")
    if fragment:
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith(("D2_", "OTEL_"))}
    env.update(D2_SILENT="1", HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
