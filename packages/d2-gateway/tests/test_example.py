"""``examples/gateway/agent.py`` runs offline and shows what the docs say it shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "gateway" / "agent.py"


def test_the_example_reads_the_repo_then_cannot_carry_it_out(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("D2_")}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**env, "HOME": str(tmp_path)},
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == (
        "alice (developer) sees: fetch__fetch, git__git_diff, git__git_log, git__git_show, "
        "git__git_status"
    )
    assert "allowed: Message: roadmap: acquire Initech" in lines[1]
    assert "refused (data_flow_violation)" in lines[2]
    assert lines[3] == "git__git_commit    refused: Unknown tool: git__git_commit"
