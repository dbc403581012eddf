"""The OpenAPI 3.1 document of the API, served at ``/openapi.json``.

The schemas are generated from the pydantic models of :mod:`.bodies` (the same
models that validate the requests and build the responses); the operations are
one table below. Every operation lists every status it can answer, with the JSON
error schema for each refusal, so a schema-driven fuzzer (schemathesis) can check
conformance.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import (
    GenerateJsonSchema,
    JsonSchemaMode,
    JsonSchemaValue,
    models_json_schema,
)
from pydantic_core import core_schema

from . import bodies
from ._version import __version__

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{model}"

_ERROR_TEXT = {
    400: "Malformed request (body not JSON, bad Content-Length)",
    401: "Missing or unknown token, unknown device key or bad signature",
    402: "Plan limit (tools, bundle size)",
    403: "Missing scope, or quota_apps_exceeded",
    404: "Not found (no_policy, no_draft)",
    409: "The key id exists for this app with another key",
    410: "The app's policy was revoked",
    412: (
        "Precondition failed: someone published since, or not exactly one of "
        'If-None-Match: * / If-Match: "<etag>"'
    ),
    413: "Body too large, or too many events in one batch",
    422: "Invalid body or policy; errors lists the paths",
    428: "Publish needs If-Match or If-None-Match",
    429: "Rate limited; retry after Retry-After seconds",
    503: (
        "Unavailable: the database does not answer (database_unavailable), or a "
        "signing key does not decrypt with D2_SERVER_SECRET (signing_key_unavailable)"
    ),
}
_DIGITS = {"type": "string", "pattern": "^[0-9]+$"}
_BUNDLE_HEADERS = {
    "ETag": {"description": "The bundle's entity tag", "schema": {"type": "string"}},
    "X-D2-Poll-Seconds": {"description": "Suggested poll interval", "schema": _DIGITS},
}


@dataclass(frozen=True)
class _Op:
    """One operation: its answer on success, its refusals, its headers."""

    path: str
    method: str
    summary: str
    status: int
    answer: type[BaseModel] | None
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | None = None
    params: tuple[tuple[str, str, bool], ...] = ()  # header name, description, required
    headers: dict[str, Any] = field(default_factory=dict)
    public: bool = False


_OPS = (
    _Op(
        "/healthz",
        "get",
        "Liveness: the database answers",
        200,
        bodies.Health,
        (503,),
        public=True,
    ),
    _Op("/openapi.json", "get", "This document", 200, None, public=True),
    _Op("/.well-known/jwks.json", "get", "Bundle signing keys", 200, bodies.Jwks, public=True),
    _Op("/v1/accounts/me", "get", "Identity and limits of the token", 200, bodies.Identity, (401,)),
    _Op(
        "/v1/policy/bundle",
        "get",
        "The app's signed policy bundle",
        200,
        bodies.Bundle,
        (401, 403, 404, 410, 503),
        params=(("If-None-Match", "ETag of the bundle held", False),),
        headers=_BUNDLE_HEADERS,
    ),
    _Op(
        "/v1/policy/publish",
        "post",
        "Publish the next policy version (signed by a device key)",
        201,
        bodies.Published,
        (400, 401, 402, 403, 412, 413, 422, 428, 503),
        bodies.PolicyDocument,
        params=(
            ("X-D2-Key-Id", "Registered device key id", True),
            ("X-D2-Signature", "base64 Ed25519 signature of the body", True),
            ("If-Match", "ETag of the current bundle (strong comparison)", False),
            ("If-None-Match", "* when no policy is in force (only *)", False),
        ),
        headers={"ETag": _BUNDLE_HEADERS["ETag"]},
    ),
    _Op(
        "/v1/policy/revoke",
        "post",
        "Revoke the app's policy",
        200,
        bodies.Revoked,
        (400, 401, 403, 404, 413),
    ),
    _Op("/v1/policy/draft", "get", "The app's draft", 200, bodies.Draft, (401, 403, 404)),
    _Op(
        "/v1/policy/draft",
        "put",
        "Save the app's draft",
        200,
        bodies.DraftSaved,
        (400, 401, 402, 403, 413, 422),
        bodies.DraftIn,
    ),
    _Op(
        "/v1/keys",
        "post",
        "Register a device key for the token's app",
        201,
        bodies.Key,
        (400, 401, 403, 409, 413, 422),
        bodies.KeyIn,
    ),
    _Op(
        "/v1/events/ingest",
        "post",
        "Usage events",
        202,
        bodies.Accepted,
        (400, 401, 403, 413, 422, 429),
        bodies.Events,
    ),
)


class _Schemas(GenerateJsonSchema):
    """pydantic's JSON Schema, minus what the wire never carries: an optional field
    is absent when unset, never ``null``; and no per-field titles."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        if schema.get("default", ...) is None:
            return self.generate_inner(schema["schema"])
        return super().default_schema(schema)

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _operation(op: _Op) -> dict[str, Any]:
    answer = _ref(op.answer) if op.answer is not None else {"type": "object"}
    extra = {"headers": op.headers} if op.headers else {}
    responses: dict[str, Any] = {str(op.status): _json(answer, op.summary, **extra)}
    if op.path == "/v1/policy/bundle":
        responses["304"] = {"description": "Unchanged", "headers": op.headers}
    for code in op.errors:
        retry = {"Retry-After": {"description": "Seconds to wait", "schema": _DIGITS}}
        headers = {"headers": retry} if code == 429 else {}
        responses[str(code)] = _json(_ref(bodies.Error), _ERROR_TEXT[code], **headers)
    out: dict[str, Any] = {"summary": op.summary, "responses": responses}
    if op.params:
        out["parameters"] = [
            {
                "name": name,
                "in": "header",
                "required": required,
                "description": description,
                "schema": {"type": "string"},
            }
            for name, description, required in op.params
        ]
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(op.body)}},
        }
    if op.public:
        out["security"] = []
    return out


@functools.cache
def _document() -> dict[str, Any]:
    requests = {op.body for op in _OPS if op.body is not None}
    answers = {op.answer for op in _OPS if op.answer is not None} | {bodies.Error}
    validation: JsonSchemaMode = "validation"
    serialization: JsonSchemaMode = "serialization"
    models = [(m, validation) for m in requests] + [(m, serialization) for m in answers]
    models.sort(key=lambda item: (item[0].__name__, item[1]))
    _, defs = models_json_schema(models, ref_template=_REF, schema_generator=_Schemas)
    paths: dict[str, Any] = {}
    for op in _OPS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "D2 control plane", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(defs["$defs"].items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the OpenAPI document."""
    return copy.deepcopy(_document())
