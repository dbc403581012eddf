"""Configure, query and shut down D2 instances.

``configure_rbac_sync()`` / ``await configure_rbac_async()`` pick the mode: with
``D2_TOKEN`` set they hand over to the cloud package (``d2-sdk[cloud]``), otherwise
they load a local policy (file discovery, or the ``source`` given) and watch it.
Each instance name has its own policy; guards name theirs with ``instance_name``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .evaluate import Decision, Evaluator, evaluator_for
from .limits import Limits
from .local import LocalFileSource, PolicySource
from .policy.model import CompiledPolicy
from .stores import MemoryStore

if TYPE_CHECKING:
    from .decisionlog import DecisionLog
    from .stores import Store
    from .webhook import ApprovalWebhook


__all__ = [
    "PolicyManager",
    "allowed_tools",
    "configure_rbac_async",
    "configure_rbac_sync",
    "explain",
    "get_policy_manager",
    "is_allowed",
    "require_namespace",
    "shutdown_all_rbac",
    "shutdown_rbac",
]

_TRUE = ("1", "true", "yes", "on")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


class PolicyManager:
    """A configured instance: its mode, source, limits and the policy in force.

    Obtain it from ``configure_rbac_*`` or :func:`get_policy_manager`.
    """

    mode = "local"

    def __init__(
        self, evaluator: Evaluator, source: PolicySource, limits: Limits, strict: bool = False
    ) -> None:
        self.evaluator = evaluator
        self.source = source
        self.limits = limits
        self.strict = strict
        self._closed = False
        self._state = threading.Lock()  # _install vs _retire; never on a guarded call
        self.decision_log: DecisionLog | None = None  # set by configure_rbac_*
        # a final flush still running on the caller's event loop after shutdown()
        self.closing: Awaitable[None] | None = None
        self.owned_store: Store | None = None  # a store built from a URL: closed with us
        self.approval_webhook: ApprovalWebhook | None = None  # set by configure_rbac_*

    @property
    def name(self) -> str:
        """The instance name."""
        return self.evaluator.name

    @property
    def policy(self) -> CompiledPolicy | None:
        """The compiled policy in force, or ``None``."""
        return self.evaluator.policy

    def _install(self, policy: CompiledPolicy) -> None:
        with self._state:
            if not self._closed:
                self.evaluator.policy = policy  # one atomic assignment: the swap
                count_policy_load(self.evaluator, self.mode, policy)
                if not policy.namespace and _shared(self.evaluator.store, self.evaluator):
                    _warn_unscoped(policy)

    def start(self, *, store: Store | None = None, private: bool = False) -> CompiledPolicy:
        """Load the first policy, put it in force and start watching.

        ``store`` is the store the instance is about to use (``None``: the
        in-process one); ``private``: D2 made it for this instance alone (a
        ``memory://`` URL). A bad policy raises and changes nothing: the
        instance's previous configuration (if any) stays in force; so does a
        policy without ``metadata.name`` when ``store`` may be shared (see
        :func:`require_namespace`).
        """
        policy = self.source.load(self.limits)
        require_namespace(policy, store, private=private)
        _register(self)  # retires the previous manager of this instance first
        self.evaluator.strict = self.strict
        install_telemetry(self.evaluator)
        self._install(policy)
        self.source.watch(self.limits, self._install)
        _announce(policy, self.source.describe())
        return policy

    def reload(self) -> CompiledPolicy:
        """Load the source again now; on error the policy in force stays."""
        policy = self.source.load(self.limits)
        self._install(policy)
        return policy

    def is_allowed(self, tool_id: str) -> bool:
        """Would the current user be allowed to call ``tool_id`` (RBAC steps 1-3)?"""
        return self.evaluator.decide(tool_id) is None

    def allowed_tools(self) -> tuple[str, ...]:
        """The concrete tool ids the current user may call, sorted."""
        return self.evaluator.allowed_tools()

    def explain(self, tool_id: str, *args: Any, **kwargs: Any) -> Decision:
        """The decision ``tool_id(*args, **kwargs)`` would get now (see :func:`explain`)."""
        return self.evaluator.explain(tool_id, args, kwargs)

    def _retire(self) -> None:
        """Stop updating the evaluator (a newer manager took over)."""
        with self._state:
            self._closed = True
        self.source.close()  # joins the watcher
        log = self.decision_log
        if log is not None:
            if self.evaluator.log is log:
                self.evaluator.set_log(None)
            self.decision_log = None
            log.close()
        webhook, self.approval_webhook = self.approval_webhook, None
        if webhook is not None:
            if self.evaluator.webhook is webhook:
                self.evaluator.webhook = None
            self._close_webhook(webhook)
        store, self.owned_store = self.owned_store, None
        if store is not None:
            if self.evaluator.store is store:
                self.evaluator.store = None
            if self.evaluator.private_store is store:
                self.evaluator.private_store = None
            try:
                store.close()
            except Exception:
                pass

    def _close_webhook(self, webhook: ApprovalWebhook) -> None:
        """Deliver what the approval webhook has queued, bounded by its flush time.
        On an event loop's thread the loop is not blocked: the flush goes on in the
        sender's thread and ``await shutdown_rbac()`` waits for it (``closing``)."""
        loop = _running_loop()
        if loop is None:
            webhook.close()
            return
        webhook.close(wait=False)
        self.closing = loop.create_task(_flushed(self.closing, webhook))

    def shutdown(self) -> None:
        """Stop watching and drop the policy: guarded calls deny from now on.

        On a manager already replaced by a newer ``configure_rbac_*`` call this
        only stops its watcher; the newer configuration stays in force.
        """
        self._retire()
        with _lock:
            if _managers.get(self.name) is not self:
                return  # replaced (or never started): the instance is not ours
            del _managers[self.name]
        ev = self.evaluator
        ev.policy = None
        ev.absent_reason = "missing_policy"
        ev.absent_detail = (
            f"D2 instance {ev.name!r} was shut down: call configure_rbac_sync() again "
            "to guard calls"
        )

    async def ashutdown(self) -> None:
        """Async twin of :meth:`shutdown` (cloud managers flush events here); it
        also waits for the approval webhook's flush."""
        self.shutdown()
        await self.closed()

    async def closed(self) -> None:
        """Wait for the flushes a shutdown on this event loop left running (the
        approval webhook's; a cloud instance's usage events). Never raises for a
        failed flush."""
        closing = self.closing
        if closing is not None:
            try:
                await closing
            except Exception:
                pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} mode={self.mode} policy={self.policy!r}>"


def _running_loop() -> Any:
    """The event loop running in this thread, or ``None`` (asyncio not loaded
    counts as none: nothing can be running)."""
    asyncio: Any = sys.modules.get("asyncio")
    return None if asyncio is None else asyncio._get_running_loop()


async def _flushed(before: Awaitable[None] | None, webhook: ApprovalWebhook) -> None:
    """Wait for ``before`` (an earlier flush), then for ``webhook``'s sender."""
    import asyncio

    if before is not None:
        try:
            await before
        except BaseException:  # a flush failure never fails the host's shutdown
            pass
    await asyncio.to_thread(webhook.wait_closed)


def _shared(store: Store | None, evaluator: Evaluator | None = None) -> bool:
    """Whether ``store`` may be shared with other apps: anything but the
    in-process store D2 made for this instance (``None``: the one it will make).
    A ``store=`` object may be passed to two instances, so it counts as shared
    whatever its type."""
    if store is None:
        return False
    return evaluator is None or store is not evaluator.private_store


def require_namespace(
    policy: CompiledPolicy, store: Store | None, *, private: bool = False
) -> None:
    """Refuse a policy without ``metadata.name`` on a store that may be shared
    (any ``store=`` object; ``private=True``: D2 made ``store`` for this instance
    alone): the name scopes the app's counters and approval requests there, and
    without it two apps would count and decide each other's
    (:class:`ConfigurationError`)."""
    if not policy.namespace and store is not None and not private:
        raise ConfigurationError(
            f"the policy {policy.source} has no metadata.name, but its budgets and "
            f"approvals would live in a store that may be shared ({type(store).__name__} "
            "passed as store=, or a network store), where the name keeps each app's "
            "counters and approval requests apart: give the policy a metadata.name "
            "(unique per app sharing the store), or let D2 make the in-process store "
            "(no store=, or store='memory://')"
        )


def _warn_unscoped(policy: CompiledPolicy) -> None:
    import logging

    logging.getLogger("d2").warning(
        "d2: the policy in force (%s) has no metadata.name, but its budgets and approvals "
        "live in a shared store: calls that need the store are denied "
        "(budget_unavailable) until a policy with a metadata.name loads",
        policy.source,
    )


def install_telemetry(evaluator: Evaluator) -> None:
    """Attach (or, with D2_TELEMETRY off, detach) the OpenTelemetry metrics."""
    from .telemetry import get_metrics

    metrics = get_metrics()
    for observer in evaluator.observers:
        if getattr(observer, "__self__", None).__class__.__name__ == "Metrics":
            evaluator.remove_observer(observer)
    evaluator.set_timer(metrics)
    if metrics is not None:
        evaluator.add_observer(metrics.observe)


def count_policy_load(
    evaluator: Evaluator, mode: str, policy: CompiledPolicy | None = None
) -> None:
    """Count a policy put in force (metrics on only) and say loudly when it is in
    audit mode."""
    if evaluator.timer is not None:
        evaluator.timer.policy_loads.add(1, {"mode": mode, "instance": evaluator.name})
    if policy is not None and policy.audit:
        _warn_audit(policy)


_audit_warned: set[str] = set()


def _warn_audit(policy: CompiledPolicy) -> None:
    """Audit mode enforces nothing beyond steps 1-2: never let it pass unnoticed
    (a warning on the ``d2`` logger and a stderr line, once per policy version)."""
    if policy.digest in _audit_warned:
        return
    _audit_warned.add(policy.digest)
    import logging

    text = (
        f"D2 AUDIT MODE: policy {policy.source} ({policy.version_text[:12]}) has "
        "metadata.mode: audit: calls it would deny RUN ANYWAY and are only recorded as "
        "would_deny. Set mode: enforce to enforce it."
    )
    logger = logging.getLogger("d2")
    logger.warning("%s", text)  # without handlers, Python prints it to stderr itself
    if logger.hasHandlers() and not _flag("D2_SILENT"):
        sys.stderr.write(text + "\n")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _announce(policy: CompiledPolicy, where: str) -> None:
    # Logging is imported by nearly every app; when it is not, nobody listens at INFO
    # and importing it here would only slow the cold start.
    loaded_logging: Any = sys.modules.get("logging")
    if loaded_logging is not None:
        loaded_logging.getLogger("d2").info("d2: local mode, policy file %s", where)
    if _flag("D2_SILENT"):
        return
    left = policy.expires_at - time.time()
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(policy.expires_at))
    sys.stderr.write(
        f"D2 local mode: {where} ({_count(len(policy.roles), 'role')}, "
        f"{_count(policy.tool_count, 'tool')}), "
        f"expires {expires}. Set D2_SILENT=1 to hide this.\n"
    )
    if left < 86400:
        import logging

        logging.getLogger("d2").warning(
            "d2: policy %s expires in %.1f hours (%s); renew metadata.expires",
            where,
            left / 3600,
            expires,
        )


_lock = threading.Lock()  # configure/shutdown only; never taken by a guarded call
_managers: dict[str, PolicyManager] = {}


def _prepare(
    instance_name: str,
    source: PolicySource | str | os.PathLike[str] | None,
    limits: Limits | None,
    strict_sync: bool | None,
) -> PolicyManager:
    if not isinstance(instance_name, str) or not instance_name:
        raise ConfigurationError(f"instance_name must be a non-empty string, got {instance_name!r}")
    if isinstance(source, (str, os.PathLike)):
        source = LocalFileSource(source)
    elif source is None:
        source = LocalFileSource()
    elif not isinstance(source, PolicySource):
        raise ConfigurationError(
            f"source must be a path or a PolicySource (LocalFileSource, InMemorySource), "
            f"got {source!r}"
        )
    for name, other in list(_managers.items()):
        if other.source is source and name != instance_name:
            raise ConfigurationError(
                f"this source already serves D2 instance {name!r}; give each instance its "
                f"own {type(source).__name__}"
            )
    strict = _flag("D2_STRICT_SYNC") if strict_sync is None else strict_sync
    return PolicyManager(evaluator_for(instance_name), source, limits or Limits(), strict)


def _cloud_module(token: str) -> Any:
    import importlib

    try:
        return importlib.import_module("d2.cloud")
    except ImportError as exc:
        raise ConfigurationError(
            "D2_TOKEN is set, which selects cloud mode, but the cloud package is not "
            'installed: pip install "d2-sdk[cloud]" (or unset D2_TOKEN for local mode)'
        ) from exc


def _register(manager: PolicyManager) -> None:
    """Make ``manager`` its instance's manager, retiring the previous one (its
    watcher is stopped before the caller installs a new policy)."""
    with _lock:
        old = _managers.get(manager.name)
        _managers[manager.name] = manager
        if old is not None and old is not manager:
            old._retire()


def configure_rbac_sync(
    instance_name: str = "default",
    api_url: str | None = None,
    pin_jwks_thumbprints: str | Sequence[str] | None = None,
    jwks_url: str | None = None,
    *,
    source: PolicySource | str | os.PathLike[str] | None = None,
    limits: Limits | None = None,
    strict_sync: bool | None = None,
    token: str | None = None,
    store: Store | str | None = None,
    decision_log: str | os.PathLike[str] | Callable[[dict[str, Any]], None] | None = None,
    decision_log_arguments: bool = False,
    approval_webhook: str | None = None,
    approval_webhook_arguments: bool | None = None,
    approval_inbox_url: str | None = None,
    **cloud_options: Any,
) -> PolicyManager:
    """Configure D2 once at startup (sync apps). Returns the instance's manager.

    Cloud mode when ``token`` or ``D2_TOKEN`` is set (needs ``d2-sdk[cloud]``);
    otherwise local mode from ``source`` (a path, a :class:`PolicySource`, or file
    discovery). ``limits`` raises the local limits. ``strict_sync`` overrides
    ``D2_STRICT_SYNC``. A bad policy raises and leaves guarded calls denied.
    Calling it again replaces the instance's configuration.

    ``store``: where ``per: user`` budgets and approvals live: a
    :class:`~d2.core.stores.Store` or a URL (``redis://host:port/db``; default
    ``D2_STORE_URL``, else in-process). ``decision_log``: a JSON Lines file path or
    a callable given each record (default ``D2_DECISION_LOG``, else off);
    ``decision_log_arguments=True`` also records each call's bound arguments.

    ``approval_webhook``: a URL that receives a JSON event (Slack-compatible: it
    has a ``text`` line) when an approval request is opened, approved or rejected
    (default ``D2_APPROVAL_WEBHOOK``, else off); sent in the background, never
    delaying a guarded call (see :mod:`d2.core.webhook`). Events carry the call's
    arguments (the approver's view) only with ``approval_webhook_arguments=True``
    (default ``D2_APPROVAL_WEBHOOK_ARGUMENTS``), and link
    ``<approval_inbox_url>/<request id>`` when ``approval_inbox_url`` (default
    ``D2_APPROVAL_INBOX_URL``) is set.

    ``api_url``, ``pin_jwks_thumbprints`` and ``jwks_url`` (positional after the
    instance name, as in 1.x) mean in cloud mode what ``D2_API_URL``,
    ``D2_JWKS_THUMBPRINTS`` and ``D2_JWKS_URL`` mean; local mode ignores the URLs
    and refuses pins (pinned keys never fall back to an unsigned file).
    """
    token = token if token is not None else os.environ.get("D2_TOKEN") or None
    cloud_options = _with_1x_options(cloud_options, api_url, pin_jwks_thumbprints, jwks_url)
    if not token:
        cloud_options = _local_options(cloud_options)
    chosen_store = _store_option(store)
    log = _log_option(decision_log, decision_log_arguments)
    try:
        webhook = _webhook_option(approval_webhook, approval_webhook_arguments, approval_inbox_url)
    except BaseException:
        if log is not None:
            log.close()
        if chosen_store is not None and (store is None or isinstance(store, str)):
            chosen_store.close()
        raise
    try:
        if token:
            cloud = _cloud_module(token)
            ev = evaluator_for(instance_name)
            ev.strict = _flag("D2_STRICT_SYNC") if strict_sync is None else strict_sync
            manager: PolicyManager = cloud.configure_sync(ev, token=token, **cloud_options)
            _register(manager)
        else:
            manager = _prepare(instance_name, source, limits, strict_sync)
            try:
                made_here = store is None or isinstance(store, str)
                private = made_here and type(chosen_store) is MemoryStore
                manager.start(store=chosen_store, private=private)
            except BaseException:
                manager.source.close()
                raise
    except BaseException:
        if log is not None:
            log.close()
        if webhook is not None:
            webhook.close(0)
        if chosen_store is not None and (store is None or isinstance(store, str)):
            chosen_store.close()  # made here from a URL: nobody else will close it
        raise
    _attach(manager, chosen_store, log, owned=store is None or isinstance(store, str))
    _attach_webhook(manager, webhook)
    return manager


_CLOUD_OPTIONS = frozenset({"api_url", "jwks_url", "jwks_thumbprints", "app", "state_path"})


def _with_1x_options(
    options: dict[str, Any],
    api_url: str | None,
    pins: str | Sequence[str] | None,
    jwks_url: str | None,
) -> dict[str, Any]:
    """Fold the 1.x arguments into the cloud options (``pin_jwks_thumbprints`` is
    the cloud package's ``jwks_thumbprints``)."""
    if pins is not None and not isinstance(pins, str):
        pins = list(pins)
    given = {"api_url": api_url, "jwks_url": jwks_url, "jwks_thumbprints": pins}
    out = dict(options)
    for name, value in given.items():
        if value is not None:
            if out.get(name) is not None:
                raise ConfigurationError(f"{name} is given twice; pass it once")
            out[name] = value
    return out


def _local_options(options: dict[str, Any]) -> dict[str, Any]:
    """Local mode: cloud settings mean nothing (1.x code passes ``api_url``) and
    are dropped with a debug log; an option no mode knows is a mistake. Pinned keys
    are not dropped: they say the app accepts only bundles signed by those keys, so
    without ``D2_TOKEN`` configuring fails rather than trust an unsigned file."""
    unknown = sorted(set(options) - _CLOUD_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) for configure_rbac_*: {unknown}; see help(d2.configure_rbac_sync)"
        )
    if options.get("jwks_thumbprints") or os.environ.get("D2_JWKS_THUMBPRINTS", "").strip():
        raise ConfigurationError(
            "pin_jwks_thumbprints (or D2_JWKS_THUMBPRINTS) pins the keys of signed cloud bundles, "
            "but D2_TOKEN is not set, which would select local mode and an unsigned policy "
            "file: set D2_TOKEN (cloud mode), or drop the pins to use local mode"
        )
    given = sorted(k for k, v in options.items() if v is not None)
    if given:
        import logging

        logging.getLogger("d2").debug(
            "d2: local mode (D2_TOKEN is not set) ignores the cloud option(s) %s", given
        )
    return {}


def _store_option(store: Store | str | None) -> Store | None:
    if store is None:
        url = os.environ.get("D2_STORE_URL", "").strip()
        if not url:
            return None  # the in-process store, created on first use
        store = url
    from .stores import Store, store_from_url

    if isinstance(store, str):
        return store_from_url(store)
    if not isinstance(store, Store):
        raise ConfigurationError(
            f"store must be a d2.core.stores.Store or a URL like redis://host:6379/0, got {store!r}"
        )
    return store


def _log_option(
    target: str | os.PathLike[str] | Callable[[dict[str, Any]], None] | None, arguments: bool
) -> DecisionLog | None:
    if target is None:
        target = os.environ.get("D2_DECISION_LOG", "").strip() or None
        if target is None:
            return None
    if not (callable(target) or isinstance(target, (str, os.PathLike))):
        raise ConfigurationError(
            f"decision_log must be a file path or a callable taking one record (dict), "
            f"got {target!r}"
        )
    from .decisionlog import DecisionLog

    try:
        return DecisionLog(target, arguments=bool(arguments))
    except OSError as exc:
        raise ConfigurationError(
            f"cannot open the decision log {target!r} for appending: {exc}; "
            "give a writable path (D2_DECISION_LOG or decision_log=)"
        ) from None


def _webhook_option(
    url: str | None, arguments: bool | None, inbox_url: str | None
) -> ApprovalWebhook | None:
    """The approval webhook to configure (arguments win over the environment), or
    ``None``; a URL that cannot be used raises :class:`ConfigurationError`
    showing it masked."""
    if url is None and not os.environ.get("D2_APPROVAL_WEBHOOK", "").strip():
        return None  # the cost of no webhook: this test, at configure time
    from .webhook import configured_webhook

    return configured_webhook(url, arguments, inbox_url)


def _attach_webhook(manager: PolicyManager, webhook: ApprovalWebhook | None) -> None:
    """Give the (started) instance its approval webhook; its previous one, if any,
    was flushed when the previous configuration retired."""
    manager.approval_webhook = webhook
    manager.evaluator.webhook = webhook


def _attach(
    manager: PolicyManager, store: Store | None, log: DecisionLog | None, owned: bool
) -> None:
    """Give the instance its store and decision log (after it started: a failed
    start changes neither)."""
    ev = manager.evaluator
    if store is not None:
        ev.store = store
        if owned and type(store) is MemoryStore:  # made from memory://: this instance's
            ev.private_store = store
        policy = ev.policy
        if policy is not None and not policy.namespace and _shared(store, ev):
            _warn_unscoped(policy)  # cloud bundles always have one: a custom manager
        if owned:
            manager.owned_store = store
    elif ev.store is not None and ev.store is not ev.private_store:
        ev.store = ev.private_store  # back to in-process (its own, or made on first use)
    manager.decision_log = log
    ev.set_log(log)


async def configure_rbac_async(
    instance_name: str = "default",
    api_url: str | None = None,
    pin_jwks_thumbprints: str | Sequence[str] | None = None,
    jwks_url: str | None = None,
    *,
    source: PolicySource | str | os.PathLike[str] | None = None,
    limits: Limits | None = None,
    strict_sync: bool | None = None,
    token: str | None = None,
    store: Store | str | None = None,
    decision_log: str | os.PathLike[str] | Callable[[dict[str, Any]], None] | None = None,
    decision_log_arguments: bool = False,
    approval_webhook: str | None = None,
    approval_webhook_arguments: bool | None = None,
    approval_inbox_url: str | None = None,
    **cloud_options: Any,
) -> PolicyManager:
    """Async twin of :func:`configure_rbac_sync` (same arguments): file reads and
    parsing run in a worker thread so the event loop is never blocked. ``d2.configure_rbac``
    is its 1.x name."""
    token = token if token is not None else os.environ.get("D2_TOKEN") or None
    cloud_options = _with_1x_options(cloud_options, api_url, pin_jwks_thumbprints, jwks_url)
    if token:
        chosen_store = _store_option(store)
        log = _log_option(decision_log, decision_log_arguments)
        webhook = None
        try:
            webhook = _webhook_option(
                approval_webhook, approval_webhook_arguments, approval_inbox_url
            )
            cloud = _cloud_module(token)
            ev = evaluator_for(instance_name)
            ev.strict = _flag("D2_STRICT_SYNC") if strict_sync is None else strict_sync
            manager: PolicyManager = await cloud.configure_async(ev, token=token, **cloud_options)
            _register(manager)
        except BaseException:
            if log is not None:
                log.close()
            if webhook is not None:
                webhook.close(0, wait=False)
            raise
        _attach(manager, chosen_store, log, owned=store is None or isinstance(store, str))
        _attach_webhook(manager, webhook)
        return manager
    import asyncio

    return await asyncio.to_thread(
        configure_rbac_sync,
        instance_name=instance_name,
        source=source,
        limits=limits,
        strict_sync=strict_sync,
        token="",
        store=store,
        decision_log=decision_log,
        decision_log_arguments=decision_log_arguments,
        approval_webhook=approval_webhook,
        approval_webhook_arguments=approval_webhook_arguments,
        approval_inbox_url=approval_inbox_url,
        **cloud_options,
    )


def get_policy_manager(instance_name: str = "default") -> PolicyManager:
    """The manager of a configured instance; raises :class:`ConfigurationError`
    naming the fix when it is not configured."""
    manager = _managers.get(instance_name)
    if manager is None:
        raise ConfigurationError(
            f"D2 instance {instance_name!r} is not configured: call "
            f"configure_rbac_sync(instance_name={instance_name!r}) first"
        )
    return manager


class _ShutDown:
    """What ``shutdown_rbac`` returns: the shutdown is already done; awaiting it
    (the 1.x form) also waits for a cloud instance's last usage flush. Not a
    coroutine, so leaving it un-awaited warns about nothing."""

    __slots__ = ("_pending",)

    def __init__(self, managers: list[PolicyManager]) -> None:
        for manager in managers:
            manager.shutdown()
        self._pending = [m.closing for m in managers if m.closing is not None]

    def __await__(self) -> Generator[Any, None, None]:
        return self._wait().__await__()

    async def _wait(self) -> None:
        for pending in self._pending:
            try:
                await pending
            except BaseException:  # a flush failure never fails the host's shutdown
                pass

    def __repr__(self) -> str:
        return "<d2 shutdown: done>"


def shutdown_rbac(instance_name: str = "default") -> Awaitable[None]:
    """Shut one instance down now (no-op when it is not configured): guarded calls
    of that instance deny from now on.

    Works both as a plain call and, as in 1.x, as ``await shutdown_rbac()``, which
    also waits for a cloud instance's final usage-event flush.
    """
    manager = _managers.get(instance_name)
    return _ShutDown([] if manager is None else [manager])


def shutdown_all_rbac() -> Awaitable[None]:
    """Shut every instance down now; plain call or ``await`` (see :func:`shutdown_rbac`)."""
    return _ShutDown(list(_managers.values()))


def _drop_after_fork(manager: PolicyManager) -> None:
    """Complete, in a forked child, the shutdown its parent was running."""
    if _managers.get(manager.name) is manager:
        del _managers[manager.name]
    ev = manager.evaluator
    ev.policy = None
    ev.absent_reason = "missing_policy"
    ev.absent_detail = (
        f"D2 instance {ev.name!r} was being shut down when this process was forked: "
        "call configure_rbac_sync() again in this process to guard calls"
    )
    import logging

    logging.getLogger("d2").error(
        "d2: instance %r was being shut down when process %d was forked; every guarded "
        "call here is denied: configure D2 again in this process",
        manager.name,
        os.getpid(),
    )


def _after_fork_in_child() -> None:
    # Threads do not survive fork(): renew the locks another thread may have held at
    # the fork, and restart each instance's watcher (its source's restart_after_fork)
    # so a forked worker keeps following its policy file (revocations included)
    # instead of a frozen copy. Cloud mode restarts its pollers in a hook of its own,
    # registered after the modules whose locks they use (d2.cloud).
    # An instance whose manager is closed but still registered was being shut down
    # (or replaced) by a thread of the parent that does not run here: nothing would
    # ever finish that, nor follow the policy, so the shutdown is completed here
    # (every guarded call of the child denies) instead of keeping a frozen copy.
    global _lock
    _lock = threading.Lock()
    failed: BaseException | None = None
    for manager in list(_managers.values()):
        manager._state = threading.Lock()
        if manager._closed:
            _drop_after_fork(manager)
            continue
        restart = getattr(manager.source, "restart_after_fork", None)
        if restart is None:
            continue
        try:
            restart()
        except Exception as exc:  # the others still restart; then it is reported
            failed = failed or exc
    if failed is not None:
        raise failed


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def is_allowed(tool_id: str, *, instance_name: str = "default") -> bool:
    """Whether the current user may call ``tool_id`` now. Never raises: no policy,
    no user or no grant all answer False."""
    return evaluator_for(instance_name).decide(tool_id) is None


def explain(tool_id: str, /, *args: Any, **kwargs: Any) -> Decision:
    """Why the current user may or may not call ``tool_id(*args, **kwargs)`` now.

    Runs every decision step against the default instance's policy and this
    request's history and facts, without running the tool or recording anything.
    The :class:`~d2.core.evaluate.Decision` lists each step with the rule (and its
    path in the policy) that decided. Arguments are bound to the guarded function's
    signature when ``tool_id`` is guarded in this process, else read by keyword.
    For a named instance use ``get_policy_manager(name).explain(...)``.
    """
    return evaluator_for("default").explain(tool_id, args, kwargs)


def allowed_tools(*, instance_name: str = "default") -> tuple[str, ...]:
    """The concrete tool ids the current user may call: those the policy names and
    those guarded in this process; sorted. Show a model only these."""
    return evaluator_for(instance_name).allowed_tools()
