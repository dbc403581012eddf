"""``d2 init``: scan, write a starter policy where the runtime reads it, never
overwrite without --force, and the file loads."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from cli_testkit import Invoke, as_json
from d2.core import Limits, configure_rbac_sync, d2_guard, set_user
from d2.core.policy.load import discover_policy_file, load_policy_file
from ruamel.yaml import YAML


def project(root: Path, *tools: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = ["from d2 import d2_guard", ""]
    for i, tool in enumerate(tools):
        lines += [f'@d2_guard("{tool}")', f"def tool_{i}(x=None): ...", ""]
    (root / "tools.py").write_text("\n".join(lines))
    return root


def test_writes_the_xdg_policy_the_runtime_reads_and_it_loads(
    d2: Invoke, tmp_path: Path, xdg: Path
) -> None:
    src = project(tmp_path / "app", "billing:read", "web.search")
    result = d2("init", "--path", str(src))
    assert result.exit_code == 0, result.output
    target = xdg / "policy.yaml"
    assert f"wrote {target}" in result.stdout
    assert discover_policy_file() == str(target)
    policy = load_policy_file(target, Limits())  # local limits: loads cleanly
    assert policy.roles == {"admin", "developer"}
    assert policy.concrete_tools == {"billing:read", "web.search"}
    assert 6 * 86400 < policy.expires_at - time.time() <= 7 * 86400
    doc = YAML(typ="safe").load(target.read_text())
    assert doc["policies"][0] == {"role": "admin", "permissions": ["*"]}
    assert target.read_text().startswith("# D2 policy written by `d2 init`")
    manager = configure_rbac_sync()  # the runtime picks it up by discovery
    set_user("u", roles=["developer"])
    assert d2_guard("web.search")(lambda: "ran")() == "ran"
    manager.shutdown()


def test_never_overwrites_without_force_and_keeps_a_backup_with_it(
    d2: Invoke, tmp_path: Path, xdg: Path
) -> None:
    src = project(tmp_path / "app", "a.one")
    assert d2("init", "--path", str(src)).exit_code == 0
    first = (xdg / "policy.yaml").read_text()
    project(tmp_path / "app", "a.one", "a.two")
    refused = d2("init", "--path", str(src))
    assert refused.exit_code == 2
    assert "already exists" in refused.stderr and "--force" in refused.stderr
    assert (xdg / "policy.yaml").read_text() == first
    forced = d2("init", "--path", str(src), "--force")
    assert forced.exit_code == 0, forced.output
    assert (xdg / "policy.yaml.bak").read_text() == first
    assert "a.two" in (xdg / "policy.yaml").read_text()


def test_force_renames_the_new_file_over_the_old_one_keeping_its_mode(
    d2: Invoke, tmp_path: Path, xdg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = project(tmp_path / "app", "a.one")
    assert d2("init", "--path", str(src)).exit_code == 0
    target = xdg / "policy.yaml"
    target.chmod(0o600)
    old = target.stat().st_ino
    removed: list[str] = []
    for name in ("unlink", "rename"):  # the policy file never goes missing
        real = getattr(os, name)

        def spy(path: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            removed.append(os.fspath(path))
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, spy)
    project(tmp_path / "app", "a.one", "a.two")
    assert d2("init", "--path", str(src), "--force").exit_code == 0
    assert str(target) not in removed
    assert (xdg / "policy.yaml.bak").stat().st_ino == old  # the old file, untouched
    assert target.stat().st_ino != old and target.stat().st_mode & 0o777 == 0o600
    assert "a.two" in target.read_text()
    assert sorted(p.name for p in xdg.iterdir()) == ["policy.yaml", "policy.yaml.bak"]


def test_another_policy_file_in_the_config_dir_blocks_too(
    d2: Invoke, tmp_path: Path, xdg: Path
) -> None:
    xdg.mkdir(parents=True)
    (xdg / "policy.json").write_text("{}")
    src = project(tmp_path / "app", "t")
    refused = d2("init", "--path", str(src), "--format", "yaml")
    assert refused.exit_code == 2 and "policy.json" in refused.stderr
    assert d2("init", "--path", str(src), "--force").exit_code == 0
    assert not (xdg / "policy.json").exists() and (xdg / "policy.json.bak").exists()
    assert discover_policy_file() == str(xdg / "policy.yaml")


def test_json_format_output_file_name_and_json_report(d2: Invoke, tmp_path: Path) -> None:
    src = project(tmp_path / "app", "x.a", "x.b")
    out = tmp_path / "custom.json"
    result = d2("init", "--path", str(src), "--output", str(out), "--name", "shop", "--json")
    assert result.exit_code == 0, result.output
    report = as_json(result)
    assert report["ok"] and report["format"] == "json" and report["tools"] == ["x.a", "x.b"]
    assert report["found"]["x.a"] == ["tools.py:4"]
    doc = json.loads(out.read_text())
    assert doc["metadata"]["name"] == "shop"
    assert load_policy_file(out, Limits()).name == "shop"
    assert d2("init", "--format", "json", "--path", str(src)).exit_code == 0
    assert (tmp_path / "xdg" / "d2" / "policy.json").exists()


def test_no_guarded_tools_is_a_warning_and_still_a_valid_file(
    d2: Invoke, tmp_path: Path, xdg: Path
) -> None:
    (tmp_path / "empty").mkdir()
    result = d2("init", "--path", str(tmp_path / "empty"))
    assert result.exit_code == 0
    assert "no guarded functions found" in result.stderr
    assert load_policy_file(xdg / "policy.yaml", Limits()).tool_count == 0


def test_too_many_tools_fold_into_prefix_wildcards(d2: Invoke, tmp_path: Path, xdg: Path) -> None:
    tools = [f"billing:op{i}" for i in range(30)] + ["web.search"]
    src = project(tmp_path / "app", *tools)
    result = d2("init", "--path", str(src))
    assert result.exit_code == 0, result.output
    assert "folded into prefix wildcards" in result.stderr
    policy = load_policy_file(xdg / "policy.yaml", Limits())
    assert policy.patterns == {"billing:*"} and policy.concrete_tools == {"web.search"}


def test_too_many_unrelated_tools_are_refused(d2: Invoke, tmp_path: Path, xdg: Path) -> None:
    src = project(tmp_path / "app", *[f"tool{i}" for i in range(30)])
    result = d2("init", "--path", str(src))
    assert result.exit_code == 1
    assert "a local policy may name 25" in result.stderr
    assert not (xdg / "policy.yaml").exists()


def test_missing_path_is_a_usage_error(d2: Invoke) -> None:
    result = d2("init", "--path", "does-not-exist")
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_d2_policy_file_is_pointed_out(
    d2: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("D2_POLICY_FILE", str(tmp_path / "elsewhere.yaml"))
    result = d2("init", "--path", str(project(tmp_path / "app", "t")))
    assert result.exit_code == 0
    assert "D2_POLICY_FILE" in result.stderr


def test_a_policy_in_the_working_directory_or_d2_policy_file_blocks_too(
    d2: Invoke, tmp_path: Path, xdg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = project(tmp_path / "app", "t")
    local = tmp_path / "policy.yaml"  # the working directory
    local.write_text("mine")
    refused = d2("init", "--path", str(src))
    assert refused.exit_code == 2 and str(local) in refused.stderr
    assert not (xdg / "policy.yaml").exists()
    forced = d2("init", "--path", str(src), "--force")
    assert forced.exit_code == 0, forced.output
    assert local.read_text() == "mine" and "no longer read" in forced.stderr
    local.unlink()
    (xdg / "policy.yaml").unlink()
    explicit = tmp_path / "elsewhere.json"
    explicit.write_text("{}")
    monkeypatch.setenv("D2_POLICY_FILE", str(explicit))
    blocked = d2("init", "--path", str(src))
    assert blocked.exit_code == 2 and str(explicit) in blocked.stderr
    assert not (xdg / "policy.yaml").exists()


def test_force_never_overwrites_a_previous_backup(d2: Invoke, tmp_path: Path, xdg: Path) -> None:
    src = project(tmp_path / "app", "a.one")
    assert d2("init", "--path", str(src)).exit_code == 0
    versions = [(xdg / "policy.yaml").read_text()]
    for tool in ("a.two", "a.three"):
        project(tmp_path / "app", tool)
        assert d2("init", "--path", str(src), "--force").exit_code == 0
        versions.append((xdg / "policy.yaml").read_text())
    assert (xdg / "policy.yaml.bak").read_text() == versions[0]
    assert (xdg / "policy.yaml.bak.1").read_text() == versions[1]
    assert "a.three" in versions[2]


def test_deeply_nested_source_is_a_warning_not_a_traceback(
    d2: Invoke, tmp_path: Path, xdg: Path
) -> None:
    src = project(tmp_path / "app", "t")
    (src / "deep.py").write_text("import d2\nx = " + "1 + " * 100_000 + "1\n")
    result = d2("init", "--path", str(src))
    assert result.exit_code == 0, result.output
    assert "deep.py: not parsed" in result.stderr
    diagnosed = d2("diagnose", "--path", str(src))
    assert "Traceback" not in diagnosed.output and "RecursionError" in diagnosed.output


def test_force_replaces_the_policy_in_one_step_never_leaving_none(
    d2: Invoke, tmp_path: Path, xdg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process starting while ``init --force`` runs reads the old policy or the
    new one: the target is never missing (discovery would fall through to
    ``./policy.*``, or find nothing), and the files it shadows go only after."""
    from d2.cli import documents, init_cmd

    src = project(tmp_path / "app", "a.one")
    assert d2("init", "--path", str(src)).exit_code == 0
    target = xdg / "policy.yaml"
    old = target.read_bytes()
    (xdg / "policy.json").write_text("{}")  # shadowed by the new policy.yaml
    seen: list[tuple[bytes, bool]] = []
    real_write = init_cmd.write_file

    def watching_write(path: Path, content: str, **kwargs: bool) -> None:
        seen.append((path.read_bytes(), (xdg / "policy.json").exists()))
        real_write(path, content, **kwargs)

    replaced: list[tuple[str, str]] = []
    real_replace = documents.os.replace

    def watching_replace(src_path: str, dst: object) -> None:
        replaced.append((str(Path(src_path).parent), str(dst)))
        real_replace(src_path, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(init_cmd, "write_file", watching_write)
    monkeypatch.setattr(documents.os, "replace", watching_replace)
    project(tmp_path / "app", "a.one", "a.two")
    forced = d2("init", "--path", str(src), "--force")
    assert forced.exit_code == 0, forced.output
    assert seen == [(old, True)]  # the old file still in place when the new one is written
    assert replaced == [(str(xdg), str(target))]  # renamed over it from the same directory
    assert (xdg / "policy.yaml.bak").read_bytes() == old
    assert (xdg / "policy.json.bak").read_text() == "{}" and not (xdg / "policy.json").exists()
    assert "a.two" in target.read_text()
    assert sorted(p.name for p in xdg.iterdir()) == [
        "policy.json.bak",
        "policy.yaml",
        "policy.yaml.bak",
    ]  # no temporary file left behind
