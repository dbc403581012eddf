"""Device keys: the Ed25519 public keys developers register with ``POST /v1/keys``
and sign publish requests with (``X-D2-Signature`` over the exact body bytes)."""

from __future__ import annotations

import base64
import binascii
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

__all__ = [
    "DEVICE_KEY_ALGORITHM",
    "decode_base64",
    "valid_key_id",
    "verify_signature",
]

DEVICE_KEY_ALGORITHM = "Ed25519"
_KEY_ID = re.compile(r"[A-Za-z0-9._:@+/=-]{1,128}")
_B64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")
_MAX_B64 = 1024


def valid_key_id(value: object) -> bool:
    """A key id is 1-128 printable characters without spaces."""
    return isinstance(value, str) and _KEY_ID.fullmatch(value) is not None


def decode_base64(text: str) -> bytes | None:
    """Standard or URL-safe base64, padding optional; ``None`` when not base64."""
    text = text.strip()
    if len(text) > _MAX_B64 or not _B64.fullmatch(text):
        return None
    text = text.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def verify_signature(public_key: bytes, signature: bytes, body: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``body`` by the raw
    32-byte ``public_key``."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public_key).verify(signature, body)
    except (InvalidSignature, ValueError):
        return False
    return True
