"""d2-cloud: cloud mode. With ``D2_TOKEN`` set, ``configure_rbac_sync()`` /
``configure_rbac_async()`` hand over to :func:`configure_sync` / :func:`configure_async`
here: the same guarded code then runs against signed policy bundles from a control
plane (see ``PROTOCOL.md``), verified against its JWKS, polled, and kept in a state
file so a process can start offline.

Settings (arguments win over the environment): ``api_url`` / ``D2_API_URL`` (the
control plane's base URL; required), ``jwks_url`` / ``D2_JWKS_URL``, ``app`` /
``D2_APP``, ``state_path`` / ``D2_STATE_PATH``, ``jwks_thumbprints`` /
``D2_JWKS_THUMBPRINTS`` (comma-separated RFC 7638 thumbprints to pin),
``first_fetch_timeout`` (seconds configure waits for the first bundle, default 10;
configure returns within it plus :data:`START_GRACE` whatever the network or the
state file do, denying every guarded call until a bundle is verified),
``transport`` (an ``httpx.AsyncBaseTransport``, for tests), ``clock``.

A process forked after configuring (a pre-forking server's worker, a ``multiprocessing``
pool with fork) polls on a poller of its own: see
:func:`_after_fork_in_child`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx
from d2.core.errors import ConfigurationError
from d2.core.evaluate import Evaluator
from d2.core.limits import Limits
from d2.core.manager import PolicyManager, count_policy_load
from d2.core.policy.model import CompiledPolicy

from .client import ControlPlane
from .poller import CloudRuntime
from .seal import StateSeal
from .state import StateFile, default_state_path
from .usage import UsageEvents, usage_enabled
from .verify import thumbprint

__all__ = ["CloudPolicyManager", "configure_async", "configure_sync", "thumbprint"]

T = TypeVar("T")
log = logging.getLogger("d2.cloud")
# Loops (and their threads' objects) of the parent, in a forked child: kept, never
# closed nor finalised. Closing one would unregister its descriptors from the epoll
# set the child shares with the parent, and the parent's loop would stop hearing them.
_forked_away: list[object] = []
_live: weakref.WeakSet[CloudPolicyManager] = weakref.WeakSet()  # restarted after fork
START_GRACE = 5.0
"""Seconds past ``first_fetch_timeout`` configure waits for the start to finish
(it is bounded on its own; this is the backstop): then it returns with every guarded
call denied, and the start goes on in the background."""


class _LoopThread:
    """One daemon thread running a private event loop (sync apps)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="d2-cloud", daemon=True)
        try:
            self._thread.start()
        except BaseException:
            self.loop.close()
            raise

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return self.submit(coro).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class CloudPolicyManager(PolicyManager):
    """A cloud-mode instance: the runtime that polls, and the loop it runs on."""

    mode = "cloud"

    def __init__(
        self,
        evaluator: Evaluator,
        runtime: CloudRuntime,
        thread: _LoopThread | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(evaluator, runtime, Limits.unlimited(), evaluator.strict)
        self.runtime = runtime
        self._thread = thread
        self._loop = loop
        self._fork_error: str | None = None  # why a forked child has no poller

    def _restart_after_fork(self) -> None:
        """In a forked child (``os.fork``, a ``multiprocessing`` pool with fork, a
        pre-forking server's worker; called by :func:`_after_fork_in_child`): the
        poller's thread, or the app's loop, does not run here. Start a new
        ``d2-cloud`` thread with its own loop and resume polling on it from the state
        copied at the fork (see :meth:`CloudRuntime.renew_after_fork`). This also
        holds for a manager of ``configure_rbac_async``: in the child it polls on
        that thread, like a sync app's (``reload()`` works there). If the thread
        cannot be started, every guarded call of the child is denied."""
        _forked_away.append(self._thread if self._thread is not None else self._loop)
        self._thread = None
        if self.runtime.stopping:  # forked while the parent shut this instance down
            self._fork_error = "it was being shut down when this process was forked"
            log.error(
                "d2: cloud instance %r was being shut down when process %d was forked; "
                "every guarded call here is denied: configure D2 again in this process",
                self.name,
                os.getpid(),
            )
            self._set(None, "it was shut down as this process was forked: configure again")
            return
        try:
            self.runtime.renew_after_fork()
            thread = _LoopThread()
        except Exception as exc:  # fail closed: a frozen copy must not stay in force
            self.runtime.close()  # its task was already dropped: the parent's loop's
            self._fork_error = f"{type(exc).__name__}: {exc}"
            log.error(
                "d2: cloud mode could not restart its poller in forked process %d (%s); "
                "every guarded call is denied: configure D2 again in this process",
                os.getpid(),
                self._fork_error,
            )
            self._set(
                None, "its poller could not be restarted in this forked process: configure again"
            )
            return
        self._thread = thread
        self._loop = thread.loop
        thread.submit(self.runtime.resume())

    def _set(self, policy: CompiledPolicy | None, why: str) -> None:
        with self._state:
            if self._closed:
                return
            ev = self.evaluator
            if policy is None:
                ev.absent_reason = "policy_revoked" if why == "revoked" else "missing_policy"
                ev.absent_detail = (
                    "the app's policy was revoked in the control plane: publish a new version"
                    if why == "revoked"
                    else f"cloud mode has no verified policy bundle: {why}"
                )
            ev.policy = policy
            if policy is not None:
                count_policy_load(ev, "cloud", policy)
                if ev.timer is not None:
                    ev.timer.bundle_loaded_at = time.time()

    def reload(self) -> CompiledPolicy:
        """Poll the control plane now (sync apps, and any app in a forked child)."""
        if self._fork_error is not None:
            raise ConfigurationError(
                f"cloud mode could not restart its poller after fork() ({self._fork_error}): "
                "configure D2 again in this process"
            )
        if self._thread is None:
            raise ConfigurationError("in async apps, await manager.runtime.poll_once()")
        self._thread.run(self.runtime.poll_once(), timeout=30)
        if self.evaluator.policy is None:
            raise ConfigurationError(f"no verified bundle: {self.runtime.last_error}")
        return self.evaluator.policy

    def _retire(self) -> None:
        """Stop polling and flush usage events (bounded), on shutdown or when a
        newer configuration replaces this one."""
        if not self._closed:
            usage = self.runtime.usage
            if usage is not None:
                self.evaluator.remove_observer(usage.observe)
            self._stop_runtime()
        super()._retire()

    def _stop_runtime(self) -> None:
        if self._fork_error is not None:  # a forked child with no poller: nothing runs
            return
        if self._thread is not None:
            try:
                self._thread.run(self.runtime.aclose(), timeout=10)
            except Exception:  # never let shutdown hang or crash the host
                pass
            self._thread.stop()
            return
        if self._loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:  # called on the app's loop: finish there
            self.closing = self._loop.create_task(self.runtime.aclose())
        else:
            fut = asyncio.run_coroutine_threadsafe(self.runtime.aclose(), self._loop)
            try:
                fut.result(timeout=10)
            except Exception:
                pass

    async def ashutdown(self) -> None:
        """Async twin of :meth:`shutdown` that awaits the final flush."""
        if not self._closed:
            usage = self.runtime.usage
            if usage is not None:
                self.evaluator.remove_observer(usage.observe)
            if self._fork_error is not None:
                pass  # a forked child with no poller: nothing to stop or flush
            elif self._thread is None:
                await self.runtime.aclose()
            else:
                await asyncio.to_thread(self._thread.run, self.runtime.aclose(), 10)
                self._thread.stop()
            self._thread = None
        self.shutdown()
        await self.closed()  # the approval webhook's flush


def _setting(value: Any, env: str) -> Any:
    return value if value is not None else (os.environ.get(env) or None)


def _build(
    evaluator: Evaluator,
    token: str,
    loop: asyncio.AbstractEventLoop,
    thread: _LoopThread | None,
    *,
    api_url: str | None = None,
    jwks_url: str | None = None,
    app: str | None = None,
    state_path: str | None = None,
    jwks_thumbprints: str | list[str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] | None = None,
    jwks_floor: float = 30.0,
) -> CloudPolicyManager:
    base = _setting(api_url, "D2_API_URL")
    if not base:
        raise ConfigurationError(
            "cloud mode needs the control plane's base URL: set D2_API_URL (or pass "
            "api_url=...); unset D2_TOKEN for local mode"
        )
    pins_raw = _setting(jwks_thumbprints, "D2_JWKS_THUMBPRINTS")
    pins = None
    if pins_raw:
        items = pins_raw.split(",") if isinstance(pins_raw, str) else list(pins_raw)
        pins = frozenset(p.strip() for p in items if p.strip()) or None
    api = ControlPlane(base, token, jwks_url=_setting(jwks_url, "D2_JWKS_URL"), transport=transport)
    usage = UsageEvents(api, clock=clock or time.time) if usage_enabled() else None
    holder: list[CloudPolicyManager] = []
    runtime = CloudRuntime(
        evaluator,
        api,
        install=lambda policy, why: holder[0]._set(policy, why),
        state=StateFile(
            _setting(state_path, "D2_STATE_PATH") or default_state_path(),
            StateSeal(token, api.base_url),  # entries only this token can have written
        ),
        app=_setting(app, "D2_APP"),
        pins=pins,
        clock=clock or time.time,
        jwks_floor=jwks_floor,
        usage=usage,
    )
    manager = CloudPolicyManager(evaluator, runtime, thread, loop)
    holder.append(manager)
    _live.add(manager)
    from d2.core.manager import _register, install_telemetry

    _register(manager)  # retire a previous configuration before this one installs
    install_telemetry(evaluator)
    evaluator.policy = None
    manager._set(None, "waiting for the first bundle")
    if usage is not None:
        evaluator.add_observer(usage.observe)
    return manager


def configure_sync(
    evaluator: Evaluator, *, token: str, first_fetch_timeout: float = 10.0, **options: Any
) -> CloudPolicyManager:
    """Cloud mode for sync apps: one background thread with its own loop. Returns
    once the first bundle is verified, or after ``first_fetch_timeout`` (then calls
    are denied until one arrives)."""
    thread = _LoopThread()
    try:
        manager = _build(evaluator, token, thread.loop, thread, **options)
    except BaseException:
        thread.stop()
        raise
    starting = thread.submit(manager.runtime.start(first_fetch_timeout))
    manager.runtime.starting = starting  # shutdown cancels it
    try:
        starting.result(first_fetch_timeout + START_GRACE)
    except concurrent.futures.TimeoutError:
        if starting.done():  # the start itself raised it
            manager.shutdown()
            raise
        _late(first_fetch_timeout)
    except BaseException:
        manager.shutdown()
        raise
    return manager


async def configure_async(
    evaluator: Evaluator, *, token: str, first_fetch_timeout: float = 10.0, **options: Any
) -> CloudPolicyManager:
    """Cloud mode for async apps: a polling task on the running loop (all I/O async;
    verification in a worker thread)."""
    manager = _build(evaluator, token, asyncio.get_running_loop(), None, **options)
    starting = asyncio.ensure_future(manager.runtime.start(first_fetch_timeout))
    manager.runtime.starting = starting  # shutdown cancels it
    try:
        done, _ = await asyncio.wait({starting}, timeout=first_fetch_timeout + START_GRACE)
        if starting in done:
            starting.result()
        else:
            _late(first_fetch_timeout)
    except BaseException:
        starting.cancel()
        await manager.ashutdown()
        raise
    return manager


def _late(timeout: float) -> None:
    log.warning(
        "d2: cloud mode did not finish starting within %.1fs; every guarded call is "
        "denied until a bundle is verified (the start goes on in the background)",
        timeout + START_GRACE,
    )


def _after_fork_in_child() -> None:
    """Restart the poller of every cloud instance still in service in a forked child
    (see :meth:`CloudPolicyManager._restart_after_fork`). Registered here, after
    ``logging``, ``httpx`` and :mod:`d2.cloud.state` registered theirs, so the locks
    the new pollers take are renewed before they start; d2-core's hook (which renews
    each manager's lock) ran before."""
    for manager in list(_live):
        if not manager._closed:
            try:
                manager._restart_after_fork()
            except Exception:  # never leave the others frozen; it fails closed itself
                log.exception("d2: cloud instance %r did not restart after fork()", manager.name)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
