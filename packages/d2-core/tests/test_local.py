"""Local mode: file discovery, YAML and JSON, limits, hot reload of the watched file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from d2.core import (
    BundleExpiredError,
    InvalidPolicyError,
    Limits,
    LocalFileSource,
    MissingPolicyError,
    PolicyTooLargeError,
    TooManyToolsError,
    configure_rbac_sync,
    d2_guard,
    get_policy_manager,
    is_allowed,
    set_user,
)
from d2.core.policy import discover_policy_file


def write_json(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


YAML_POLICY = """\
metadata:
  name: yaml-app
  expires: {expires}
  tool_groups:
    sensitive: [db.read_users, secrets.get]
policies:
  - role: admin
    permissions: ["*"]
  - role: [analyst, senior_analyst]
    permissions:
      - billing:read
      - "reports:*"
      - "@sensitive"
      - tool: db.drop
        allow: false
"""


def test_yaml_policy_file_loads_and_decides(tmp_path: Path, future: Any) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(YAML_POLICY.format(expires=future()))
    manager = configure_rbac_sync(source=path)
    assert manager.policy is not None and manager.policy.name == "yaml-app"
    set_user("a", roles=["senior_analyst"])
    assert is_allowed("billing:read") and is_allowed("reports:q3") and is_allowed("secrets.get")
    assert not is_allowed("db.drop")


def test_unquoted_yaml_timestamp_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "policy.yml"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))
    path.write_text(f"metadata:\n  expires: {stamp}\npolicies: []\n")
    assert configure_rbac_sync(source=path).policy is not None


def test_discovery_order_env_then_xdg_then_cwd(
    tmp_path: Path, make_doc: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd_file = write_json(tmp_path / "policy.json", make_doc())
    assert discover_policy_file() == str(cwd_file)
    xdg_file = write_json(tmp_path / "xdg" / "d2" / "policy.json", make_doc())
    assert discover_policy_file() == str(xdg_file)
    (tmp_path / "xdg" / "d2" / "policy.yaml").write_text("policies: []\n")
    assert discover_policy_file().endswith("policy.yaml")  # yaml before yml before json
    env_file = write_json(tmp_path / "elsewhere.json", make_doc())
    monkeypatch.setenv("D2_POLICY_FILE", str(env_file))
    assert discover_policy_file() == str(env_file)


def test_xdg_defaults_to_home_config(
    tmp_path: Path, make_doc: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME")
    home_file = write_json(tmp_path / "home" / ".config" / "d2" / "policy.json", make_doc())
    assert discover_policy_file() == str(home_file)


def test_missing_d2_policy_file_is_an_error_not_skipped(
    tmp_path: Path, make_doc: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_json(tmp_path / "policy.json", make_doc())  # would be found by discovery
    monkeypatch.setenv("D2_POLICY_FILE", str(tmp_path / "typo.json"))
    with pytest.raises(MissingPolicyError, match="D2_POLICY_FILE"):
        configure_rbac_sync()


def test_no_policy_anywhere_lists_where_it_looked() -> None:
    with pytest.raises(MissingPolicyError) as info:
        configure_rbac_sync()
    assert "policy.yaml" in str(info.value) and "D2_POLICY_FILE" in str(info.value)


def test_configure_failure_leaves_guarded_calls_denied(tmp_path: Path) -> None:
    @d2_guard("x")
    def tool() -> str:
        return "ran"

    path = tmp_path / "policy.json"
    path.write_text("{not json")
    with pytest.raises(InvalidPolicyError, match="not valid JSON"):
        configure_rbac_sync(source=path)
    set_user("a", roles=["admin"])
    with pytest.raises(MissingPolicyError):
        tool()


def test_too_many_tools(tmp_path: Path, make_doc: Any) -> None:
    doc = make_doc({"role": "a", "permissions": [f"t{i}" for i in range(26)]})
    path = write_json(tmp_path / "p.json", doc)
    with pytest.raises(TooManyToolsError, match=r"26 tools.*at most 25"):
        configure_rbac_sync(source=path)
    manager = configure_rbac_sync(source=path, limits=Limits(max_tools=26))
    assert manager.policy is not None and manager.policy.tool_count == 26


def test_twenty_five_tools_with_star_and_prefixes_is_fine(tmp_path: Path, make_doc: Any) -> None:
    doc = make_doc({"role": "a", "permissions": ["*"] + [f"t{i}" for i in range(24)] + ["p:*"]})
    assert configure_rbac_sync(source=write_json(tmp_path / "p.json", doc)).policy is not None


def test_too_large(tmp_path: Path, make_doc: Any) -> None:
    doc = make_doc({"role": "a", "permissions": ["t"]}, description="x" * (512 * 1024))
    path = write_json(tmp_path / "p.json", doc)
    with pytest.raises(PolicyTooLargeError, match="at most 524288"):
        configure_rbac_sync(source=path)
    assert configure_rbac_sync(source=path, limits=Limits(max_bytes=1 << 20)).policy


@pytest.mark.parametrize(
    ("expires", "match"),
    [(None, "no metadata.expires"), (-60, "expired at"), (8 * 86400, "more than 7 days")],
)
def test_expiry_is_required_future_and_within_seven_days(
    tmp_path: Path, expires: float | None, match: str
) -> None:
    meta: dict[str, Any] = {}
    if expires is not None:
        meta["expires"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + expires))
    path = write_json(tmp_path / "p.json", {"metadata": meta, "policies": []})
    with pytest.raises(BundleExpiredError, match=match):
        configure_rbac_sync(source=path)


def test_limits_are_validated() -> None:
    from d2.core import ConfigurationError

    with pytest.raises(ConfigurationError, match="max_tools"):
        Limits(max_tools=0)
    assert Limits.unlimited().max_tools > 10**9
    assert Limits() == Limits(25, 512 * 1024)


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_watched_file_valid_change_swaps_policy(tmp_path: Path, make_doc: Any) -> None:
    path = write_json(tmp_path / "p.json", make_doc({"role": "a", "permissions": ["x"]}))
    configure_rbac_sync(source=LocalFileSource(path, poll_interval=0.02))
    set_user("u", roles=["a"])
    assert is_allowed("x") and not is_allowed("y")
    write_json(path, make_doc({"role": "a", "permissions": ["y"]}))
    assert wait_for(lambda: is_allowed("y"))
    assert not is_allowed("x")


def test_watched_file_invalid_change_is_logged_and_old_policy_stays(
    tmp_path: Path, make_doc: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_json(tmp_path / "p.json", make_doc({"role": "a", "permissions": ["x"]}))
    manager = configure_rbac_sync(source=LocalFileSource(path, poll_interval=0.02))
    before = manager.policy
    set_user("u", roles=["a"])
    path.write_text('{"policies": [{"role": "a", "permisions": ["y"]}]}')
    assert wait_for(lambda: "refused" in caplog.text)
    assert "permisions" in caplog.text
    assert manager.policy is before and is_allowed("x")
    # a later valid change is still picked up
    write_json(path, make_doc({"role": "a", "permissions": ["z"]}))
    assert wait_for(lambda: is_allowed("z"))


def test_deleted_file_keeps_policy_until_it_returns(tmp_path: Path, make_doc: Any) -> None:
    path = write_json(tmp_path / "p.json", make_doc({"role": "a", "permissions": ["x"]}))
    configure_rbac_sync(source=LocalFileSource(path, poll_interval=0.02))
    set_user("u", roles=["a"])
    os.unlink(path)
    time.sleep(0.1)
    assert is_allowed("x")
    write_json(path, make_doc({"role": "a", "permissions": ["w"]}))
    assert wait_for(lambda: is_allowed("w"))


def test_shutdown_stops_the_watcher_thread(tmp_path: Path, make_doc: Any) -> None:
    import threading

    path = write_json(tmp_path / "p.json", make_doc())
    manager = configure_rbac_sync(source=LocalFileSource(path, poll_interval=0.02))
    assert any(t.name.startswith("d2-watch") for t in threading.enumerate())
    manager.shutdown()
    assert wait_for(lambda: not any(t.name.startswith("d2-watch") for t in threading.enumerate()))


def test_banner_names_the_file_and_d2_silent_hides_it(
    tmp_path: Path,
    make_doc: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="d2")
    path = write_json(tmp_path / "p.json", make_doc())
    monkeypatch.delenv("D2_SILENT")
    configure_rbac_sync(source=path)
    err = capsys.readouterr().err
    assert "D2 local mode" in err and str(path) in err and "D2_SILENT" in err
    assert str(path) in caplog.text  # the file used is logged
    monkeypatch.setenv("D2_SILENT", "1")
    configure_rbac_sync(source=path)
    assert capsys.readouterr().err == ""


def test_expiring_soon_warns_unless_silent(
    tmp_path: Path,
    make_doc: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    future: Any,
) -> None:
    path = write_json(tmp_path / "p.json", make_doc(expires=future(3600)))
    monkeypatch.delenv("D2_SILENT")
    configure_rbac_sync(source=path)
    assert "expires in 1.0 hours" in caplog.text


def test_reload_picks_up_changes_now(tmp_path: Path, make_doc: Any) -> None:
    path = write_json(tmp_path / "p.json", make_doc({"role": "a", "permissions": ["x"]}))
    configure_rbac_sync(source=LocalFileSource(path, poll_interval=None))
    write_json(path, make_doc({"role": "a", "permissions": ["y"]}))
    get_policy_manager().reload()
    set_user("u", roles=["a"])
    assert is_allowed("y")
