"""``d2 diagnose`` names the policy file in force and every policy file it shadows
(discovery order: ``D2_POLICY_FILE``, the config directory, ``./policy.*``), so
nobody edits a file the runtime does not read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_testkit import Invoke, as_json
from d2.core.policy.load import discover_policy_file
from d2.core.testing import expires_in


def _policy(path: Path, tool: str = "billing:read") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "metadata": {"expires": expires_in()},
        "policies": [{"role": "a", "permissions": [tool]}],
    }
    path.write_text(json.dumps(doc))
    return path


def _diagnose(d2: Invoke, *args: str) -> tuple[int, dict, str]:
    scripted = d2("diagnose", "--no-scan", "--json", *args)
    human = d2("diagnose", "--no-scan", *args)
    assert human.exit_code == scripted.exit_code
    return scripted.exit_code, as_json(scripted), human.stdout


def test_a_local_policy_shadowed_by_the_config_directory_is_named(
    d2: Invoke, tmp_path: Path, xdg: Path
) -> None:
    local = _policy(tmp_path / "policy.yaml")
    config = _policy(xdg / "policy.yaml")
    assert Path(discover_policy_file()) == config  # what the runtime reads
    code, data, text = _diagnose(d2)
    assert code == 0  # a warning
    assert data["policy"] == str(config)
    assert data["in_force"] == str(config)
    assert [s["file"] for s in data["shadowed"]] == [str(local)]
    why = data["shadowed"][0]["why"]
    assert why == "the config directory is searched before the current directory"
    finding = data["findings"][0]
    assert finding["check"] == "policy files" and finding["status"] == "warn"
    assert str(config) in finding["message"] and str(local) in finding["message"]
    assert f"{config}: in force (found in the config directory)" in text
    assert f"{local}: not read (the config directory is searched before" in text
    strict = d2("diagnose", "--no-scan", "--strict")
    assert strict.exit_code == 1  # CI fails on it with --strict


def test_diagnosing_the_shadowed_file_says_it_is_not_read(
    d2: Invoke, tmp_path: Path, xdg: Path
) -> None:
    _policy(tmp_path / "policy.json")
    config = _policy(xdg / "policy.yml")
    _, data, text = _diagnose(d2, "--policy", "policy.json")
    assert data["policy"] == "policy.json"
    message = data["findings"][0]["message"]
    assert message == f"policy.json is not read: the runtime reads {config} instead"
    assert f"{config}: in force" in text


def test_d2_policy_file_shadows_both(
    d2: Invoke, tmp_path: Path, xdg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = _policy(tmp_path / "policy.yaml")
    config = _policy(xdg / "policy.json")
    chosen = _policy(tmp_path / "elsewhere" / "mine.json")
    monkeypatch.setenv("D2_POLICY_FILE", str(chosen))
    assert Path(discover_policy_file()) == chosen
    _, data, text = _diagnose(d2)
    assert data["in_force"] == str(chosen)
    assert [s["file"] for s in data["shadowed"]] == [str(config), str(local)]
    assert {s["why"] for s in data["shadowed"]} == {"D2_POLICY_FILE is set and is read instead"}
    assert f"{chosen}: in force (named by D2_POLICY_FILE)" in text
    assert f"{config}: not read (D2_POLICY_FILE is set" in text
    assert f"{local}: not read (D2_POLICY_FILE is set" in text


def test_names_in_one_directory_shadow_each_other(d2: Invoke, xdg: Path) -> None:
    yaml_file = _policy(xdg / "policy.yaml")
    json_file = _policy(xdg / "policy.json")
    _, data, _ = _diagnose(d2)
    assert data["in_force"] == str(yaml_file)
    assert data["shadowed"] == [
        {"file": str(json_file), "why": "policy.yaml comes first in the config directory"}
    ]


def test_one_policy_file_means_no_finding(d2: Invoke, tmp_path: Path) -> None:
    local = _policy(tmp_path / "policy.yaml")
    code, data, _ = _diagnose(d2)
    assert code == 0 and data["in_force"] == str(local) and data["shadowed"] == []
    assert data["findings"][0]["check"] == "size"


def test_d2_policy_file_pointing_at_the_local_file_is_not_shadowing(
    d2: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = _policy(tmp_path / "policy.yaml")
    monkeypatch.setenv("D2_POLICY_FILE", "policy.yaml")
    _, data, _ = _diagnose(d2)
    assert data["in_force"] == "policy.yaml" and data["shadowed"] == []
    assert local.exists()


def test_a_missing_d2_policy_file_is_reported_when_a_file_is_named(
    d2: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = _policy(tmp_path / "policy.yaml")
    monkeypatch.setenv("D2_POLICY_FILE", str(tmp_path / "gone.yaml"))
    _, data, text = _diagnose(d2, "--policy", str(local))
    assert data["in_force"] is None
    finding = data["findings"][0]
    assert finding["check"] == "policy in force" and "gone.yaml" in finding["message"]
    assert f"{local}: not read (D2_POLICY_FILE is set (to a missing file)" in text
