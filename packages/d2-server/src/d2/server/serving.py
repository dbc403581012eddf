"""Running the server under uvicorn: one process, or several workers.

With ``workers > 1`` uvicorn starts each worker process from an import string, so
the settings travel to the workers in the environment variable
:data:`SETTINGS_ENV` (JSON: the database path and the :class:`ServerConfig`
fields given on the command line; no secret) and :func:`worker_app` builds each
worker's application from it. The usage-event pruner then runs once, in the
supervising process, instead of once per worker.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette

from .config import ServerConfig
from .service import ControlPlane
from .store import SQLStorage

__all__ = ["SETTINGS_ENV", "ServeSettings", "serve", "worker_app"]

SETTINGS_ENV = "D2_SERVER_WORKER_SETTINGS"
"""The environment variable carrying :class:`ServeSettings` to worker processes."""

_FACTORY = "d2.server.serving:worker_app"


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
    from :data:`SETTINGS_ENV`; the supervising process prunes events, not it."""
    from .app import create_app

    settings = ServeSettings.from_env()
    plane = ControlPlane(SQLStorage(settings.db), settings.server_config())
    return create_app(plane, prune=False)


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
    listening socket, and this process runs the usage-event pruner."""
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
    plane = ControlPlane(storage, config)
    try:
        if workers <= 1:
            uvicorn.run(create_app(plane), **options)
            return
        os.environ[SETTINGS_ENV] = settings.to_env()  # inherited by the spawned workers
        pruner = EventPruner(plane)
        pruner.start()
        try:
            uvicorn.run(_FACTORY, factory=True, workers=workers, **options)
        finally:
            pruner.stop()
    finally:
        storage.close()
