"""The OpenAPI 3.0 document of the API, served at ``/openapi.json``.

Every operation lists every status it can answer, with the JSON error schema for
each refusal, so a schema-driven fuzzer (schemathesis) can check conformance.
"""

from __future__ import annotations

import copy
from typing import Any

from ._version import __version__

__all__ = ["openapi_document"]

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
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _header(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "schema": schema or {"type": "string"}}


def _errors(*codes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code in codes:
        extra: dict[str, Any] = {}
        if code == 429:
            extra["headers"] = {
                "Retry-After": _header("Seconds to wait", {"type": "string", "pattern": "^[0-9]+$"})
            }
        out[str(code)] = _json(_ref("Error"), _ERROR_TEXT[code], **extra)
    return out


def _param(name: str, description: str, *, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }


_BUNDLE_HEADERS = {
    "ETag": _header("The bundle's entity tag"),
    "X-D2-Poll-Seconds": _header(
        "Suggested poll interval", {"type": "string", "pattern": "^[0-9]+$"}
    ),
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["detail"],
        "properties": {
            "detail": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "string"}},
            "message": {"type": "string"},
            "limit": {"type": "integer"},
            "value": {"type": "integer"},
            "scope": {"type": "string"},
            "current_version": {"type": "integer"},
            "retry_after": {"type": "integer"},
        },
    },
    "Identity": {
        "type": "object",
        "required": ["account_id", "app_name", "plan", "poll_seconds", "quotas", "scopes"],
        "properties": {
            "account_id": {"type": "string"},
            "app_name": {"type": "string"},
            "plan": {"type": "string"},
            "poll_seconds": {"type": "integer"},
            "quotas": {
                "type": "object",
                "required": ["max_tools", "bundle_size_bytes", "event_batch", "ingest_interval"],
                "properties": {
                    k: {"type": "integer"}
                    for k in ("max_tools", "bundle_size_bytes", "event_batch", "ingest_interval")
                },
            },
            "scopes": {"type": "array", "items": {"type": "string"}},
        },
    },
    "JWKS": {
        "type": "object",
        "required": ["keys"],
        "properties": {
            "keys": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["kid", "kty", "alg", "use"],
                    "properties": {
                        "kid": {"type": "string"},
                        "kty": {"type": "string", "enum": ["OKP", "EC", "RSA"]},
                        "alg": {"type": "string", "enum": ["EdDSA", "ES256", "RS256"]},
                        "use": {"type": "string", "enum": ["sig"]},
                    },
                },
            }
        },
    },
    "Bundle": {
        "type": "object",
        "required": ["jws", "version"],
        "properties": {"jws": {"type": "string"}, "version": {"type": "integer", "minimum": 1}},
    },
    "PolicyDocument": {
        "type": "object",
        "description": "A policy document (POLICY.md); metadata.name must be the app's name",
        "properties": {"metadata": {"type": "object"}, "policies": {"type": "array"}},
    },
    "Published": {
        "type": "object",
        "required": ["version", "etag"],
        "properties": {"version": {"type": "integer", "minimum": 1}, "etag": {"type": "string"}},
    },
    "Revoked": {
        "type": "object",
        "required": ["revoked_version"],
        "properties": {"revoked_version": {"type": "integer", "minimum": 1}},
    },
    "DraftIn": {
        "type": "object",
        "required": ["version", "bundle"],
        "properties": {
            "version": {"type": "integer", "minimum": 0},
            "bundle": _ref("PolicyDocument"),
        },
    },
    "Draft": {
        "type": "object",
        "required": ["version", "bundle"],
        "properties": {"version": {"type": "integer"}, "bundle": {"type": "object"}},
    },
    "DraftSaved": {
        "type": "object",
        "required": ["draft_version"],
        "properties": {"draft_version": {"type": "integer"}},
    },
    "KeyIn": {
        "type": "object",
        "required": ["key_id", "algorithm", "public_key"],
        "properties": {
            "key_id": {"type": "string", "pattern": "^[A-Za-z0-9._:@+/=-]{1,128}$"},
            "algorithm": {"type": "string", "enum": ["Ed25519"]},
            "public_key": {
                "type": "string",
                "pattern": "^[A-Za-z0-9+/]{43}=$",
                "description": "base64 of the raw 32-byte key",
            },
        },
    },
    "Key": {
        "type": "object",
        "required": ["key_id", "algorithm"],
        "properties": {"key_id": {"type": "string"}, "algorithm": {"type": "string"}},
    },
    "Events": {
        "type": "object",
        "required": ["events"],
        "properties": {
            "events": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["event_type", "payload", "occurred_at"],
                    "properties": {
                        "event_type": {"type": "string", "minLength": 1, "maxLength": 200},
                        "payload": {"type": "object"},
                        "occurred_at": {"type": "string", "format": "date-time"},
                    },
                },
            }
        },
    },
    "Accepted": {
        "type": "object",
        "required": ["accepted"],
        "properties": {"accepted": {"type": "integer", "minimum": 0}},
    },
}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": responses, **extra}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the OpenAPI document."""
    public: dict[str, Any] = {"security": []}
    paths: dict[str, Any] = {
        "/healthz": {
            "get": _op(
                "Liveness",
                {"200": _json({"type": "object", "required": ["status"]}, "Alive")},
                **public,
            )
        },
        "/openapi.json": {
            "get": _op("This document", {"200": _json({"type": "object"}, "OpenAPI")}, **public)
        },
        "/.well-known/jwks.json": {
            "get": _op("Bundle signing keys", {"200": _json(_ref("JWKS"), "JWKS")}, **public)
        },
        "/v1/accounts/me": {
            "get": _op(
                "Identity and limits of the token",
                {"200": _json(_ref("Identity"), "Identity"), **_errors(401)},
            )
        },
        "/v1/policy/bundle": {
            "get": _op(
                "The app's signed policy bundle",
                {
                    "200": _json(_ref("Bundle"), "The bundle", headers=_BUNDLE_HEADERS),
                    "304": {"description": "Unchanged", "headers": _BUNDLE_HEADERS},
                    **_errors(401, 403, 404, 410),
                },
                parameters=[_param("If-None-Match", "ETag of the bundle held")],
            )
        },
        "/v1/policy/publish": {
            "post": _op(
                "Publish the next policy version (signed by a device key)",
                {
                    "201": _json(
                        _ref("Published"), "Published", headers={"ETag": _BUNDLE_HEADERS["ETag"]}
                    ),
                    **_errors(400, 401, 402, 403, 412, 413, 422, 428),
                },
                parameters=[
                    _param("X-D2-Key-Id", "Registered device key id", required=True),
                    _param("X-D2-Signature", "base64 Ed25519 signature of the body", required=True),
                    _param("If-Match", "ETag of the current bundle (strong comparison)"),
                    _param("If-None-Match", "* when no policy is in force (only *)"),
                ],
                requestBody=_body(_ref("PolicyDocument")),
            )
        },
        "/v1/policy/revoke": {
            "post": _op(
                "Revoke the app's policy",
                {"200": _json(_ref("Revoked"), "Revoked"), **_errors(400, 401, 403, 404, 413)},
            )
        },
        "/v1/policy/draft": {
            "get": _op(
                "The app's draft",
                {"200": _json(_ref("Draft"), "The draft"), **_errors(401, 403, 404)},
            ),
            "put": _op(
                "Save the app's draft",
                {
                    "200": _json(_ref("DraftSaved"), "Saved"),
                    **_errors(400, 401, 402, 403, 413, 422),
                },
                requestBody=_body(_ref("DraftIn")),
            ),
        },
        "/v1/keys": {
            "post": _op(
                "Register a device key for the token's app",
                {"201": _json(_ref("Key"), "Registered"), **_errors(400, 401, 403, 409, 413, 422)},
                requestBody=_body(_ref("KeyIn")),
            )
        },
        "/v1/events/ingest": {
            "post": _op(
                "Usage events",
                {"202": _json(_ref("Accepted"), "Stored"), **_errors(400, 401, 403, 413, 422, 429)},
                requestBody=_body(_ref("Events")),
            )
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "D2 control plane", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": copy.deepcopy(_SCHEMAS),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
