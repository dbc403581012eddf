"""``WSGIMiddleware``: the same contract as the ASGI middleware, for Flask, Django
and any PEP 3333 app.

The user is set before the app is called and cleared when the server closes the
response iterable (after the last chunk of a streamed body), or at once when the
extractor or the app raises. WSGI servers reuse worker threads, so the clear on
``close()`` is what keeps one request's user out of the next request on the thread.
(The wrapper hides a ``wsgi.file_wrapper`` from the server's sendfile shortcut; the
file is still sent, read in chunks.)
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator

from d2.core import ConfigurationError, clear_user_context

from ._request import begin_request
from .headers import wsgi_headers_extractor
from .types import Environ, StartResponse, WSGIApp, WSGIUserExtractor

__all__ = ["WSGIMiddleware"]


class _ClearOnClose:
    """The app's response iterable; ``close()`` closes it, then clears the user."""

    __slots__ = ("_body",)

    def __init__(self, body: Iterable[bytes]) -> None:
        self._body = body

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            clear_user_context()


class WSGIMiddleware:
    """Set the D2 user context for each WSGI request.

    ``user_extractor(environ)`` returns ``(user_id, roles)`` (or ``None`` for no
    user) and must be a plain function. The default,
    :func:`~d2.asgi.wsgi_headers_extractor`, trusts ``X-D2-User`` / ``X-D2-Roles``
    and is only safe behind a gateway that sets or strips them.

    Flask: ``app.wsgi_app = WSGIMiddleware(app.wsgi_app, user_extractor=...)``;
    Django: wrap ``get_wsgi_application()`` in ``wsgi.py``.
    """

    def __init__(
        self, app: WSGIApp, *, user_extractor: WSGIUserExtractor = wsgi_headers_extractor
    ) -> None:
        if not callable(user_extractor):
            raise ConfigurationError(
                f"user_extractor must be a function of the WSGI environ, got "
                f"{type(user_extractor).__name__}"
            )
        if inspect.iscoroutinefunction(user_extractor):
            raise ConfigurationError(
                "the WSGI user_extractor is an async function; WSGI has no event loop, "
                "so give a plain (sync) function"
            )
        self.app = app
        self.user_extractor = user_extractor

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        try:
            begin_request(self.user_extractor(environ))
            body = self.app(environ, start_response)
        except BaseException:
            clear_user_context()
            raise
        return _ClearOnClose(body)
