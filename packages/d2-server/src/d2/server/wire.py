"""Reading requests and writing responses: bounded bodies and JSON errors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from .errors import ApiError

__all__ = ["error_response", "http_exception_response", "json_response", "read_body"]

_HTTP_DETAILS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


async def read_body(request: Request, limit: int, *, detail: str = "payload_too_large") -> bytes:
    """The request body, refused with 413 ``detail`` past ``limit`` bytes: from the
    declared ``Content-Length`` without reading, else while streaming."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid_content_length")
        if int(declared) > limit:
            raise ApiError(413, detail, limit=limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, detail, limit=limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected") from None
    return b"".join(chunks)


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A JSON response that is never cached by intermediaries; ``body`` is a model
    of :mod:`.bodies` or plain JSON values."""
    if isinstance(body, BaseModel):
        body = body.model_dump(mode="json")
    out = {"Cache-Control": "no-store"}
    out.update(headers or {})
    return JSONResponse(body, status_code=status, headers=out)


def error_response(exc: ApiError) -> JSONResponse:
    """The JSON response of a refused request."""
    return json_response(exc.body(), exc.status, exc.headers)


def http_exception_response(exc: HTTPException) -> Response:
    """Starlette's own errors (unknown route, wrong method) as JSON."""
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    detail = _HTTP_DETAILS.get(exc.status_code, "http_error")
    return json_response({"detail": detail}, exc.status_code, dict(exc.headers or {}))
