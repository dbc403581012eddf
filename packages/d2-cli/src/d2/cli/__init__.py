"""d2-cli: the ``d2`` command line (also ``python -m d2``).

Commands: ``init`` (scan the code, write a starter policy), ``inspect``,
``diagnose``, ``check``, ``renew`` (move ``metadata.expires`` ahead), ``test``
(policy unit tests), ``replay``, and, with ``D2_TOKEN`` and
``D2_API_URL``, ``pull``, ``draft``, ``publish`` and ``revoke``. Human output by
default, ``--json`` for scripts; exit code 0 ok, 1 policy problem or denial, 2
usage or configuration error. See docs/cli.md.
"""

from __future__ import annotations

from .app import app, main

__all__ = ["app", "main"]
