"""The cloud runtime: first fetch, ``If-None-Match`` polling, the state file.

All I/O is async on one event loop (the app's, or a private thread's in sync apps);
verifying and compiling a bundle run in a worker thread so the loop never stalls.
Fail closed throughout: until a bundle is verified, after it is revoked, or past its
``exp``, every guarded call is denied. A failed poll keeps the last good bundle
(still bound by its ``exp``).

The state file is a starting point, never an authority over the control plane. What
is read from it (a bundle, verified again; its version as a floor; a tombstone)
holds until the first bundle the control plane serves in this process is verified:
that bundle is accepted whatever the file said (a lower version is logged), and from
then on the floor is the control plane's (``highest``, ``revoked_version``), and
rollbacks are refused. Keys saved in the file only ever verify the saved bundle.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import random
import time
from collections.abc import Callable
from typing import Any

from d2.core.errors import D2Error, D2PlanLimitError, InvalidPolicyError, InvalidSignatureError
from d2.core.evaluate import Evaluator
from d2.core.policy import compile_policy
from d2.core.policy.model import CompiledPolicy

from .client import ApiError, ControlPlane
from .jwks import JWKSCache, usable_keys
from .state import StateFile
from .stateio import SAVE_TIMEOUT, StateIO
from .usage import UsageEvents
from .verify import Bundle, header_of, verify_bundle

__all__ = ["MAX_POLL", "MIN_POLL", "CloudRuntime"]

log = logging.getLogger("d2.cloud")
MIN_POLL, MAX_POLL = 5.0, 3600.0


def clamp_interval(seconds: float | None, default: float) -> float:
    """The server's poll interval clamped to [5, 3600] seconds."""
    value = default if seconds is None or math.isnan(seconds) else float(seconds)
    return min(MAX_POLL, max(MIN_POLL, value))


class CloudRuntime:
    """Keeps ``evaluator.policy`` in step with the control plane."""

    def __init__(
        self,
        evaluator: Evaluator,
        api: ControlPlane,
        *,
        install: Callable[[CompiledPolicy | None, str], None],
        state: StateFile,
        app: str | None = None,
        pins: frozenset[str] | None = None,
        clock: Callable[[], float] = time.time,
        jwks_floor: float = 30.0,
        usage: UsageEvents | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.api = api
        self.install = install  # (policy or None, why) -> puts it in force
        self.state = state
        self.state_io = StateIO(state)  # off the loop, bounded: a hung disk never wedges
        self.app = app
        self.clock = clock
        self.jwks = JWKSCache(
            api.jwks,
            clock,
            floor=jwks_floor,
            pins=pins,
            on_fetch=lambda changed: self._count("jwks_rotations" if changed else "jwks_fetches"),
        )
        self.usage = usage
        self.audience: str | None = None
        self.identified = False  # GET /v1/accounts/me answered in this process
        self.quotas: dict[str, Any] = {}
        self.interval = 60.0
        self.etag: str | None = None
        self.highest: tuple[int, str] | None = None
        self.revoked_version: int | None = None  # after a 410: only newer versions
        self.revoked = False  # a revocation (a 410, or a tombstone read back) is in force
        self.from_file = False  # highest / revoked_version come from the state file
        self.failures = 0
        self.last_error: D2Error | ApiError | None = None
        self.plan_error: D2PlanLimitError | None = None
        self._task: asyncio.Task[None] | None = None
        # start() while configure runs it: shutdown cancels a start still running
        self.starting: asyncio.Future[None] | concurrent.futures.Future[None] | None = None
        self._stopped = False
        self._closed = False

    # -- PolicySource protocol (the manager closes us) -----------------------------
    def describe(self) -> str:
        """The control plane and app."""
        return f"cloud {self.api.base_url} app {self.app or '?'}"

    def load(self, limits: Any) -> CompiledPolicy:  # pragma: no cover - not used
        """Cloud mode loads asynchronously; see :meth:`start`."""
        raise NotImplementedError

    def watch(self, limits: Any, on_change: Any) -> None:
        """Polling is started by :meth:`start`."""

    def close(self) -> None:
        """Stop polling (idempotent; :meth:`aclose` also flushes events)."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.get_loop().call_soon_threadsafe(task.cancel)

    @property
    def stopping(self) -> bool:
        """Whether polling was stopped (shut down, or being shut down): a poller
        stopped once never polls again."""
        return self._stopped

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, timeout: float) -> None:
        """Identity, the state file, the first fetch (bounded by ``timeout``), then
        the polling task. Returns whether or not a bundle is in force (fail closed).

        The state file is read while the control plane is asked who we are, within
        half of ``timeout`` (the other half is left to the first fetch): a file that
        does not answer in time is started without (a warning), fail closed when
        offline; it never holds the start up."""
        deadline = time.monotonic() + timeout
        loading = asyncio.ensure_future(self.state_io.load(max(0.1, timeout / 2)))
        try:
            await asyncio.wait_for(self._identify(), timeout=max(0.1, timeout))
        except (ApiError, asyncio.TimeoutError) as exc:
            if isinstance(exc, ApiError) and exc.status == 401:
                loading.cancel()
                self._fail_closed("the control plane refused D2_TOKEN")
                raise D2Error("the control plane refused D2_TOKEN (401): check the token") from None
            await self._restore(await loading, online=False)  # offline: the last good bundle
            self._fail_closed(f"cannot reach the control plane: {exc or 'timed out'}")
        except BaseException:
            loading.cancel()
            raise
        else:
            entry = await loading
            try:
                await asyncio.wait_for(
                    self._restore(entry, online=True),
                    timeout=max(0.1, deadline - time.monotonic()),
                )
            except asyncio.TimeoutError:
                log.warning("d2: the saved bundle was not checked within %.1fs; not used", timeout)
            left = deadline - time.monotonic()
            try:
                await asyncio.wait_for(self.poll_once(), timeout=max(0.1, left))
            except asyncio.TimeoutError:
                log.warning("d2: first bundle fetch timed out after %.1fs; polling on", timeout)
            except Exception as exc:  # never let a surprise stop configure: fail closed
                log.exception("d2: first bundle fetch failed: %s", exc)
        if self._stopped:  # shut down while starting
            return
        if self.usage is not None:
            self.usage.start()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="d2-poll")

    # -- after fork() -------------------------------------------------------------------
    def renew_after_fork(self) -> None:
        """In a forked child, before :meth:`resume` runs on a new loop: nothing of the
        parent's I/O is used again. A new connection pool (the parent's sockets are
        shared with it), a new state-file thread and its lock (the parent's thread did
        not survive the fork, and a save it ran or queued is the parent's), no task or
        start of the parent's loop, the usage events buffered before the fork left to
        the parent. The policy in force, its version floor, ETag, keys and identity
        are kept: polling goes on from them."""
        self._task = None
        self.starting = None
        self.api.renew_after_fork()
        self.state_io = StateIO(self.state)
        if self.usage is not None:
            self.usage.renew_after_fork()

    async def resume(self) -> None:
        """Poll on, on the running loop, from the state copied at a fork: the first
        poll comes at once when no bundle is in force (the start was cut short by the
        fork, or none is published), else at a random point within one interval, so
        workers forked together do not poll in step."""
        if self._stopped:
            return
        if self.usage is not None:
            self.usage.start()
        first = 0.0 if self.evaluator.policy is None else random.uniform(0.0, self.interval)
        self._task = asyncio.get_running_loop().create_task(self._loop(first), name="d2-poll")

    async def _identify(self) -> None:
        me = await self.api.me()
        account, app = me["account_id"], self.app or me["app_name"]
        if self.app and self.app != me["app_name"]:
            log.warning(
                "d2: D2_APP=%r but the token is for app %r; bundles must match D2_APP",
                self.app,
                me["app_name"],
            )
        self.app = app
        self.audience = f"d2-policy:{account}:{app}"
        self.identified = True
        quotas = me.get("quotas")
        self.quotas = quotas if isinstance(quotas, dict) else {}
        poll = me.get("poll_seconds")
        self.interval = clamp_interval(poll if isinstance(poll, (int, float)) else None, 60.0)
        if self.usage is not None:
            interval = self.quotas.get("ingest_interval")
            if isinstance(interval, (int, float)) and interval > 0:
                self.usage.interval = float(interval)
            batch = self.quotas.get("event_batch")
            if isinstance(batch, int) and batch > 0:
                self.usage.max_events = batch

    async def _loop(self, first: float | None = None) -> None:
        delay = self._jitter(self.interval) if first is None else first
        pid = os.getpid()
        while not self._stopped:
            await asyncio.sleep(delay)
            if os.getpid() != pid:  # a copy on a loop a forked child ran on: not ours
                return
            try:
                delay = await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the poller must never die
                log.exception("d2: unexpected error while polling: %s", exc)
                delay = self._backoff()

    def _jitter(self, seconds: float) -> float:
        return seconds * random.uniform(0.9, 1.1)

    def _backoff(self, retry_after: float | None = None) -> float:
        self.failures += 1
        if retry_after is not None:
            return min(MAX_POLL, max(0.0, retry_after))
        return self._jitter(min(self.interval, 2.0 ** min(self.failures, 12)))

    # -- one poll -------------------------------------------------------------------------
    async def poll_once(self) -> float:
        """Fetch once and act on the answer; returns the delay until the next poll."""
        if not self.identified:  # first contact (an offline start took the file's word)
            try:
                await self._identify()
            except ApiError as exc:
                return await self._on_error(exc)
        self._count("polls")
        try:
            reply = await self.api.bundle(self.etag)
        except ApiError as exc:
            return await self._on_error(exc)
        self.failures = 0
        interval = clamp_interval(reply.poll_seconds, self.interval)
        self.interval = interval
        if reply.status == 304 or reply.jws is None:
            return self._jitter(interval)
        try:
            await self._accept(reply.jws, reply.etag)
        except (InvalidSignatureError, InvalidPolicyError, D2PlanLimitError) as exc:
            self.last_error = exc
            log.error(
                "d2: refused policy bundle from %s; the policy in force stays: %s",
                self.api.base_url,
                exc,
            )
            if self.usage is not None:
                self.usage.record("policy_rejected", reason=str(exc)[:200])
        return self._jitter(interval)

    async def _accept(
        self, jws: str, etag: str | None, *, from_file: bool = False, saved_keys: Any = None
    ) -> None:
        """Verify ``jws`` and put it in force. From the control plane (the default) it
        is checked against the live keys and, unless the floor was only read from the
        state file, against ``highest`` / ``revoked_version``; then saved. From the
        state file (``from_file``) it is checked with the live keys, or offline with
        ``saved_keys`` (pinned ones only, when pins are set), and not saved again."""
        limit = self.quotas.get("bundle_size_bytes")
        if isinstance(limit, int) and limit > 0 and len(jws) > limit:
            raise D2PlanLimitError(
                "bundle_too_large", message=f"bundle is {len(jws)} bytes; the plan allows {limit}"
            )
        header = header_of(jws)
        kid = header.get("kid")
        refreshed = False
        if saved_keys is not None:  # offline: for this saved bundle only, never cached
            key = usable_keys(saved_keys, self.jwks.pins).get(kid) if isinstance(kid, str) else None
        else:
            before = self.jwks.refreshes
            key = await self.jwks.key_for(kid, refresh=header.get("jwks_refresh") is True)
            refreshed = self.jwks.refreshes != before
        # a floor read from the file never outranks a bundle from the control plane
        floor = not self.from_file
        try:
            bundle, policy = await asyncio.to_thread(self._verify_and_compile, jws, key, floor)
        except InvalidSignatureError:
            if saved_keys is not None or refreshed or not await self.jwks.refresh():
                raise
            # a cached key failed: the control plane may have rotated; try once more
            key = self.jwks.keys.get(kid) if isinstance(kid, str) else None
            bundle, policy = await asyncio.to_thread(self._verify_and_compile, jws, key, floor)
        max_tools = self.quotas.get("max_tools")
        if isinstance(max_tools, int) and max_tools > 0 and policy.tool_count > max_tools:
            raise D2PlanLimitError(
                "too_many_tools",
                message=f"bundle version {bundle.version} names {policy.tool_count} tools; "
                f"the plan allows {max_tools}: upgrade the plan or remove tools",
            )
        saved = self.highest if self.from_file and not from_file else None
        # Same version and content re-signed with a later exp is installed too: the
        # policy's lifetime moves with the freshest verified bundle.
        self.highest = (bundle.version, bundle.digest)
        self.revoked_version = None
        self.revoked = False
        self.from_file = from_file
        self.etag = None if from_file else etag  # the first fetch then always verifies
        self.install(policy, f"version {bundle.version}")
        self.last_error = None
        if from_file:
            log.info("d2: started from the saved bundle (version %d)", bundle.version)
        else:
            if saved is not None and bundle.version < saved[0]:
                log.warning(
                    "d2: the control plane serves version %d, older than version %d in the "
                    "state file; the control plane's verified bundle is in force (a state "
                    "file never outranks it)",
                    bundle.version,
                    saved[0],
                )
            await self._save(
                {
                    "kind": "bundle",
                    "audience": self.audience,
                    "app": self.app or "",
                    "jws": jws,
                    "version": bundle.version,
                    "digest": bundle.digest,
                    "jwks": self.jwks.document,
                }
            )
            log.info("d2: cloud policy version %d in force (%s)", bundle.version, self.app)
        if self.usage is not None:
            self.usage.record("policy_loaded", version=bundle.version)

    async def _save(self, entry: dict[str, Any] | None) -> None:
        """Write our state-file entry off the event loop (it fsyncs), waiting at most
        :data:`~d2.cloud.stateio.SAVE_TIMEOUT`: a disk that does not answer never
        stops the poll loop (the entry is written when it does)."""
        await self.state_io.save(entry, SAVE_TIMEOUT)

    def _verify_and_compile(
        self, jws: str, key: Any, floor: bool = True
    ) -> tuple[Bundle, CompiledPolicy]:
        assert self.audience is not None
        highest = self.highest if floor else None
        bundle = verify_bundle(jws, key, audience=self.audience, now=self.clock(), highest=highest)
        revoked = self.revoked_version if floor else None
        if revoked is not None and bundle.version <= revoked:
            raise InvalidSignatureError(
                f"bundle version {bundle.version} was revoked; only a newer version is accepted"
            )
        policy = compile_policy(
            bundle.document,
            source=f"cloud:{self.app} v{bundle.version}",
            raw=jws.encode(),
            version=bundle.version,
            expires_at=bundle.expires_at,
            # budgets and approvals in a shared store belong to this app alone
            namespace="cloud:" + self.audience.removeprefix("d2-policy:"),
        )
        return bundle, policy

    async def _restore(self, entry: dict[str, Any] | None, *, online: bool) -> None:
        """Start from our state-file entry (read by :meth:`start`; its seal checked):
        the saved bundle, verified again (with the live keys when the control plane
        answers, with the saved ones only offline), or a tombstone (calls denied as
        revoked). Either holds until the control plane's first verified bundle."""
        if entry is None:
            return
        audience, app = entry["audience"], entry["app"]
        if (self.audience and audience != self.audience) or (self.app and app != self.app):
            log.warning(
                "d2: ignoring the saved entry in %s: it is for another app (%s)",
                self.state.path,
                audience,
            )
            return
        self.audience, self.app = audience, app
        if entry["kind"] == "revoked":
            self.highest, self.from_file = (entry["version"], entry["digest"]), True
            self.revoked = True
            self.install(None, "revoked")
            log.warning(
                "d2: the state file records that version %d was revoked; every guarded "
                "call is denied until the control plane serves a newer one",
                entry["version"],
            )
            return
        saved_keys = None
        if not online or not await self.jwks.refresh(force=True):
            saved_keys = entry["jwks"]
        try:
            await self._accept(entry["jws"], None, from_file=True, saved_keys=saved_keys)
        except (D2Error, ValueError, KeyError, TypeError) as exc:
            log.warning("d2: ignoring the saved bundle in %s: %s", self.state.path, exc)

    def _jwks_fetched(self, rotated: bool) -> None:
        self._count("jwks_fetches")
        if rotated:
            self._count("jwks_rotations")

    def _count(self, instrument: str, **attributes: Any) -> None:
        metrics = self.evaluator.timer  # OpenTelemetry metrics, when on
        if metrics is not None:
            getattr(metrics, instrument).add(1, attributes)

    async def _on_error(self, exc: ApiError) -> float:
        self.last_error = exc
        status = exc.status
        self._count("poll_failures", status=status)
        if status == 410:
            log.error(
                "d2: the app's policy was revoked; every guarded call is denied "
                "until a new version is published"
            )
            self.install(None, "revoked")
            self.revoked = True
            self.etag = None
            if self.highest is not None:
                self.revoked_version = self.highest[0]
                await self._save(
                    {
                        "kind": "revoked",
                        "audience": self.audience,
                        "app": self.app or "",
                        "version": self.highest[0],
                        "digest": self.highest[1],
                    }
                )
            else:
                await self._save(None)
            if self.usage is not None:
                self.usage.record("policy_revoked")
            return self._jitter(self.interval)
        if status == 404:
            if self.evaluator.policy is None:
                self.revoked = False  # the control plane's answer replaces a tombstone's
                self._fail_closed("nothing is published for this app yet (404 no_policy)")
            return self._jitter(self.interval)
        if status in (402, 403):
            if self.plan_error is None:
                self.plan_error = D2PlanLimitError(
                    str(exc.detail or "plan_limit"),
                    message=f"the control plane refused the bundle fetch ({status} "
                    f"{exc.detail}): upgrade the plan, or delete unused apps",
                )
                log.error("d2: %s", self.plan_error)
            return self._jitter(self.interval)  # not retried before the interval
        if status == 401:
            log.error("d2: the control plane refused D2_TOKEN (401); check the token")
            return self._jitter(self.interval)
        delay = self._backoff(exc.retry_after if status in (429, 503) else None)
        log.warning(
            "d2: policy poll failed (%s); retrying in %.1fs, the policy in force "
            "stays until it expires",
            exc,
            delay,
        )
        return delay

    def _fail_closed(self, why: str) -> None:
        if self.evaluator.policy is None and not self.revoked:
            self.install(None, why)

    async def aclose(self, flush_timeout: float = 5.0) -> None:
        """Stop polling, flush usage events, close the connection pool (once)."""
        if self._closed:
            return
        self._closed = True
        self._stopped = True
        starting, self.starting = self.starting, None
        if starting is not None and not starting.done():
            starting.cancel()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self.usage is not None:
            await self.usage.aclose(flush_timeout)
        await self.api.aclose()
