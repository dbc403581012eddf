"""The decision log: one JSON object per decision, written in the background.

``configure_rbac_*(decision_log=PATH or callable)`` (or ``D2_DECISION_LOG=PATH``)
turns it on. A guarded call only appends a tuple to a bounded in-memory queue; a
daemon thread formats and writes the records (JSON Lines, file created 0600) a few
times a second, and at shutdown and interpreter exit. When the queue is full the
record is dropped and counted (logged once, reported as the
``d2.decision_log.dropped`` metric); the call never waits.

Fields: ``ts`` (Unix seconds), ``request_id`` (one per ``set_user`` scope),
``user_id``, ``roles``, ``tool_id``, ``decision`` (``allowed``, ``denied``,
``would_deny``), ``reason``, ``rule`` (the deciding rule's path in the policy),
``policy_version``, ``mode``, ``duration_us``; ``approval_id`` when an approval was
used or requested; ``arguments`` (the bound arguments) only with
``decision_log_arguments=True``; and the tool's labels (:mod:`d2.core.labels`, e.g.
d2-gateway's ``upstream``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ._functions import bound_arguments
from .approval_data import json_arguments
from .context import process_tag  # request ids as UserContext.request_id shows them
from .labels import _labels

if TYPE_CHECKING:
    from .context import UserContext
    from .errors import PermissionDeniedError
    from .policy.model import CompiledPolicy, Grant, ToolRules

__all__ = ["DecisionLog", "DecisionSink", "deciding_rule", "dropped_total"]

Sink = Callable[[dict[str, Any]], None]
# ASCII: a lone surrogate in a user id or an argument cannot break the UTF-8 write
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=str)
_dropped = [0]  # records dropped by every log of the process; read by the metrics
_live: list[DecisionLog] = []  # logs whose writer runs (restarted after fork)


class DecisionSink(Protocol):
    """What an evaluator tells of each decision (:class:`DecisionLog`, or a
    replay's capture): ``arguments`` says whether it wants the call's arguments."""

    arguments: bool

    def add(
        self,
        tool_id: str,
        ctx: UserContext,
        reason: str | None,
        decision: str,
        policy: CompiledPolicy | None,
        rules: ToolRules | None,
        err: PermissionDeniedError | None,
        grant: Grant | None,
        duration: float,
        call: tuple[Any, ...] | None,
        approval: str | None,
    ) -> None:
        """Take one decision; must be cheap and must not raise."""


def deciding_rule(
    err: PermissionDeniedError | None,
    grant: Grant | None,
    rules: ToolRules | None,
    roles: frozenset[str],
) -> str | None:
    """The path of the rule that decided: the last step of a denial's trace that
    names one, else the granting entry."""
    if err is not None:
        try:
            return next((s.path for s in reversed(err.trace) if s.path), None)
        except Exception:  # a trace that cannot be built: no rule
            return None
    if grant is not None:
        return grant.path
    if rules is not None:
        found = rules.allow_grants(roles)
        return found[0].path if found else None
    return None


def dropped_total() -> int:
    """Records dropped because a decision log's queue was full (this process)."""
    return _dropped[0]


class DecisionLog:
    """Where decisions go: a JSON Lines file (``path``) or a callable given each
    record as a dict (in the writer thread). ``arguments``: also record the bound
    arguments of each call. ``capacity``: records held before dropping;
    ``interval``: seconds between writes."""

    def __init__(
        self,
        sink: str | os.PathLike[str] | Sink,
        *,
        arguments: bool = False,
        capacity: int = 100_000,
        interval: float = 0.2,
    ) -> None:
        self.arguments = arguments
        self.capacity = capacity
        self.interval = interval
        self.path: str | None = None
        self._sink: Sink | None = None
        if callable(sink):
            self._sink = sink
        else:
            self.path = os.fspath(sink)
            self._open_file().close()  # fail at configure time, naming the path
        self._queue: deque[tuple[Any, ...]] = deque()
        self._tag = process_tag()
        self._write_lock = threading.Lock()  # the writer vs flush(); never the caller's
        self._stop = threading.Event()
        self._warned = False
        self._failures = 0
        self._thread: threading.Thread | None = None
        self._start()

    # -- the caller's side: append only ---------------------------------------
    def add(
        self,
        tool_id: str,
        ctx: UserContext,
        reason: str | None,
        decision: str,
        policy: CompiledPolicy | None,
        rules: ToolRules | None,
        err: PermissionDeniedError | None,
        grant: Grant | None,
        duration: float,
        call: tuple[Any, ...] | None,
        approval: str | None,
    ) -> None:
        """Queue one decision (called by the evaluator; never blocks, never raises)."""
        queue = self._queue
        if len(queue) >= self.capacity:
            _dropped[0] += 1
            if not self._warned:
                self._warned = True
                import logging

                logging.getLogger("d2").warning(
                    "d2: decision log queue full (%d records); dropping records (counted "
                    "in the d2.decision_log.dropped metric)",
                    self.capacity,
                )
            return
        arguments = None
        if self.arguments and call is not None:
            try:
                shown = json_arguments(bound_arguments(call[2], call[0], call[1]))
                arguments = _ENCODER.encode(shown)
            except Exception:
                arguments = '"<unserializable>"'
        queue.append(
            (
                time.time(),
                ctx.scope.number,
                ctx.user_id,
                ctx.roles,
                tool_id,
                decision,
                reason,
                policy,
                rules,
                err,
                grant,
                duration,
                arguments,
                approval,
            )
        )

    # -- the writer's side -------------------------------------------------------
    def _start(self) -> None:
        self._stop.clear()
        thread = threading.Thread(target=self._run, name="d2-decision-log", daemon=True)
        self._thread = thread
        thread.start()
        _live.append(self)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()
        self.flush()

    def _open_file(self) -> Any:
        assert self.path is not None
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8")

    def flush(self) -> None:
        """Write every queued record now. A record that cannot be encoded or a
        sink that raises loses that record alone (counted as dropped)."""
        with self._write_lock:
            queue = self._queue
            if not queue:
                return
            records = []
            while queue:
                records.append(self._record(queue.popleft()))
            if self._sink is not None:
                for record in records:
                    try:
                        self._sink(record)
                    except Exception as exc:
                        self._lost(1, exc)
                return
            lines = []
            for record in records:
                try:
                    lines.append(_ENCODER.encode(record) + "\n")
                except Exception as exc:
                    self._lost(1, exc)
            try:
                with self._open_file() as fh:
                    fh.write("".join(lines))
            except Exception as exc:
                self._lost(len(lines), exc)

    def _lost(self, count: int, exc: Exception) -> None:
        """Records that could not be written: counted with the dropped ones;
        logged the first time and then every 1,000th loss."""
        before = self._failures
        self._failures += count
        _dropped[0] += count
        if before == 0 or before // 1000 != self._failures // 1000:
            import logging

            logging.getLogger("d2").warning(
                "d2: writing the decision log to %s failed (%s: %s); %d record(s) lost so far",
                self.path or repr(self._sink),
                type(exc).__name__,
                exc,
                self._failures,
            )

    def _record(self, item: tuple[Any, ...]) -> dict[str, Any]:
        (
            ts, number, user_id, roles, tool_id, decision, reason, policy, rules, err, grant,
            duration, arguments, approval,
        ) = item  # fmt: skip
        rule = deciding_rule(err, grant, rules, roles)
        record: dict[str, Any] = {
            "ts": round(ts, 6),
            "request_id": f"{self._tag}-{number}",
            "user_id": user_id,
            "roles": sorted(roles),
            "tool_id": tool_id,
            "decision": decision,
            "reason": reason,
            "rule": rule,
            "policy_version": policy.version_text if policy is not None else None,
            "mode": policy.mode if policy is not None else None,
            "duration_us": round(duration * 1e6, 3),
        }
        if approval is not None:
            record["approval_id"] = approval
        if err is not None and getattr(err, "request", None) is not None:
            record["approval_id"] = err.request.id
        if err is not None and err.retry_after is not None:
            record["retry_after"] = round(err.retry_after, 3)
        if arguments is not None:
            record["arguments"] = json.loads(arguments)
        labels = _labels.get(tool_id)
        if labels:
            record.update(labels)
        return record

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.flush()
        if self in _live:
            _live.remove(self)

    def _after_fork(self) -> None:
        # the parent's queued records are the parent's to write
        self._queue = deque()
        self._write_lock = threading.Lock()
        self._tag = process_tag()
        self._stop = threading.Event()
        if self in _live:
            _live.remove(self)
        self._start()

    def __repr__(self) -> str:
        return f"<DecisionLog {self.path or self._sink!r} queued={len(self._queue)}>"


def _close_all() -> None:
    for log in list(_live):
        log.close()


def _after_fork_in_child() -> None:
    for log in list(_live):
        log._after_fork()


import atexit  # noqa: E402 - registration belongs with the functions it registers

atexit.register(_close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
