"""The ``d2`` command line end to end against the real d2-server: ``init`` ->
``publish`` -> ``pull`` -> ``revoke``, with the SDK's cloud runtime following along,
and ``d2 init`` on the repository's own examples passing ``d2 diagnose``.

The CLI runs in-process (typer's CliRunner) with ``D2_TOKEN``/``D2_API_URL`` from
the server harness and ``HOME``/``XDG_CONFIG_HOME`` in the test's directory."""

from __future__ import annotations

import json
import os
import stat
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from d2.cli import app
from d2.core import (
    ConfigurationError,
    Limits,
    PermissionDeniedError,
    clear_user_context,
    configure_rbac_sync,
    d2_guard,
    set_user,
    shutdown_all_rbac,
)
from d2.core.policy.load import load_policy_file
from d2.server.testing import D2Server
from ruamel.yaml import YAML
from typer.testing import CliRunner, Result

ROOT = Path(__file__).resolve().parents[1]
Cli = Callable[..., Result]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Cli]:
    """``cli(*args, input=None)``: the d2 command in a clean environment."""
    for key in list(os.environ):
        if key.startswith("D2_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("D2_SILENT", "1")
    monkeypatch.setenv("D2_TELEMETRY", "off")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    clear_user_context()
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(app, list(args), input=input, catch_exceptions=False)

    yield invoke
    shutdown_all_rbac()
    clear_user_context()


def use_server(monkeypatch: pytest.MonkeyPatch, server: D2Server) -> None:
    for key, value in server.env(server.developer_token).items():
        monkeypatch.setenv(key, value)


PROJECT = """
from d2 import d2_guard as guard
import d2


@guard("billing:read")
def read_billing(customer_id: str) -> dict:
    return {"customer": customer_id}


class Reports:
    @d2.d2_guard
    def weekly(self) -> str:
        return "report"
"""


def test_init_publish_pull_revoke_against_the_real_server(
    cli: Cli, d2_server: D2Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project" / "shop"
    project.mkdir(parents=True)
    (project / "__init__.py").write_text("")
    (project / "tools.py").write_text(textwrap.dedent(PROJECT))
    policy = tmp_path / "xdg" / "d2" / "policy.yaml"

    # init: the scan finds both tools, default id included
    init = cli("init", "--path", str(tmp_path / "project"), "--json")
    assert init.exit_code == 0, init.output
    assert json.loads(init.stdout)["tools"] == ["billing:read", "shop.tools.Reports.weekly"]
    assert load_policy_file(policy, Limits()).roles == {"admin", "developer"}
    clean = cli("diagnose", "--path", str(tmp_path / "project"), "--strict")
    assert clean.exit_code == 0, clean.output

    # publish: device key created (0600) and registered, first publish If-None-Match: *
    use_server(monkeypatch, d2_server)
    first = cli("publish", "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["version"] == 1
    key = tmp_path / "xdg" / "d2" / "keys" / "device-ed25519.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    # the SDK's cloud runtime (runtime token) follows the published policy
    manager = configure_rbac_sync(
        token=d2_server.runtime_token,
        api_url=d2_server.base_url,
        state_path=str(tmp_path / "bundles.json"),
        first_fetch_timeout=10.0,
    )
    assert manager.policy is not None and manager.policy.version == 1

    @d2_guard("billing:read")
    def read() -> str:
        return "billing"

    set_user("dev", roles=["developer"])
    assert read() == "billing"
    set_user("guest", roles=["viewer"])
    with pytest.raises(PermissionDeniedError):
        read()

    # a second publish goes out with If-Match (someone edits the local file)
    doc = YAML(typ="safe").load(policy.read_text())
    doc["policies"].append({"role": "viewer", "permissions": ["billing:read"]})
    policy.write_text(json.dumps(doc))
    second = cli("publish", str(policy), "--json")
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout)["version"] == 2
    manager.reload()
    assert manager.policy.version == 2
    assert read() == "billing"  # the viewer is allowed now

    # check and inspect read the verified cloud policy
    assert cli("check", "--role", "viewer", "billing:read").exit_code == 0
    shown = json.loads(cli("inspect", "--json").stdout)
    assert shown["origin"] == "cloud" and shown["version"] == 2 and shown["name"] == "test-app"

    # pull: verified, written, loads locally, says what it holds
    pulled = tmp_path / "pulled.yaml"
    pull = cli("pull", "--output", str(pulled), "--json")
    assert pull.exit_code == 0, pull.output
    report: dict[str, Any] = json.loads(pull.stdout)
    assert report["verified"] is True and report["version"] == 2
    local = load_policy_file(pulled, Limits())
    assert local.name == "test-app"
    assert local.concrete_tools == {"billing:read", "shop.tools.Reports.weekly"}
    assert "signature verified" in pulled.read_text()

    # revoke (asks first): the runtime denies everything, pull has nothing to verify
    declined = cli("revoke", input="n\n")
    assert declined.exit_code == 1
    revoked = cli("revoke", "--yes", "--json")
    assert revoked.exit_code == 0, revoked.output
    assert json.loads(revoked.stdout)["revoked_version"] == 2
    assert d2_server.fetch_bundle().status_code == 410
    with pytest.raises(ConfigurationError, match="no verified bundle"):
        manager.reload()  # poll now: 410
    assert manager.policy is None
    with pytest.raises(PermissionDeniedError):
        read()
    gone = cli("pull", "--output", str(tmp_path / "after.yaml"))
    assert gone.exit_code == 1 and "revoked" in gone.stderr
    assert not (tmp_path / "after.yaml").exists()

    # publishing again after a revocation is a first publish (If-None-Match: *)
    again = cli("publish", str(pulled), "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["version"] == 3


def test_init_on_the_repository_examples_passes_diagnose(cli: Cli, tmp_path: Path) -> None:
    examples = ROOT / "examples"
    init = cli("init", "--path", str(examples), "--json")
    assert init.exit_code == 0, init.output
    tools = json.loads(init.stdout)["tools"]
    assert {"web.search", "billing:read", "crm.lookup", "email.send"} <= set(tools)
    written = tmp_path / "xdg" / "d2" / "policy.yaml"
    assert load_policy_file(written, Limits()).tool_count == len(tools)
    diagnose = cli("diagnose", "--path", str(examples), "--strict", "--json")
    assert diagnose.exit_code == 0, diagnose.output
    report = json.loads(diagnose.stdout)
    assert report["ok"] and report["errors"] == 0 and report["warnings"] == 0


def test_quickstart_policy_without_expires_renewed_then_the_app_runs(tmp_path: Path) -> None:
    """The quickstart as a user runs it, in real processes: save policy.yaml without
    an expires line, `d2 renew policy.yaml`, start the app; a week later the
    renewal is the same one command, and the file is otherwise what the user wrote."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("D2_")}
    env.update(
        D2_SILENT="1",
        D2_TELEMETRY="off",
        HOME=str(tmp_path / "home"),
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
    )
    written = textwrap.dedent(
        """\
        # who may do what
        metadata:
          name: quickstart
        policies:
          - role: analyst
            permissions: [reports.read]   # read-only
        """
    )
    (tmp_path / "policy.yaml").write_text(written)
    app = textwrap.dedent(
        """\
        from d2 import configure_rbac_sync, d2_guard, set_user

        @d2_guard("reports.read")
        def read_report() -> str:
            return "report"

        configure_rbac_sync()
        set_user("alice", roles=["analyst"])
        print(read_report())
        """
    )
    (tmp_path / "app.py").write_text(app)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=tmp_path,
            env=env,
        )

    before = run("app.py")
    assert before.returncode != 0 and "no metadata.expires" in before.stderr
    for _ in range(2):  # the first renewal adds the line, the next ones move it
        renewed = run("-m", "d2", "renew", "policy.yaml")
        assert renewed.returncode == 0, renewed.stderr
        assert renewed.stdout.startswith("renewed policy.yaml: expires ")
        stamp = renewed.stdout.split("expires ", 1)[1].strip()
        expected = written.replace("metadata:\n", f'metadata:\n  expires: "{stamp}"\n')
        assert (tmp_path / "policy.yaml").read_text() == expected
        started = run("app.py")
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip() == "report"
