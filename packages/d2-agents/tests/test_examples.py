"""Every example in examples/agents/ runs as documented (``python
examples/agents/<name>.py``), exits 0 and shows the three things it promises: the
tools each user is offered, a refused call, and the exfiltration chain stopped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "agents"


@pytest.mark.parametrize(
    "script",
    ["mcp_server.py", "langchain_agent.py", "openai_agents_run.py", "pydantic_ai_agent.py"],
)
def test_example_runs_and_shows_what_it_promises(script: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("D2_", "OPENAI_"))}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "['web_search']" in out  # the viewer is offered only the search
    if script == "mcp_server.py":  # a hidden tool is answered like a missing one
        assert "ERROR  Unknown tool: read_users" in out
    else:
        assert "(not_granted)" in out  # a call outside the user's grants is refused
    assert "(input_validation): argument 'limit' fails max 50" in out
    assert "'email': '[REDACTED]'" in out or '"email": "[REDACTED]"' in out
    assert "(sequence_violation)" in out and "(exfiltration)" in out
    assert "3 results for 'weather'" in out  # the agent carries on after a denial
