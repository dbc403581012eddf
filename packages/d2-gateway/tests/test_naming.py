"""The name scheme: shown names are looked up in a table, never parsed; names a
model API would refuse, over-long names and collisions are left out loudly."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from d2.core import ConfigurationError
from d2.gateway import load_config_file, parse_upstream, prompt_id, resource_id, shown_name, tool_id
from d2.gateway.naming import MAX_SHOWN, Table, check_upstream_name
from hypothesis import given
from hypothesis import strategies as st

MODEL_API_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def test_ids_and_shown_names() -> None:
    assert tool_id("git", "git_log") == "git.git_log"
    assert shown_name("git", "git_log") == "git__git_log"
    assert resource_id("docs", "file:///a.md") == "resource:docs:file:///a.md"
    assert prompt_id("fetch", "fetch") == "prompt:fetch:fetch"


def test_a_collision_or_an_unacceptable_name_is_left_out_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # "a-b" + "__c" and "a" + "__b__c"? No: upstream names have no "_", so the only
    # collision is the same upstream listing a tool twice.
    listings: dict[str, list[tuple[str, object]]] = {
        "git": [("log", 1), ("log", 2), ("bad.name", 3), ("x" * 70, 4), ("ok-1", 5)]
    }
    with caplog.at_level(logging.WARNING, logger="d2.gateway"):
        table = Table.build(listings)
    assert sorted(table.entries) == ["git__log", "git__ok-1"]
    assert table.entries["git__log"].item == 1  # the first keeps the name
    assert table.entries["git__log"].policy_id == "git.log"
    assert len(table.refused) == 3
    assert "already the name" in caplog.text and "longer than 64" in caplog.text
    assert table.get("git.log") is None and table.get(None) is None


@given(st.text(max_size=40))
def test_only_safe_upstream_names_are_accepted(name: str) -> None:
    ok = re.fullmatch(r"[A-Za-z0-9-]{1,32}", name) is not None
    if ok:
        assert check_upstream_name(name) == name
    else:
        with pytest.raises(ValueError, match="not allowed"):
            check_upstream_name(name)


@given(
    st.from_regex(r"[A-Za-z0-9-]{1,32}", fullmatch=True),
    st.lists(st.text(min_size=1, max_size=80), max_size=8),
)
def test_every_exposed_name_is_one_a_model_api_accepts(upstream: str, tools: list[str]) -> None:
    table = Table.build({upstream: [(t, t) for t in tools]})
    for shown, entry in table.entries.items():
        assert MODEL_API_NAME.fullmatch(shown)
        assert entry.policy_id == f"{upstream}.{entry.name}"
        assert shown == f"{upstream}__{entry.name}"


@given(st.text(max_size=60))
def test_parse_upstream_never_crashes(text: str) -> None:
    try:
        spec = parse_upstream(text)
    except ConfigurationError:
        return
    assert spec.kind in ("stdio", "http")
    assert check_upstream_name(spec.name) == spec.name


def test_parse_upstream_forms() -> None:
    spec = parse_upstream("git=stdio:mcp-server-git --repository '/tmp/a b'")
    assert (spec.name, spec.command, spec.args) == (
        "git",
        "mcp-server-git",
        ("--repository", "/tmp/a b"),
    )
    remote = parse_upstream("gh=https://mcp.example.invalid/mcp")
    assert remote.kind == "http" and remote.url == "https://mcp.example.invalid/mcp"
    for bad in ("git", "=stdio:x", "git=stdio:", "g_h=stdio:x", "git=file:///x"):
        with pytest.raises(ConfigurationError):
            parse_upstream(bad)
    assert MAX_SHOWN == 64


def test_the_config_file_forms(tmp_path: Path) -> None:
    where = tmp_path
    config = where / "gateway.yaml"
    config.write_text(
        "policy: policy.yaml\n"
        "roles: [dev, ops]\n"
        "upstreams:\n"
        "  git: 'stdio:mcp-server-git --repository .'\n"
        "  db: {command: db-server, args: ['--ro'], env: {DB_URL: 'sqlite:///x'}, cwd: /srv}\n"
        "  remote: {url: 'https://mcp.example.invalid/mcp'}\n"
    )
    options = load_config_file(config)
    assert options["policy"] == str(where / "policy.yaml")
    assert options["roles"] == "dev,ops"
    git, db, remote = options["upstreams"]
    assert (git.name, git.command, git.args) == ("git", "mcp-server-git", ("--repository", "."))
    assert (db.command, db.args, db.env, db.cwd) == (
        "db-server",
        ("--ro",),
        {"DB_URL": "sqlite:///x"},
        "/srv",
    )
    assert remote.kind == "http" and remote.describe() == "remote (https://mcp.example.invalid/mcp)"
    for bad, said in [
        ("upstreams: {db: {command: x, url: 'https://h/mcp'}}", "exactly one of command or url"),
        ("upstreams: {db: {command: x, args: [1]}}", "list of strings"),
        ("upstreams: {db: {command: x, nope: 1}}", "unknown key"),
        ("upstreams: {'a.b': 'stdio:x'}", "not allowed"),
        ("upstreams: [a]", "mapping of name"),
        ("- just a list", "expected a mapping"),
    ]:
        config.write_text(bad)
        with pytest.raises(ConfigurationError, match=said):
            load_config_file(config)


def test_config_values_take_secrets_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "upstreams:\n"
        "  gh: {url: 'https://mcp.example.invalid/mcp',"
        " headers: {Authorization: 'Bearer ${GW_TEST_TOKEN}'}}\n"
    )
    monkeypatch.setenv("GW_TEST_TOKEN", "s3cret")
    (gh,) = load_config_file(config)["upstreams"]
    assert gh.headers == {"Authorization": "Bearer s3cret"}
    assert "s3cret" not in repr(gh) and "s3cret" not in gh.describe()
    monkeypatch.delenv("GW_TEST_TOKEN")
    with pytest.raises(ConfigurationError, match="GW_TEST_TOKEN is not set"):
        load_config_file(config)
    config.write_text("upstreams:\n  git: {command: x, headers: {A: b}}\n")
    with pytest.raises(ConfigurationError, match="only an upstream with a url"):
        load_config_file(config)
