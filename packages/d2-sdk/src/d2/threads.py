"""Carry the D2 user into threads the app starts itself (the 1.x ``d2.threads``).

- ``submit_with_context(executor, fn, *args, actor=None, **kwargs)``: submit ``fn``
  to run as the current user (or as ``actor``, a :class:`~d2.UserContext`).
- ``@thread_entrypoint(require_actor=False)``: the decorated function runs as the
  ``actor=`` it is given, or as the caller's user unless ``require_actor=True``.

Both raise :class:`~d2.D2NoContextError` when there is no user to run as, and
``TypeError`` when ``actor`` is not a ``UserContext``. See :mod:`d2.core.threads`.
"""

from d2.core.threads import run_in_thread, submit_with_context, thread_entrypoint

__all__ = ["run_in_thread", "submit_with_context", "thread_entrypoint"]
