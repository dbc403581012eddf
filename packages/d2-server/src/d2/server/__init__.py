"""d2-server: the reference D2 control plane (PROTOCOL.md v1), self-hostable.

Signed policy bundles and their JWKS, publishing with device-key signatures and
preconditions, drafts, revocation and usage events, in a SQLite file or a
PostgreSQL database. Run it with the ``d2-server`` command, or embed it::

    from d2.server import ControlPlane, SQLStorage, ServerConfig, create_app

    storage = SQLStorage("d2-server.db")  # or "postgresql://user:pass@host:5432/d2"
    plane = ControlPlane(storage, ServerConfig(poll_seconds=30))
    app = create_app(plane)  # any ASGI server

Tests use :mod:`d2.server.testing` (a live server on a free port with a fake clock).
"""

from ._version import __version__
from .app import create_app
from .config import Quotas, ServerConfig
from .errors import ApiError
from .service import ControlPlane
from .signing import SigningKey
from .storage import Storage
from .store import SQLStorage

__all__ = [
    "ApiError",
    "ControlPlane",
    "Quotas",
    "SQLStorage",
    "ServerConfig",
    "SigningKey",
    "Storage",
    "__version__",
    "create_app",
]
