"""Cloud commands against the real d2-server (``d2.server.testing``), with a proxy
in front of it that records requests and injects faults."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_testkit import Invoke, Proxy, as_json
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from d2.core import Limits
from d2.core.policy.load import load_policy_file
from d2.core.testing import expires_in
from d2.server.config import Quotas
from ruamel.yaml import YAML

Server = tuple[Any, Proxy]
PUBLISH = ("POST", "/v1/policy/publish")


def doc(*tools: str, name: str | None = None, **meta: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"expires": expires_in(), **meta}
    if name:
        metadata["name"] = name
    return {
        "metadata": metadata,
        "policies": [{"role": "agent", "permissions": list(tools) or ["search"]}],
    }


@pytest.fixture
def policy_file(tmp_path: Path) -> Callable[..., Path]:
    """``policy_file(*tools, **meta)``: ``./policy.json`` (the local policy)."""

    def write(*tools: str, **meta: Any) -> Path:
        path = tmp_path / "policy.json"
        path.write_text(json.dumps(doc(*tools, **meta)))
        return path

    return write


def json_answer(status: int, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


# -- publish ---------------------------------------------------------------------------
def test_publish_creates_registers_and_signs_then_updates_with_if_match(
    d2: Invoke, server: Server, policy_file: Callable[..., Path], xdg: Path
) -> None:
    srv, proxy = server
    policy_file("search")
    first = d2("publish")
    assert first.exit_code == 0, first.output
    assert "published" in first.stdout and "version 1 of app test-app" in first.stdout
    assert "metadata.name is not set: using the token's app 'test-app'" in first.stderr
    key_file = xdg / "keys" / "device-ed25519.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert proxy.count("POST", "/v1/keys") == 1
    sent = next(r for r in proxy.requests if (r.method, r.path) == PUBLISH)
    assert sent.headers["if-none-match"] == "*" and "if-match" not in sent.headers
    registered = json.loads(next(r.body for r in proxy.requests if r.path == "/v1/keys"))
    assert registered["key_id"] == sent.headers["x-d2-key-id"]
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(registered["public_key"]))
    public.verify(base64.b64decode(sent.headers["x-d2-signature"]), sent.body)  # exact bytes
    assert json.loads(sent.body)["metadata"]["name"] == "test-app"

    etag = srv.current_etag(srv.developer_token)
    policy_file("search", "summarize", name="test-app")
    second = d2("publish", "--json")
    assert second.exit_code == 0, second.output
    report = as_json(second)
    assert report["version"] == 2 and report["ok"] and report["key_id"] == registered["key_id"]
    update = [r for r in proxy.requests if (r.method, r.path) == PUBLISH][-1]
    assert update.headers["if-match"] == etag and "if-none-match" not in update.headers
    assert proxy.count("POST", "/v1/keys") == 1  # registered once
    claims = srv.verify(srv.fetch_bundle().json()["jws"])
    assert claims["version"] == 2 and claims["policies"][0]["permissions"] == [
        "search",
        "summarize",
    ]


def test_publish_yaml_file_is_sent_as_json(d2: Invoke, server: Server, tmp_path: Path) -> None:
    srv, _ = server
    path = tmp_path / "p.yaml"
    path.write_text(
        "metadata:\n  name: test-app\n  expires: " + expires_in() + "\n"
        "policies:\n  - role: agent\n    permissions: [search]\n"
    )
    result = d2("publish", str(path))
    assert result.exit_code == 0, result.output
    claims = srv.verify(srv.fetch_bundle().json()["jws"])
    assert isinstance(claims["metadata"]["expires"], str)  # a YAML timestamp became RFC 3339


def test_dry_run_sends_nothing_and_creates_no_key(
    d2: Invoke, server: Server, policy_file: Callable[..., Path], xdg: Path
) -> None:
    _, proxy = server
    policy_file("search")
    result = d2("publish", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "dry run" in result.stdout and "If-None-Match: *" in result.stdout
    assert all(r.method == "GET" for r in proxy.requests)
    assert not (xdg / "keys").exists()


def test_dry_run_without_a_token_checks_locally(
    d2: Invoke, policy_file: Callable[..., Path]
) -> None:
    policy_file("search")
    result = d2("publish", "--dry-run", "--json")
    assert result.exit_code == 0 and as_json(result)["checked"] == "local"


def test_a_concurrent_publish_gives_412_with_advice_and_force_retries_once(
    d2: Invoke, server: Server, policy_file: Callable[..., Path]
) -> None:
    srv, proxy = server
    policy_file("search")
    assert d2("publish").exit_code == 0
    other = doc("other", name="test-app")
    proxy.before(*PUBLISH, lambda: srv.publish(other))  # someone else, in between
    policy_file("mine", name="test-app")
    refused = d2("publish")
    assert refused.exit_code == 1
    assert "someone published a new version" in refused.stderr
    assert "d2 pull" in refused.stderr and "--force" in refused.stderr
    proxy.before(*PUBLISH, lambda: srv.publish(other))
    forced = d2("publish", "--force", "--json")
    assert forced.exit_code == 0, forced.output
    assert as_json(forced)["version"] == 4
    assert srv.verify(srv.fetch_bundle().json()["jws"])["policies"][0]["permissions"] == ["mine"]


def test_server_side_422_shows_the_error_paths(
    d2: Invoke, server: Server, policy_file: Callable[..., Path]
) -> None:
    _, proxy = server
    policy_file("search")
    body = {"detail": "invalid_policy", "errors": ["policies[0].permissions[0]: bad thing"]}
    proxy.answer(*PUBLISH, json_answer(422, body))
    result = d2("publish")
    assert result.exit_code == 1
    assert "refused the policy (invalid_policy)" in result.stderr
    assert "policies[0].permissions[0]: bad thing" in result.stderr


def test_local_validation_happens_before_anything_is_sent(
    d2: Invoke, server: Server, tmp_path: Path, policy_file: Callable[..., Path]
) -> None:
    _, proxy = server
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"policies": [{"role": "r", "permissions": [{"tol": "x"}]}]}))
    result = d2("publish", str(bad))
    assert result.exit_code == 1 and "policies[0].permissions[0]" in result.stderr
    policy_file("t", expires="2020-01-01T00:00:00Z")
    expired = d2("publish")
    assert expired.exit_code == 1 and "already past" in expired.stderr
    assert d2("publish", "missing.json").exit_code == 2
    assert proxy.requests == []


def test_a_policy_named_for_another_app_is_refused(
    d2: Invoke, server: Server, policy_file: Callable[..., Path]
) -> None:
    _, proxy = server
    policy_file("search", name="shop")
    result = d2("publish")
    assert result.exit_code == 1
    assert "metadata.name is 'shop' but the token is for app 'test-app'" in result.stderr
    assert proxy.count(*PUBLISH) == 0


def test_plan_limits_say_what_to_do(
    d2: Invoke, make_server: Callable[..., Server], policy_file: Callable[..., Path]
) -> None:
    srv, proxy = make_server(quotas=Quotas(max_tools=1, max_apps=1))
    policy_file("a", "b")
    local = d2("publish")
    assert local.exit_code == 1 and "the self-hosted plan allows 1" in local.stderr
    assert "upgrade" in local.stderr and proxy.count(*PUBLISH) == 0
    policy_file("a")
    proxy.answer(*PUBLISH, json_answer(402, {"detail": "plan_limit_bundle_size", "limit": 5}))
    paid = d2("publish")
    assert paid.exit_code == 1 and "plan limit" in paid.stderr and "upgrade" in paid.stderr
    assert d2("publish").exit_code == 0
    other = srv.add_app("other")
    os.environ["D2_TOKEN"] = other.developer_token
    apps = d2("publish")
    assert apps.exit_code == 1
    assert "app limit" in apps.stderr and "delete unused apps" in apps.stderr


def test_token_problems_are_configuration_errors(
    d2: Invoke, server: Server, policy_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, _ = server
    policy_file("search")
    monkeypatch.setenv("D2_TOKEN", srv.runtime_token)
    scope = d2("publish")
    assert scope.exit_code == 2 and "policy:write" in scope.stderr
    monkeypatch.setenv("D2_TOKEN", "d2_" + "x" * 40)
    bad = d2("publish")
    assert bad.exit_code == 2 and "refused D2_TOKEN" in bad.stderr
    monkeypatch.delenv("D2_TOKEN")
    missing = d2("publish")
    assert missing.exit_code == 2 and "needs D2_TOKEN" in missing.stderr
    monkeypatch.setenv("D2_TOKEN", srv.developer_token)
    monkeypatch.delenv("D2_API_URL")
    assert "needs D2_API_URL" in d2("pull").stderr
    monkeypatch.setenv("D2_API_URL", "ftp://x")
    assert d2("revoke", "--yes").exit_code == 2


def test_publish_without_a_token_says_where_one_comes_from_self_hosted_too(
    d2: Invoke, policy_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    policy_file("search")
    monkeypatch.setenv("D2_API_URL", "http://127.0.0.1:9")  # only the token is missing
    human = d2("publish")
    assert human.exit_code == 2 and human.stdout == ""
    assert "needs D2_TOKEN" in human.stderr
    assert "dashboard" in human.stderr
    assert "`d2-server token create --scope developer`" in human.stderr
    scripted = d2("publish", "--json")
    assert scripted.exit_code == 2
    error = as_json(scripted)["error"]
    assert "needs D2_TOKEN" in error["message"] and error["exit_code"] == 2
    assert "`d2-server token create --scope developer`" in error["hint"]
    # the command named is one d2-server accepts
    from d2.server.cli import parse_args

    path, params = parse_args(["token", "create", "--scope", "developer"])
    assert path == ["token", "create"] and params["scope"] == "developer"


def test_an_unreachable_control_plane_is_exit_2(
    d2: Invoke, monkeypatch: pytest.MonkeyPatch, policy_file: Callable[..., Path]
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("D2_TOKEN", "d2_" + "x" * 40)
    monkeypatch.setenv("D2_API_URL", f"http://127.0.0.1:{port}")
    policy_file("search")
    result = d2("publish")
    assert result.exit_code == 2 and "cannot reach the control plane" in result.stderr


def test_429_and_5xx_reads_are_retried(
    d2: Invoke, server: Server, policy_file: Callable[..., Path]
) -> None:
    _, proxy = server
    policy_file("search")
    proxy.answer(
        "GET", "/v1/accounts/me", json_answer(429, {"detail": "slow"}, **{"Retry-After": "0"})
    )
    proxy.answer("GET", "/v1/policy/bundle", json_answer(502, {"detail": "gateway"}))
    result = d2("publish")
    assert result.exit_code == 0, result.output
    assert proxy.count("GET", "/v1/accounts/me") == 2
    proxy.answer(*PUBLISH, json_answer(500, {"detail": "internal_error"}))
    failed = d2("publish")
    assert failed.exit_code == 2 and "try again later" in failed.stderr
    assert proxy.count(*PUBLISH) == 2  # a failed publish is not blindly repeated


def test_a_key_the_control_plane_forgot_is_registered_again(
    d2: Invoke, server: Server, policy_file: Callable[..., Path], xdg: Path
) -> None:
    srv, proxy = server
    from d2.cli.keys import load_or_create, mark_registered

    key, _ = load_or_create(xdg / "keys")
    mark_registered(xdg / "keys", key, srv.base_url, srv.account_id, "test-app")  # it is not
    policy_file("search")
    result = d2("publish")
    assert result.exit_code == 0, result.output
    assert proxy.count("POST", "/v1/keys") == 1 and proxy.count(*PUBLISH) == 2


def test_key_conflicts_and_loose_permissions(
    d2: Invoke, server: Server, policy_file: Callable[..., Path], xdg: Path
) -> None:
    _, proxy = server
    policy_file("search")
    proxy.answer("POST", "/v1/keys", json_answer(409, {"detail": "key_id_conflict"}))
    conflict = d2("publish")
    assert conflict.exit_code == 2 and "another key with id" in conflict.stderr
    (xdg / "keys" / "device-ed25519.pem").chmod(0o644)
    loose = d2("publish")
    assert loose.exit_code == 2 and "chmod 600" in loose.stderr


# -- pull ------------------------------------------------------------------------------
def published(srv: Any, *tools: str) -> None:
    response = srv.publish(doc(*tools, name=srv.app_name))
    assert response.status_code == 201, response.text


def test_pull_verifies_then_writes_a_loadable_file(
    d2: Invoke, server: Server, tmp_path: Path
) -> None:
    srv, _ = server
    published(srv, "search", "summarize")
    out = tmp_path / "pulled.yaml"
    result = d2("pull", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert "verified" in result.stdout
    text = out.read_text()
    assert text.startswith("# Pulled by `d2 pull`") and "signature verified" in text
    data = YAML(typ="safe").load(text)
    assert list(data) == ["metadata", "policies"]  # reading order, not sorted keys
    assert list(data["policies"][0]) == ["role", "permissions"]
    assert load_policy_file(out, Limits()).concrete_tools == {"search", "summarize"}
    report = as_json(d2("pull", "-o", str(tmp_path / "p.out"), "--format", "json", "--json"))
    assert report["verified"] and report["version"] == 1 and report["format"] == "json"
    assert json.loads((tmp_path / "p.out").read_text())["metadata"]["name"] == "test-app"


def test_pull_replaces_the_local_policy_file_by_default(
    d2: Invoke, server: Server, policy_file: Callable[..., Path]
) -> None:
    srv, _ = server
    path = policy_file("old")
    path.chmod(0o600)
    before = path.stat().st_ino
    published(srv, "new")
    assert d2("pull").exit_code == 0
    assert json.loads(path.read_text())["policies"][0]["permissions"] == ["new"]
    # renamed over the old file (a watching app never reads half of it), mode kept
    assert path.stat().st_ino != before and path.stat().st_mode & 0o777 == 0o600
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def tampered(jws: str) -> str:
    header, payload, signature = jws.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["policies"][0]["permissions"] = ["everything"]
    raw = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{raw}.{signature}"


def test_pull_refuses_a_bad_bundle_and_writes_nothing(
    d2: Invoke, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, proxy = server
    published(srv, "search")
    jws = srv.fetch_bundle().json()["jws"]
    out = tmp_path / "never.yaml"
    proxy.answer("GET", "/v1/policy/bundle", json_answer(200, {"jws": tampered(jws), "version": 1}))
    forged = d2("pull", "-o", str(out))
    assert forged.exit_code == 1 and "failed verification" in forged.stderr
    other = srv.add_app("other")
    key = srv.register_key(token=other.developer_token)  # device keys belong to an app
    assert (
        srv.publish(doc("x", name="other"), key=key, token=other.developer_token).status_code == 201
    )
    foreign = srv.fetch_bundle(token=other.runtime_token).json()
    proxy.answer("GET", "/v1/policy/bundle", json_answer(200, foreign))
    wrong_app = d2("pull", "-o", str(out))
    assert wrong_app.exit_code == 1 and "another app" in wrong_app.stderr
    monkeypatch.setenv("D2_JWKS_THUMBPRINTS", "not-the-key")
    pinned = d2("pull", "-o", str(out))
    assert pinned.exit_code == 1 and "pinned" in pinned.stderr
    assert not out.exists()


def test_pull_when_nothing_is_published_or_it_was_revoked(
    d2: Invoke, server: Server, tmp_path: Path
) -> None:
    srv, _ = server
    out = tmp_path / "x.yaml"
    nothing = d2("pull", "-o", str(out))
    assert nothing.exit_code == 1 and "nothing is published" in nothing.stderr
    published(srv, "search")
    srv.revoke()
    revoked = d2("pull", "-o", str(out))
    assert revoked.exit_code == 1 and "revoked" in revoked.stderr
    assert not out.exists()


def test_draft_upload_and_pull_of_the_unsigned_draft(
    d2: Invoke, server: Server, tmp_path: Path, policy_file: Callable[..., Path]
) -> None:
    _, proxy = server
    out = tmp_path / "draft.json"
    none = d2("pull", "--stage", "draft", "-o", str(out))
    assert none.exit_code == 1 and "has no draft" in none.stderr
    policy_file("search")
    first = d2("draft")
    assert first.exit_code == 0, first.output
    assert "draft version 1" in first.stdout and "not published" in first.stdout
    assert as_json(d2("draft", "--json"))["draft_version"] == 2
    assert as_json(d2("draft", "--version", "9", "--json"))["draft_version"] == 9
    pulled = d2("pull", "--stage", "draft", "-o", str(out), "--json")
    assert pulled.exit_code == 0
    assert "not signed" in pulled.stderr
    report = as_json(pulled)
    assert report["verified"] is False and report["version"] == 9
    assert json.loads(out.read_text())["policies"][0]["permissions"] == ["search"]
    assert proxy.count(*PUBLISH) == 0
    assert d2("pull", "--stage", "nope").exit_code == 2


def test_a_token_for_another_app_than_expected(
    d2: Invoke, server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result = d2("pull", "--app-name", "shop", "-o", str(tmp_path / "x"))
    assert result.exit_code == 2 and "the token is for app 'test-app', not 'shop'" in result.stderr
    monkeypatch.setenv("D2_APP", "shop")
    assert d2("revoke", "--yes").exit_code == 2


# -- inspect (cloud) -------------------------------------------------------------------
def test_inspect_shows_the_verified_cloud_policy(
    d2: Invoke, server: Server, policy_file: Callable[..., Path]
) -> None:
    srv, _ = server
    published(srv, "search")
    data = as_json(d2("inspect", "--json"))
    assert data["origin"] == "cloud" and data["version"] == 1 and data["app"] == "test-app"
    assert data["signed_by"] and data["tools"] == ["search"]
    policy_file("local.only")
    local = as_json(d2("inspect", "--local", "--json"))
    assert local["origin"] == "local" and local["tools"] == ["local.only"]
    assert d2("check", "-r", "agent", "search").exit_code == 0  # decided on the cloud policy


# -- revoke ----------------------------------------------------------------------------
def test_revoke_asks_first(d2: Invoke, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    srv, proxy = server
    published(srv, "search")
    declined = d2("revoke", input="n\n")
    assert declined.exit_code == 1 and "not revoked" in declined.stdout
    assert d2("revoke", input="\n").exit_code == 1  # the default is no
    import typer

    def closed_stdin(*args: object, **kwargs: object) -> bool:
        raise typer.Abort()

    with monkeypatch.context() as m:
        m.setattr(typer, "confirm", closed_stdin)
        no_tty = d2("revoke")
    assert no_tty.exit_code == 2 and "--yes" in no_tty.stderr
    assert d2("revoke", "--json").exit_code == 2
    assert proxy.count("POST", "/v1/policy/revoke") == 0
    accepted = d2("revoke", input="y\n")
    assert accepted.exit_code == 0 and "revoked version 1" in accepted.stdout
    assert srv.fetch_bundle().status_code == 410


def test_revoke_yes_json_and_nothing_to_revoke(d2: Invoke, server: Server) -> None:
    srv, _ = server
    nothing = d2("revoke", "--yes")
    assert nothing.exit_code == 1 and "nothing is published" in nothing.stderr
    published(srv, "search")
    report = as_json(d2("revoke", "-y", "--json"))
    assert report == {"ok": True, "app": "test-app", "revoked_version": 1}


# -- rollback and token hygiene ----------------------------------------------------------
def test_pull_refuses_an_older_bundle_than_the_file_it_replaces(
    d2: Invoke, server: Server, tmp_path: Path
) -> None:
    srv, proxy = server
    published(srv, "old")
    old = srv.fetch_bundle().json()
    assert srv.publish(doc("new", name=srv.app_name)).status_code in (200, 201)
    out = tmp_path / "policy.yaml"
    assert d2("pull", "-o", str(out)).exit_code == 0
    before = out.read_text()
    assert "published version 2" in before
    proxy.answer("GET", "/v1/policy/bundle", json_answer(200, old))
    replayed = d2("pull", "-o", str(out))
    assert replayed.exit_code == 1, replayed.output
    assert "rollback refused" in replayed.stderr
    assert out.read_text() == before


def test_pull_refuses_an_older_bundle_than_the_runtime_state(
    d2: Invoke, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    from d2.cloud.seal import StateSeal
    from d2.cloud.state import StateFile

    srv, proxy = server
    published(srv, "old")
    old = srv.fetch_bundle().json()
    state = tmp_path / "bundles.json"
    monkeypatch.setenv("D2_STATE_PATH", str(state))
    proxy.answer("GET", "/v1/policy/bundle", json_answer(200, old))
    out = tmp_path / "fresh.yaml"
    tombstone = {
        "kind": "revoked",
        "audience": f"d2-policy:{srv.account_id}:{srv.app_name}",
        "app": srv.app_name,
        "version": 3,
        "digest": "x",
    }
    url, token = os.environ["D2_API_URL"], os.environ["D2_TOKEN"]
    seal = StateSeal(token, url)
    # made up by someone who can write the file but lacks the token: not a floor,
    # neither in the unsealed format of earlier releases nor sealed with another token
    old_slot = hashlib.sha256(f"{url}\n{token}".encode()).hexdigest()[:32]
    made_up = StateSeal("d2_someone_else", url).seal(tombstone)
    for forged in (
        {"format": 1, "apps": {old_slot: {"revoked": True, "version": 3, "digest": "x"}}},
        {"format": 2, "entries": {seal.entry_id: made_up}},
    ):
        state.write_text(json.dumps(forged))
        accepted = d2("pull", "-o", str(out), "--json")
        assert accepted.exit_code == 0, accepted.output
        out.unlink()
    # sealed by the runtime with this token: the floor holds
    StateFile(str(state), seal).save(tombstone)
    replayed = d2("pull", "-o", str(out), "--json")
    assert replayed.exit_code == 1 and "rollback refused" in replayed.output
    assert not out.exists()


@pytest.mark.parametrize("token", ["d2_abc\ndef", "d2_abc def", "d2_tökén", "d2_\x07bell"])
def test_a_malformed_token_is_a_usage_error_and_never_shown(
    d2: Invoke, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    _, proxy = server
    monkeypatch.setenv("D2_TOKEN", token)
    for args in (("pull", "-o", str(tmp_path / "x")), ("pull", "--json", "-o", "x")):
        result = d2(*args)
        assert result.exit_code == 2, result.output
        assert "D2_TOKEN" in result.output
        assert token.strip() not in result.output and "abc" not in result.output
    assert proxy.requests == []


def test_url_credentials_are_never_printed_or_written(
    d2: Invoke, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from d2.cli.settings import public_url

    assert public_url("https://u:p@h.example:8443/x?q=1") == "https://h.example:8443/x?q=1"
    assert public_url("https://h.example/") == "https://h.example/"
    srv, _ = server
    published(srv, "search")
    url = os.environ["D2_API_URL"]
    scheme, rest = url.split("://", 1)
    monkeypatch.setenv("D2_API_URL", f"{scheme}://alice:s3cret@{rest}")
    out = tmp_path / "p.yaml"
    for args in (("pull", "-o", str(out)), ("pull", "--json", "-o", str(out)), ("inspect",)):
        result = d2(*args)
        assert "s3cret" not in result.output and "alice" not in result.output
    if out.exists():
        assert "s3cret" not in out.read_text() and f"from {url}," in out.read_text()
    monkeypatch.setenv("D2_API_URL", "ftp://bob:hunter2@example")
    bad = d2("pull", "-o", str(out))
    assert bad.exit_code == 2 and "hunter2" not in bad.output
