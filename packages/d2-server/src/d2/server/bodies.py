"""The request and response bodies of the API as pydantic models.

Request bodies are decoded by :func:`~d2.server.strictjson.decode_json` (400 for
bytes that are not strict JSON) and then validated in pydantic's strict mode by
:func:`parse_body`: no coercion (``"1"`` is not an integer, ``true`` is not ``1``),
fields the protocol does not name are ignored, and a body of the wrong shape is a
422 whose ``errors`` name each bad field and what it should be. The OpenAPI
document (:mod:`.openapi`) is generated from these same models.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from .devicekeys import DEVICE_KEY_ALGORITHM, decode_base64
from .errors import ApiError
from .strictjson import canonical_json, decode_json

__all__ = [
    "MAX_ERRORS",
    "MAX_EVENT_TYPE",
    "Accepted",
    "Bundle",
    "Draft",
    "DraftIn",
    "DraftSaved",
    "Error",
    "Event",
    "Events",
    "Health",
    "Identity",
    "Jwk",
    "Jwks",
    "Key",
    "KeyIn",
    "PlanQuotas",
    "PolicyDocument",
    "Published",
    "Revoked",
    "parse_body",
    "valid_timestamp",
]

MAX_EVENT_TYPE = 200
"""Longest ``event_type``, in characters."""
MAX_ERRORS = 20
"""Most ``errors`` lines of one 422 (a 32 KiB body can hold thousands of mistakes)."""

_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:)(\d{2})(?:\.(\d{1,32}))?([Zz]|[+-]\d{2}:\d{2})"
)
_STRICT_IN = ConfigDict(strict=True, extra="ignore", frozen=True)
_OUT = ConfigDict(
    strict=True, extra="forbid", frozen=True, json_schema_serialization_defaults_required=True
)
_M = TypeVar("_M", bound=BaseModel)


def valid_timestamp(value: object) -> bool:
    """An RFC 3339 date-time with a UTC offset (``Z`` or ``+hh:mm``), a real moment
    (a leap second ``:60`` is read as ``:59``)."""
    if not isinstance(value, str):
        return False
    m = _RFC3339.fullmatch(value)
    if m is None:
        return False
    head, seconds, fraction, zone = m.groups()
    seconds = "59" if seconds == "60" else seconds
    zone = "+00:00" if zone in ("Z", "z") else zone
    text = f"{head.upper()}{seconds}.{((fraction or '') + '000000')[:6]}{zone}"
    try:
        _dt.datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _timestamp(value: str) -> str:
    if not valid_timestamp(value):
        raise PydanticCustomError("rfc3339", "not an RFC 3339 date-time with an offset")
    return value


def _public_key(value: str) -> str:
    raw = decode_base64(value)
    if raw is None or len(raw) != 32:
        raise PydanticCustomError("ed25519_key", "not the base64 of 32 bytes")
    return value


# requests


class PolicyDocument(RootModel[dict[str, Any]]):
    """A policy document (POLICY.md); ``metadata.name`` must be the app's name. Its
    content is checked by the policy language's validator, not by this model."""

    model_config = ConfigDict(
        strict=True,
        frozen=True,
        json_schema_extra={
            "properties": {"metadata": {"type": "object"}, "policies": {"type": "array"}}
        },
    )


class DraftIn(BaseModel):
    """``PUT /v1/policy/draft``."""

    model_config = _STRICT_IN
    version: int = Field(ge=0, lt=2**53, description="an integer >= 0")
    bundle: PolicyDocument = Field(description="the policy document (an object)")


class KeyIn(BaseModel):
    """``POST /v1/keys``: a device key to register for the token's app."""

    model_config = _STRICT_IN
    key_id: str = Field(
        pattern=r"^[A-Za-z0-9._:@+/=-]{1,128}$",
        description="1-128 printable characters without spaces",
    )
    algorithm: Literal["Ed25519"] = Field(description=f"the string {DEVICE_KEY_ALGORITHM!r}")
    public_key: Annotated[str, AfterValidator(_public_key)] = Field(
        max_length=1024,
        description="the base64 of a raw 32-byte Ed25519 key",
        json_schema_extra={"pattern": "^[A-Za-z0-9+/]{43}=$"},
    )

    @property
    def raw_public_key(self) -> bytes:
        """The 32 key bytes."""
        raw = decode_base64(self.public_key)
        assert raw is not None  # checked by the validator
        return raw


class Event(BaseModel):
    """One usage event."""

    model_config = _STRICT_IN
    event_type: str = Field(
        min_length=1,
        max_length=MAX_EVENT_TYPE,
        pattern="^[^\\x00]*$",  # no NUL: PostgreSQL text cannot hold it
        description=f"a string of 1-{MAX_EVENT_TYPE} characters, no NUL",
    )
    payload: dict[str, Any] = Field(description="an object")
    occurred_at: Annotated[str, AfterValidator(_timestamp)] = Field(
        description="an RFC 3339 time with an offset, such as 2025-01-01T00:00:00Z",
        json_schema_extra={"format": "date-time"},
    )

    def row(self) -> tuple[str, str, str]:
        """``(event_type, payload as canonical JSON, occurred_at)``, as stored."""
        return self.event_type, canonical_json(self.payload), self.occurred_at


class Events(BaseModel):
    """``POST /v1/events/ingest``. More events than the plan's ``event_batch`` (given
    as the validation context ``max_events``) is a 413: the client splits."""

    model_config = _STRICT_IN
    events: list[Event] = Field(description="a list of events")

    @field_validator("events", mode="before")
    @classmethod
    def _batch(cls, value: Any, info: ValidationInfo) -> Any:
        limit = (info.context or {}).get("max_events")
        if isinstance(value, list) and limit is not None and len(value) > limit:
            raise PydanticCustomError(
                "too_many_events", "more than {limit} events", {"limit": limit}
            )
        return value


# responses


class Error(BaseModel):
    """Every refusal: ``detail`` is a code; the other fields depend on it."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    detail: str
    errors: list[str] | None = Field(None, description="422: one '<path>: <problem>' each")
    message: str | None = Field(None, description="what to do next")
    limit: int | None = Field(None, description="the limit that was reached")
    value: int | None = Field(None, description="the value over the limit")
    scope: str | None = Field(None, description="403 missing_scope: the scope needed")
    current_version: int | None = None
    retry_after: int | None = Field(None, description="429: seconds to wait")


class Health(BaseModel):
    """``GET /healthz``."""

    model_config = _OUT
    status: Literal["ok"] = "ok"


class PlanQuotas(BaseModel):
    """The plan limits an SDK honours."""

    model_config = _OUT
    max_tools: int
    bundle_size_bytes: int
    event_batch: int
    ingest_interval: int


class Identity(BaseModel):
    """``GET /v1/accounts/me``."""

    model_config = _OUT
    account_id: str
    app_name: str
    plan: str
    poll_seconds: int
    quotas: PlanQuotas
    scopes: list[str]


class Jwk(BaseModel):
    """A public signing key (RFC 7517); the key's own members (``crv``, ``x``, ``n``,
    ...) follow its type."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    kid: str
    kty: Literal["OKP", "EC", "RSA"]
    alg: Literal["EdDSA", "ES256", "RS256"]
    use: Literal["sig"]


class Jwks(BaseModel):
    """``GET /.well-known/jwks.json``."""

    model_config = _OUT
    keys: list[Jwk]


class Bundle(BaseModel):
    """``GET /v1/policy/bundle``: the compact JWS and its version."""

    model_config = _OUT
    jws: str
    version: int = Field(ge=1)


class Published(BaseModel):
    """``POST /v1/policy/publish``."""

    model_config = _OUT
    version: int = Field(ge=1)
    etag: str


class Revoked(BaseModel):
    """``POST /v1/policy/revoke``."""

    model_config = _OUT
    revoked_version: int = Field(ge=1)


class Draft(BaseModel):
    """``GET /v1/policy/draft``."""

    model_config = _OUT
    version: int
    bundle: dict[str, Any]


class DraftSaved(BaseModel):
    """``PUT /v1/policy/draft``."""

    model_config = _OUT
    draft_version: int


class Key(BaseModel):
    """``POST /v1/keys``: the registered key."""

    model_config = _OUT
    key_id: str
    algorithm: str


class Accepted(BaseModel):
    """``POST /v1/events/ingest``: how many events were stored."""

    model_config = _OUT
    accepted: int = Field(ge=0)


# parsing


def _model_of(annotation: Any) -> type[BaseModel] | None:
    while get_origin(annotation) is list:
        (annotation,) = get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _hint(model: type[BaseModel], loc: tuple[int | str, ...]) -> str | None:
    """The description of the field at ``loc``: what it should be."""
    current: type[BaseModel] | None = model
    hint = None
    for part in loc:
        if isinstance(part, int):
            continue
        if current is None or part not in current.model_fields:
            return None
        field = current.model_fields[part]
        hint = field.description
        current = _model_of(field.annotation)
    return hint


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "<root>"


def _describe(model: type[BaseModel], error: Any) -> str:
    loc = tuple(error["loc"])
    if error["type"] == "model_type":  # pydantic's text names the Python class
        return f"{_path(loc)}: expected a JSON object"
    message = str(error["msg"])
    message = message[:1].lower() + message[1:]
    hint = _hint(model, loc)
    if hint is None:
        return f"{_path(loc)}: {message}"
    return f"{_path(loc)}: expected {hint} ({message})"


def parse_body(
    model: type[_M], data: bytes, detail: str, *, context: dict[str, Any] | None = None
) -> _M:
    """Decode ``data`` strictly and validate it as ``model``.

    400 ``invalid_json`` when it is not JSON; 422 ``detail`` with ``errors`` (at most
    :data:`MAX_ERRORS`) when its shape is wrong; 413 ``too_many_events`` when an
    ingest holds more events than ``context["max_events"]``."""
    value = decode_json(data)
    try:
        return model.model_validate(value, strict=True, context=context)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=True)
        for error in errors:
            if error["type"] == "too_many_events":
                raise ApiError(413, "too_many_events", limit=error["ctx"]["limit"]) from None
        lines = [_describe(model, error) for error in errors[:MAX_ERRORS]]
        raise ApiError(422, detail, errors=lines) from None
