"""Cloud mode through the public API (configure_rbac_*), with the fake control
plane: first fetch, polling, revocation, plan limits, failures, expiry, state file."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from cloudfakes import Clock, FakePlane, Signer, policy_claims
from d2.core import (
    BundleExpiredError,
    ConfigurationError,
    MissingPolicyError,
    PermissionDeniedError,
    configure_rbac_async,
    configure_rbac_sync,
    d2_guard,
    is_allowed,
    set_user,
)


def saved(tmp_path: Path) -> dict[str, Any] | None:
    """Our state-file entry, read as the runtime does (with the token's key)."""
    from cloudfakes import BASE
    from d2.cloud.seal import StateSeal
    from d2.cloud.state import StateFile

    return StateFile(str(tmp_path / "state.json"), StateSeal("d2_test", BASE)).load()


def poll(manager: Any) -> float:
    """One poll on the manager's own loop thread; the delay it chose."""
    future = asyncio.run_coroutine_threadsafe(manager.runtime.poll_once(), manager._loop)
    return float(future.result(10))


@pytest.fixture
def search() -> Any:
    return d2_guard("search")(lambda: "results")


def test_first_fetch_then_guarded_calls_follow_the_bundle(
    plane: FakePlane, cloud_options: Any, search: Any
) -> None:
    manager = configure_rbac_sync(**cloud_options())
    assert manager.mode == "cloud" and manager.policy is not None
    assert manager.policy.version == 1
    set_user("u", roles=["agent"])
    assert search() == "results"
    set_user("u", roles=["guest"])
    with pytest.raises(PermissionDeniedError):
        search()


def test_d2_token_from_the_environment_and_d2_api_url_required(
    monkeypatch: pytest.MonkeyPatch, plane: FakePlane, cloud_options: Any
) -> None:
    options = cloud_options()
    monkeypatch.setenv("D2_TOKEN", options.pop("token"))
    options.pop("api_url")
    with pytest.raises(ConfigurationError, match="D2_API_URL"):
        configure_rbac_sync(**options)
    monkeypatch.setenv("D2_API_URL", "http://127.0.0.1:9")
    assert configure_rbac_sync(**options).policy is not None


def test_304_keeps_and_a_new_version_is_picked_up(plane: FakePlane, cloud_options: Any) -> None:
    manager = configure_rbac_sync(**cloud_options())
    runtime = manager.runtime  # type: ignore[attr-defined]
    first = manager.policy
    manager.reload()  # 304: the very same compiled policy stays
    assert manager.policy is first and plane.calls["/v1/policy/bundle"] == 2
    plane.publish(2, permissions=["search", "summarize"])
    manager.reload()
    set_user("u", roles=["agent"])
    assert manager.policy is not None and manager.policy.version == 2
    assert is_allowed("summarize") and runtime.etag == plane.etag()


def test_poll_interval_is_clamped_and_jittered(plane: FakePlane, cloud_options: Any) -> None:
    from d2.cloud.poller import clamp_interval

    assert clamp_interval(1, 60) == 5 and clamp_interval(10_000, 60) == 3600
    assert clamp_interval(None, 60) == 60 and clamp_interval(float("nan"), 60) == 60
    manager = configure_rbac_sync(**cloud_options())
    delays = {manager.runtime._jitter(30) for _ in range(20)}  # type: ignore[attr-defined]
    assert len(delays) > 1 and all(27 <= d <= 33 for d in delays)


def test_revocation_denies_everywhere_and_clears_the_state_file(
    plane: FakePlane, cloud_options: Any, tmp_path: Path, search: Any
) -> None:
    manager = configure_rbac_sync(**cloud_options())
    entry = saved(tmp_path)
    assert entry is not None and entry["kind"] == "bundle" and entry["version"] == 1
    assert entry["audience"] == "d2-policy:acc1:app1" and entry["app"] == "app1"
    plane.fail["/v1/policy/bundle"] = (410, {})
    manager.runtime._thread_loop = None  # type: ignore[attr-defined]
    asyncio.run_coroutine_threadsafe(
        manager.runtime.poll_once(),  # type: ignore[attr-defined]
        manager._loop,
    ).result(10)  # type: ignore[attr-defined]
    set_user("u", roles=["agent"])
    with pytest.raises(MissingPolicyError) as info:
        search()
    assert info.value.reason == "policy_revoked" and "publish" in str(info.value)
    entry = saved(tmp_path)
    assert entry is not None and entry["kind"] == "revoked" and entry["version"] == 1
    assert "jws" not in entry
    del plane.fail["/v1/policy/bundle"]  # the server serves the revoked v1 again
    with pytest.raises(ConfigurationError, match="revoked"):
        manager.reload()
    with pytest.raises(MissingPolicyError):
        search()
    plane.publish(2)
    manager.reload()
    assert search() == "results"


def test_plan_limit_is_surfaced_once_and_not_retried_early(
    plane: FakePlane, cloud_options: Any, caplog: pytest.LogCaptureFixture
) -> None:
    manager = configure_rbac_sync(**cloud_options())
    runtime = manager.runtime  # type: ignore[attr-defined]
    plane.fail["/v1/policy/bundle"] = (402, {})
    delays = [
        asyncio.run_coroutine_threadsafe(runtime.poll_once(), manager._loop).result(10)  # type: ignore[attr-defined]
        for _ in range(3)
    ]
    assert all(d >= 27 for d in delays)  # the full interval, no fast retries
    assert caplog.text.count("upgrade the plan") == 1
    assert runtime.plan_error is not None
    assert manager.policy is not None  # the last good bundle stays in force


def test_network_failure_keeps_the_bundle_until_exp_then_denies(
    plane: FakePlane,
    cloud_options: Any,
    clock: Clock,
    search: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("d2.core.evaluate._now", clock)
    manager = configure_rbac_sync(**cloud_options())
    plane.network_down = True
    delay = poll(manager)
    assert delay < 30  # backoff starts small
    set_user("u", roles=["agent"])
    assert search() == "results"
    clock.advance(3601)
    with pytest.raises(BundleExpiredError):
        search()


def test_429_and_503_honour_retry_after(plane: FakePlane, cloud_options: Any) -> None:
    manager = configure_rbac_sync(**cloud_options())
    for status in (429, 503):
        plane.fail["/v1/policy/bundle"] = (status, {"Retry-After": "17"})
        assert poll(manager) == 17


def test_backoff_grows_exponentially_and_is_bounded(plane: FakePlane, cloud_options: Any) -> None:
    manager = configure_rbac_sync(**cloud_options())
    runtime = manager.runtime  # type: ignore[attr-defined]
    plane.fail["/v1/policy/bundle"] = (500, {})
    delays = [
        asyncio.run_coroutine_threadsafe(runtime.poll_once(), manager._loop).result(10)  # type: ignore[attr-defined]
        for _ in range(8)
    ]
    assert delays[0] < delays[2] < delays[4]
    assert max(delays) <= 30 * 1.1


def test_unknown_kid_flood_refreshes_the_jwks_at_most_once_per_floor(
    plane: FakePlane, cloud_options: Any, clock: Clock
) -> None:
    manager = configure_rbac_sync(**cloud_options())
    before = plane.calls.get("/.well-known/jwks.json", 0)
    rogue = Signer(kid="rogue")
    for i in range(20):
        plane.jws = rogue.sign(policy_claims(2 + i, clock))
        poll(manager)
    assert plane.calls["/.well-known/jwks.json"] - before <= 1
    assert manager.policy is not None and manager.policy.version == 1  # kept


def test_key_rotation_with_jwks_refresh(plane: FakePlane, cloud_options: Any, clock: Clock) -> None:
    manager = configure_rbac_sync(**cloud_options(jwks_floor=0))
    new = Signer("ES256", kid="k2")
    plane.keys = [plane.signer, new]
    plane.signer = new
    plane.jws = new.sign(policy_claims(2, clock), jwks_refresh=True)
    plane.version = 2
    manager.reload()
    assert manager.policy is not None and manager.policy.version == 2


def test_pinned_thumbprints_refuse_other_keys(plane: FakePlane, cloud_options: Any) -> None:
    from d2.cloud import thumbprint

    pins = thumbprint(plane.signer.jwk)
    assert configure_rbac_sync(**cloud_options(jwks_thumbprints=pins)).policy is not None
    other = configure_rbac_sync(**cloud_options(jwks_thumbprints="not-a-pin", instance_name="x"))
    assert other.policy is None


def test_restart_offline_from_the_state_file(
    plane: FakePlane, cloud_options: Any, tmp_path: Path, search: Any
) -> None:
    configure_rbac_sync(**cloud_options()).shutdown()
    mode = stat.S_IMODE(os.stat(tmp_path / "state.json").st_mode)
    assert mode == 0o600
    plane.network_down = True
    manager = configure_rbac_sync(**cloud_options(first_fetch_timeout=1.0))
    assert manager.policy is not None and manager.policy.version == 1  # fully offline
    plane.network_down = False
    plane.fail["/v1/policy/bundle"] = (503, {})
    manager = configure_rbac_sync(**cloud_options(first_fetch_timeout=1.0))
    assert manager.policy is not None and manager.policy.version == 1
    set_user("u", roles=["agent"])
    assert search() == "results"


def test_tampered_state_file_is_ignored(
    plane: FakePlane, cloud_options: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from cloudfakes import BASE
    from d2.cloud.seal import StateSeal
    from d2.cloud.state import StateFile

    configure_rbac_sync(**cloud_options()).shutdown()
    path = tmp_path / "state.json"
    entry = saved(tmp_path)
    assert entry is not None
    head, payload, sig = entry["jws"].split(".")
    tampered = {**entry, "jws": f"{head}.{payload[:-4]}AAAA.{sig}"}
    # sealed with the token (only its holder can): the bundle inside is verified again
    StateFile(str(path), StateSeal("d2_test", BASE)).save(tampered)
    plane.fail["/v1/policy/bundle"] = (503, {})
    manager = configure_rbac_sync(**cloud_options(first_fetch_timeout=1.0))
    assert manager.policy is None and "ignoring the saved bundle" in caplog.text
    path.write_text("{corrupt")
    caplog.clear()
    assert configure_rbac_sync(**cloud_options(first_fetch_timeout=1.0)).policy is None
    assert "ignoring unreadable state file" in caplog.text


def test_a_saved_entry_for_another_d2_app_is_ignored_offline(
    plane: FakePlane, cloud_options: Any, caplog: pytest.LogCaptureFixture
) -> None:
    configure_rbac_sync(**cloud_options()).shutdown()
    plane.network_down = True
    manager = configure_rbac_sync(**cloud_options(app="app2", first_fetch_timeout=1.0))
    assert manager.policy is None and "for another app" in caplog.text
    manager = configure_rbac_sync(**cloud_options(app="app1", first_fetch_timeout=1.0))
    assert manager.policy is not None


def test_a_bad_token_is_a_clear_error(plane: FakePlane, cloud_options: Any) -> None:
    from d2.core import D2Error

    with pytest.raises(D2Error, match="401"):
        configure_rbac_sync(**cloud_options(token="d2_wrong"))


def test_quota_max_tools_refuses_a_bundle(
    plane: FakePlane, cloud_options: Any, caplog: pytest.LogCaptureFixture
) -> None:
    plane.me["quotas"]["max_tools"] = 2
    plane.publish(1, permissions=["a", "b", "c"])
    manager = configure_rbac_sync(**cloud_options())
    assert manager.policy is None and "the plan allows 2" in caplog.text


def test_rollback_served_by_the_server_is_refused(
    plane: FakePlane, cloud_options: Any, clock: Clock
) -> None:
    plane.publish(5)
    manager = configure_rbac_sync(**cloud_options())
    plane.jws = plane.signer.sign(policy_claims(3, clock, permissions=["*"]))
    plane.version = 3
    manager.reload()
    assert manager.policy is not None and manager.policy.version == 5


async def test_async_configure_never_blocks_the_loop_on_a_slow_server(
    plane: FakePlane, cloud_options: Any
) -> None:
    plane.delay = 0.3
    lags: list[float] = []

    async def heartbeat() -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - start - 0.01)

    beat = asyncio.create_task(heartbeat())
    manager = await configure_rbac_async(**cloud_options())
    await manager.runtime.poll_once()  # type: ignore[attr-defined]
    beat.cancel()
    assert manager.policy is not None
    assert len(lags) > 20 and max(lags) < 0.1  # the loop kept ticking
    await manager.ashutdown()


def test_shutdown_is_clean_and_denies(plane: FakePlane, cloud_options: Any, search: Any) -> None:
    import threading

    manager = configure_rbac_sync(**cloud_options())
    assert any(t.name == "d2-cloud" for t in threading.enumerate())
    manager.shutdown()
    assert not any(t.name == "d2-cloud" and t.is_alive() for t in threading.enumerate())
    set_user("u", roles=["agent"])
    with pytest.raises(MissingPolicyError):
        search()


def test_a_re_signed_bundle_of_the_same_version_extends_its_life(
    plane: FakePlane,
    cloud_options: Any,
    clock: Clock,
    search: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("d2.core.evaluate._now", clock)
    manager = configure_rbac_sync(**cloud_options())
    clock.advance(3000)
    plane.jws = plane.signer.sign(policy_claims(1, clock))  # same v1, fresh exp
    manager.reload()
    clock.advance(1000)  # past the first bundle's exp, within the re-signed one's
    set_user("u", roles=["agent"])
    assert search() == "results"


def test_a_forged_state_file_cannot_shadow_the_live_keys(
    plane: FakePlane, cloud_options: Any, tmp_path: Path, clock: Clock
) -> None:
    from cloudfakes import BASE
    from d2.cloud.seal import StateSeal
    from d2.cloud.state import StateFile

    configure_rbac_sync(**cloud_options()).shutdown()
    entry = saved(tmp_path)
    assert entry is not None
    forger = Signer(kid="k1")  # same kid as the real key, attacker's material
    claims = policy_claims(10**9, clock, permissions=["*"])
    forged = {**entry, "jws": forger.sign(claims), "version": 10**9, "jwks": {"keys": [forger.jwk]}}
    # even sealed with the token: online, only the live keys verify a saved bundle
    StateFile(str(tmp_path / "state.json"), StateSeal("d2_test", BASE)).save(forged)
    manager = configure_rbac_sync(**cloud_options())
    assert manager.policy is not None and manager.policy.version == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_configure_returns_denying_when_the_start_overruns_its_bound(
    cloud_options: Any, monkeypatch: pytest.MonkeyPatch, search: Any, mode: str
) -> None:
    """The backstop: should a start ever run past first_fetch_timeout + START_GRACE
    (it is bounded step by step), configure returns anyway, every guarded call is
    denied, and shutdown cancels the start instead of waiting for it."""
    from d2 import cloud
    from d2.cloud.poller import CloudRuntime

    cancelled = asyncio.Event() if mode == "async" else None

    async def stuck_start(self: CloudRuntime, timeout: float) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if cancelled is not None:
                cancelled.set()
            raise

    monkeypatch.setattr(cloud, "START_GRACE", 0.2)
    monkeypatch.setattr(CloudRuntime, "start", stuck_start)
    options = cloud_options(first_fetch_timeout=0.3)
    started = time.monotonic()
    if mode == "sync":
        manager: Any = await asyncio.to_thread(configure_rbac_sync, **options)
    else:
        manager = await configure_rbac_async(**options)
    assert time.monotonic() - started < 3
    assert manager.policy is None
    set_user("u", roles=["agent"])
    with pytest.raises(MissingPolicyError, match="waiting for the first bundle"):
        search()
    await manager.ashutdown()
    if cancelled is not None:
        await asyncio.wait_for(cancelled.wait(), 2)
