"""Running the server under uvicorn: one process, or several workers.

With ``workers > 1`` uvicorn starts each worker process from an import string, so
the settings travel to the workers in the environment variable
:data:`SETTINGS_ENV` (JSON: the database path and the :class:`ServerConfig`
fields given on the command line; no secret) and :func:`worker_app` builds each
worker's application from it. The usage-event pruner then runs once, in the
supervising process, instead of once per worker.

Whatever the number of workers, :func:`serve` checks the signing keys against
``D2_SERVER_SECRET`` in this process before anything listens, and a worker that
cannot start ends the whole server with exit status 3 (:data:`STARTUP_FAILURE`,
uvicorn's own status for a failed start): uvicorn's supervisor stops the other
workers instead of restarting the failed one forever, and :func:`serve` turns that
stop into ``SystemExit(3)`` rather than a normal return.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette

from .config import ServerConfig
from .service import ControlPlane
from .store import SQLStorage

__all__ = ["SETTINGS_ENV", "STARTUP_FAILURE", "ServeSettings", "serve", "worker_app"]

SETTINGS_ENV = "D2_SERVER_WORKER_SETTINGS"
"""The environment variable carrying :class:`ServeSettings` to worker processes."""

STARTUP_FAILURE = 3
"""The exit status of a server that could not start (uvicorn's, and
``d2-server serve``'s): a worker process exits with it when it cannot build its
application, and :func:`serve` raises ``SystemExit`` with it when a worker did."""

_FACTORY = "d2.server.serving:worker_app"
_log = logging.getLogger("d2.server")


@dataclass(frozen=True)
class ServeSettings:
    """What every process of one server builds its application from: the database
    file and the :class:`ServerConfig` keyword arguments (numbers only)."""

    db: str
    config: Mapping[str, int | float | None] = field(default_factory=dict)

    def server_config(self) -> ServerConfig:
        """The :class:`ServerConfig` (``ValueError`` for a value out of range)."""
        return ServerConfig(**dict(self.config))  # type: ignore[arg-type]

    def to_env(self) -> str:
        """The JSON form, for :data:`SETTINGS_ENV`."""
        return json.dumps({"db": self.db, "config": dict(self.config)}, sort_keys=True)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeSettings:
        """The settings in :data:`SETTINGS_ENV`; ``RuntimeError`` when unset or bad."""
        raw = (os.environ if environ is None else environ).get(SETTINGS_ENV)
        if not raw:
            raise RuntimeError(
                f"{SETTINGS_ENV} is not set: worker_app is started by "
                "`d2-server serve --workers N`, not on its own (embed create_app instead)"
            )
        try:
            data = json.loads(raw)
            db, config = data["db"], data["config"]
        except (ValueError, TypeError, KeyError) as exc:
            raise RuntimeError(f"{SETTINGS_ENV} is not valid: {exc}") from None
        if not isinstance(db, str) or not isinstance(config, dict):
            raise RuntimeError(f"{SETTINGS_ENV} is not valid: expected a db path and a config")
        return cls(db, config)


def worker_app() -> Starlette:
    """The application of one worker process (an app factory for uvicorn), built
    from :data:`SETTINGS_ENV`; the supervising process prunes events, not it.

    When it cannot be built (no or bad settings, a database that does not open, a
    refused secret), the error is logged on the ``d2.server`` logger and the worker
    exits with :data:`STARTUP_FAILURE`: uvicorn's supervisor then stops the server
    (any other exception would make it restart the worker forever)."""
    from .app import create_app

    try:
        settings = ServeSettings.from_env()
        plane = ControlPlane(SQLStorage(settings.db), settings.server_config())
        return create_app(plane, prune=False)
    except Exception as exc:
        _log.error("this worker cannot start: %s", exc, exc_info=True)
        raise SystemExit(STARTUP_FAILURE) from None


def serve(
    settings: ServeSettings,
    *,
    host: str,
    port: int,
    workers: int = 1,
    log_level: str = "info",
    **uvicorn_options: Any,
) -> None:
    """Serve until stopped (SIGINT/SIGTERM). One worker: the application runs in
    this process. Several: uvicorn supervises ``workers`` processes sharing the
    listening socket, and this process runs the usage-event pruner.

    Before anything listens, this process checks the signing keys against
    ``D2_SERVER_SECRET`` (:meth:`ControlPlane.check_signing_keys`): a
    :class:`~d2.server.keyseal.KeySecretError` (wrong, missing or weak secret) is
    raised from here, whatever the number of workers. A server that then fails to
    start raises ``SystemExit(STARTUP_FAILURE)``: uvicorn does so for one worker, and
    this function does so when a worker exited with that status (uvicorn's
    supervisor has then stopped the others)."""
    import uvicorn

    from .app import create_app
    from .retention import EventPruner

    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "access_log": True,
        "lifespan": "on",  # the lifespan runs the usage-event pruner (one worker)
        **uvicorn_options,
    }
    config = settings.server_config()
    storage = SQLStorage(settings.db)
    failed = False
    try:
        plane = ControlPlane(storage, config)
        plane.check_signing_keys()  # here, before any port is bound or worker started
        if workers <= 1:
            uvicorn.run(create_app(plane), **options)
            return
        os.environ[SETTINGS_ENV] = settings.to_env()  # inherited by the spawned workers
        pruner = EventPruner(plane)
        pruner.start()
        try:
            failed = _supervise(workers, options)
        finally:
            pruner.stop()
    finally:
        storage.close()
    if failed:
        raise SystemExit(STARTUP_FAILURE)


def _supervise(workers: int, options: dict[str, Any]) -> bool:
    """Run uvicorn's multiprocess supervisor over :func:`worker_app` (what
    ``uvicorn.run(..., workers=N)`` does) until it stops; whether it stopped because
    a worker exited with :data:`STARTUP_FAILURE` (``uvicorn.run`` returns normally
    then, so the status is read from the supervisor's processes)."""
    from uvicorn import Config
    from uvicorn.supervisors import Multiprocess

    config = Config(_FACTORY, factory=True, workers=workers, **options)
    sock = config.bind_socket()
    supervisor = Multiprocess(config, sockets=[sock])
    try:
        supervisor.run()
    except KeyboardInterrupt:  # before the supervisor's own signal handlers (as uvicorn.run)
        pass
    finally:
        sock.close()
    return any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes)
