"""``d2 renew``: ``metadata.expires`` N days ahead, nothing else in the file
changed, written atomically, and never a file that does not load."""

from __future__ import annotations

import calendar
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_testkit import Invoke, as_json
from d2.cli.renewal import with_expires
from d2.core import (
    BundleExpiredError,
    Limits,
    configure_rbac_sync,
    d2_guard,
    set_user,
    shutdown_all_rbac,
)
from d2.core.policy.load import load_policy_file
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

YAML_POLICY = """\
# Billing bot: reviewed by security on Mondays.
metadata:
  name: billing-bot            # the app
  expires: "2020-01-01T00:00:00Z"   # renewed weekly
  description: >
    Who may read and refund.

policies:
    - role: analyst   # read-only
      permissions:
          - billing:read
          - tool: crm.lookup
            conditions:
              input: {customer_id: {type: string, matches: "^c_[0-9]+$"}}
    - role: admin
      permissions: ["*"]
"""


def _stamp(text: str) -> float:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def _changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    a, b = before.splitlines(), after.splitlines()
    assert len(a) == len(b)
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y]


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_yaml_keeps_every_comment_and_the_layout(d2: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(YAML_POLICY)
    before = time.time()
    result = d2("renew", "policy.yaml")
    assert result.exit_code == 0, result.output
    after = path.read_text()
    [(old, new)] = _changed_lines(YAML_POLICY, after)  # one line changed: the expiry
    assert old == '  expires: "2020-01-01T00:00:00Z"   # renewed weekly'
    stamp = new.split('"')[1]
    assert new == f'  expires: "{stamp}"   # renewed weekly'
    assert result.stdout.strip() == f"renewed policy.yaml: expires {stamp}"
    assert int(before) + 7 * 86400 <= _stamp(stamp) <= time.time() + 7 * 86400
    policy = load_policy_file(path, Limits())  # local mode loads it as it is
    assert policy.roles == {"analyst", "admin"}
    assert _leftovers(tmp_path) == []


def test_a_missing_expires_is_added_and_the_quickstart_runs(d2: Invoke, tmp_path: Path) -> None:
    """The README quickstart: save policy.yaml without an expires line, renew it,
    run the app; it works on any date."""
    text = "metadata:\n  name: quickstart\npolicies:\n  - role: analyst\n    permissions: [ping]\n"
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(BundleExpiredError):
        load_policy_file(path, Limits())
    result = d2("renew", "policy.yaml", "--json")
    assert result.exit_code == 0, result.output
    report = as_json(result)
    assert report["previous_expires"] is None and report["days"] == 7
    assert path.read_text() == text.replace(
        "metadata:\n", f'metadata:\n  expires: "{report["expires"]}"\n'
    )
    configure_rbac_sync()  # discovery finds ./policy.yaml
    try:
        set_user("alice", roles=["analyst"])
        assert d2_guard("ping")(lambda: "pong")() == "pong"
    finally:
        shutdown_all_rbac()


def test_a_missing_metadata_is_added(d2: Invoke, tmp_path: Path) -> None:
    text = "# just grants\npolicies:\n  - role: a\n    permissions: [x]\n"
    (tmp_path / "policy.yaml").write_text(text)
    report = as_json(d2("renew", "--json", "--days", "2"))
    added = f'metadata:\n  expires: "{report["expires"]}"\n'
    assert (tmp_path / "policy.yaml").read_text() == text.replace("policies:", added + "policies:")


def test_json_keeps_key_order_and_indentation(d2: Invoke, tmp_path: Path) -> None:
    document = {
        "policies": [{"role": "a", "permissions": ["x", "y"]}],
        "metadata": {"version": 3, "expires": "2020-01-01T00:00:00Z", "name": "n"},
    }
    path = tmp_path / "bot.json"
    path.write_text(json.dumps(document, indent=4) + "\n")
    report = as_json(d2("renew", "bot.json", "--json", "--days", "3"))
    document["metadata"]["expires"] = report["expires"]  # type: ignore[index]
    assert path.read_text() == json.dumps(document, indent=4) + "\n"
    assert report["previous_expires"] == "2020-01-01T00:00:00Z"
    assert _stamp(report["expires"]) - time.time() == pytest.approx(3 * 86400, abs=5)


def test_json_without_expires_gets_it_first_in_metadata(d2: Invoke, tmp_path: Path) -> None:
    document: dict[str, Any] = {"metadata": {"name": "n"}, "policies": []}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document, indent=2))
    report = as_json(d2("renew", "--json"))
    assert path.read_text() == json.dumps(
        {"metadata": {"expires": report["expires"], "name": "n"}, "policies": []}, indent=2
    )
    compact = tmp_path / "compact.json"
    compact.write_text('{"policies":[],"metadata":{"name":"n"}}')
    report = as_json(d2("renew", "compact.json", "--json"))
    expected = f'{{"policies":[],"metadata":{{"expires": "{report["expires"]}","name":"n"}}}}'
    assert compact.read_text() == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--days", "0"], "--days must be between 1 and 7 (up to 366 with --force), got 0"),
        (["--days", "-2"], "--days must be between 1 and 7"),
        (["--days", "8"], "--days must be between 1 and 7, got 8"),
        (["--days", "367", "--force"], "got 367"),
    ],
)
def test_days_outside_the_range_are_refused_naming_the_option(
    d2: Invoke, tmp_path: Path, args: list[str], message: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(YAML_POLICY)
    human = d2("renew", *args)
    assert human.exit_code == 2 and message in human.stderr
    scripted = d2("renew", *args, "--json")
    assert scripted.exit_code == 2 and message in as_json(scripted)["error"]["message"]
    assert path.read_text() == YAML_POLICY


def test_force_allows_more_days_and_says_the_default_limits_refuse_it(
    d2: Invoke, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(YAML_POLICY)
    result = d2("renew", "--days", "30", "--force")
    assert result.exit_code == 0, result.output
    assert "more than 7 days ahead" in result.stderr
    with pytest.raises(BundleExpiredError):
        load_policy_file(path, Limits())
    policy = load_policy_file(path, Limits(max_expiry_seconds=31 * 86400))  # the app's own
    assert policy.expires_at - time.time() == pytest.approx(30 * 86400, abs=5)


def test_a_missing_file_is_a_usage_error_and_creates_nothing(d2: Invoke, tmp_path: Path) -> None:
    result = d2("renew", "nope.yaml", "--json")
    assert result.exit_code == 2
    assert "no policy file at nope.yaml" in as_json(result)["error"]["message"]
    assert list(tmp_path.iterdir()) == []


def test_no_policy_anywhere_is_a_usage_error(d2: Invoke, tmp_path: Path) -> None:
    result = d2("renew")
    assert result.exit_code == 2 and "no local policy file found" in result.stderr


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("policy.yaml", "metadata: [unclosed\npolicies: []\n", "not valid YAML"),
        ("policy.json", '{"metadata": {}, "policies": [}', "not valid JSON"),
        ("policy.yaml", "metadata:\n  expires: x\n  name: a\n  name: b\npolicies: []\n", "dupl"),
        ("policy.yaml", "metadata:\n  name: n\npolicies:\n  - role: a\n    permisions: [x]\n", ""),
        ("policy.yaml", "metadata:\n  name: n\n", "policies"),
        ("policy.yaml", "- just\n- a list\n", "expected a mapping"),
        ("policy.yaml", "metadata: 7\npolicies: []\n", "metadata"),
    ],
)
def test_an_invalid_file_is_refused_and_left_untouched(
    d2: Invoke, tmp_path: Path, name: str, content: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    os.utime(path, (1_000_000_000, 1_000_000_000))
    result = d2("renew", name, "--json")
    assert result.exit_code == 1, result.output
    error = as_json(result)["error"]
    assert expected in json.dumps(error)
    assert error["message"].startswith(f"invalid policy {name}")
    assert path.read_text() == content
    assert path.stat().st_mtime == 1_000_000_000  # not even rewritten with the same bytes
    assert _leftovers(tmp_path) == []


def test_a_policy_still_refused_by_the_local_limits_is_not_written(
    d2: Invoke, tmp_path: Path
) -> None:
    tools = [f"tool.{i}" for i in range(30)]  # more than local mode's 25
    text = json.dumps({"metadata": {}, "policies": [{"role": "a", "permissions": tools}]})
    path = tmp_path / "policy.json"
    path.write_text(text)
    refused = d2("renew")
    assert refused.exit_code == 1
    assert "would not load in local mode even renewed; nothing was written" in refused.stderr
    assert "30 tools" in refused.stderr
    assert path.read_text() == text
    forced = d2("renew", "--force")
    assert forced.exit_code == 0 and "30 tools" in forced.stderr
    assert load_policy_file(path, Limits(max_tools=30)).tool_count == 30


def test_the_write_is_atomic_and_keeps_the_mode(
    d2: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from d2.cli import documents

    path = tmp_path / "policy.yaml"
    path.write_text(YAML_POLICY)
    path.chmod(0o640)
    replaced: list[tuple[Path, Path, bytes]] = []
    real = documents.os.replace

    def watching(src: str, dst: Any) -> None:
        replaced.append((Path(src), Path(dst), Path(dst).read_bytes()))
        real(src, dst)

    monkeypatch.setattr(documents.os, "replace", watching)
    assert d2("renew").exit_code == 0
    [(src, dst, before)] = replaced
    assert dst == path and src.parent == tmp_path and src != path
    assert before == YAML_POLICY.encode()  # the old file stayed whole until the rename
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert _leftovers(tmp_path) == []


def test_a_symlinked_policy_stays_a_link(d2: Invoke, tmp_path: Path, xdg: Path) -> None:
    real = tmp_path / "repo" / "policy.yaml"
    real.parent.mkdir()
    real.write_text(YAML_POLICY)
    xdg.mkdir(parents=True)
    (xdg / "policy.yaml").symlink_to(real)
    assert d2("renew").exit_code == 0
    assert (xdg / "policy.yaml").is_symlink()
    assert load_policy_file(real, Limits()).roles == {"analyst", "admin"}


def test_an_edit_made_meanwhile_is_never_overwritten(
    d2: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from d2.cli import renew

    path = tmp_path / "policy.yaml"
    path.write_text(YAML_POLICY)
    edited = YAML_POLICY.replace("billing:read", "billing:write")
    real: Callable[..., bytes] = renew.with_expires

    def edit_meanwhile(*args: Any) -> bytes:
        out = real(*args)
        path.write_text(edited)  # someone saves the file while d2 renew runs
        return out

    monkeypatch.setattr(renew, "with_expires", edit_meanwhile)
    result = d2("renew")
    assert result.exit_code == 2 and "changed while this command ran" in result.stderr
    assert path.read_text() == edited
    assert _leftovers(tmp_path) == []


def test_the_default_file_is_the_one_discovery_picks(
    d2: Invoke, tmp_path: Path, xdg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "policy.yaml"
    local.write_text(YAML_POLICY)
    xdg.mkdir(parents=True)
    config = xdg / "policy.json"
    config.write_text(json.dumps({"metadata": {}, "policies": []}))
    report = as_json(d2("renew", "--json"))
    assert report["file"] == str(config) and report["in_force"] == str(config)
    assert json.loads(config.read_text())["metadata"]["expires"] == report["expires"]
    assert local.read_text() == YAML_POLICY  # shadowed: not the one renewed
    chosen = tmp_path / "chosen.yaml"
    chosen.write_text(YAML_POLICY)
    monkeypatch.setenv("D2_POLICY_FILE", str(chosen))
    assert as_json(d2("renew", "--json"))["file"] == str(chosen)
    assert chosen.read_text() != YAML_POLICY and local.read_text() == YAML_POLICY


def test_renewing_a_shadowed_file_warns_which_file_is_read(
    d2: Invoke, tmp_path: Path, xdg: Path
) -> None:
    (tmp_path / "policy.yaml").write_text(YAML_POLICY)
    xdg.mkdir(parents=True)
    config = xdg / "policy.yaml"
    config.write_text(YAML_POLICY)
    result = d2("renew", "policy.yaml")
    assert result.exit_code == 0
    assert f"local mode does not read policy.yaml: it reads {config}" in result.stderr
    assert config.read_text() == YAML_POLICY


def test_line_endings_and_plain_timestamps_are_kept() -> None:
    data = b"metadata:\r\n  expires: 2020-01-01 # old\r\n  name: x\r\npolicies: []\r\n"
    out = with_expires(data, "p.yaml", "2030-05-06T07:08:09Z")
    assert out == data.replace(b"2020-01-01", b"2030-05-06T07:08:09Z")
    single = b"metadata:\n  expires: '2020-01-01'\npolicies: []\n"
    assert with_expires(single, "p.yaml", "2030-05-06T07:08:09Z") == single.replace(
        b"2020-01-01", b"2030-05-06T07:08:09Z"
    )


# -- any document: only metadata.expires changes ----------------------------------------
_KEY = st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True).filter(
    lambda k: k not in ("expires", "y", "n", "yes", "no", "on", "off", "true", "false", "null")
)
_TEXT = st.text(
    st.characters(codec="utf-8", max_codepoint=0xFFFF, exclude_categories=("Cs", "Cc")),
    max_size=20,
).filter(lambda t: "\u2028" not in t and "\u2029" not in t and "\x85" not in t)
_COMMENT = st.one_of(st.just(""), _TEXT.map(lambda t: "  # " + t.replace("\n", " ")))


@st.composite
def _yaml_documents(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    indent = " " * draw(st.sampled_from([2, 3, 4]))
    meta = draw(st.dictionaries(_KEY, _TEXT, max_size=4))
    style = draw(st.sampled_from(["absent", "double", "single", "plain"]))
    lines = [f"# {draw(_TEXT)}".rstrip(), f"metadata:{draw(_COMMENT)}"]
    entries = [f"{indent}{k}: {json.dumps(v)}{draw(_COMMENT)}" for k, v in meta.items()]
    if style != "absent":
        value = {
            "double": '"2020-01-01T00:00:00Z"',
            "single": "'2020-01-01T00:00:00Z'",
            "plain": "2020-01-01T00:00:00Z",
        }[style]
        at = draw(st.integers(0, len(entries)))
        entries.insert(at, f"{indent}expires: {value}{draw(_COMMENT)}")
    if not entries:
        entries = [f"{indent}name: x"]
        meta = {"name": "x"}
    lines += entries
    lines += ["policies:", f"{indent}- role: a{draw(_COMMENT)}", f"{indent}  permissions: [x]"]
    return "\n".join(lines) + "\n", meta


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_yaml_documents())
def test_any_yaml_document_changes_only_in_its_expiry(case: tuple[str, dict[str, str]]) -> None:
    from ruamel.yaml import YAML

    text, meta = case
    stamp = "2031-02-03T04:05:06Z"
    out = with_expires(text.encode(), "policy.yaml", stamp).decode()
    loaded = YAML(typ="safe").load(out)
    assert loaded["policies"] == [{"role": "a", "permissions": ["x"]}]
    got = dict(loaded["metadata"])
    expires = got.pop("expires")
    assert str(expires).replace("+00:00", "Z").replace(" ", "T") in (stamp, stamp[:-1])
    assert got == meta
    before, after = text.splitlines(), out.splitlines()
    if len(after) == len(before):  # replaced in place: one line differs
        assert sum(a != b for a, b in zip(before, after, strict=True)) == 1
    else:  # inserted: every original line is still there, in order
        assert len(after) == len(before) + 1
        assert [line for line in after if "expires" not in line or line in before] == before


_JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEY, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    meta=st.dictionaries(st.text(max_size=8).filter(lambda k: k != "expires"), _JSON_VALUE),
    has_expires=st.booleans(),
    indent=st.sampled_from([None, 0, 2, 4, "\t"]),
    ascii_only=st.booleans(),
)
@example(meta={"\x7f": None, "\x85\xa0": None}, has_expires=False, indent=None, ascii_only=False)
def test_any_json_document_changes_only_in_its_expiry(
    meta: dict[str, Any], has_expires: bool, indent: Any, ascii_only: bool
) -> None:
    if has_expires:
        meta = {**meta, "expires": "2020-01-01T00:00:00Z"}
    document = {"metadata": meta, "policies": [{"role": "a", "permissions": ["x"]}]}
    text = json.dumps(document, indent=indent, ensure_ascii=ascii_only)
    stamp = "2031-02-03T04:05:06Z"
    out = json.loads(with_expires(text.encode(), "policy.json", stamp))
    expected_meta = {**meta, "expires": stamp} if has_expires else {"expires": stamp, **meta}
    assert out == {**document, "metadata": expected_meta}
    assert list(out["metadata"]) == list(expected_meta)  # key order kept
    assert list(out) == ["metadata", "policies"]
