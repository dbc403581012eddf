"""Integrity of state-file entries: an HMAC keyed by the runtime token.

Whoever can write the state file but does not hold ``D2_TOKEN`` must not be able to
make up an entry the runtime trusts. So each entry is sealed:

- Two keys are derived from the token with HKDF-SHA256 (RFC 5869), salt
  ``d2-cloud/state-file``, one per purpose (``info`` says which): the MAC key and the
  key that names the entry. The token itself is never stored.
- The entry's id is ``HMAC(id key, control-plane URL)``: one slot per token and
  control plane, that reveals neither.
- The tag is ``HMAC-SHA256(MAC key, [label, URL, id, body])`` (a JSON array, so the
  parts cannot be shifted into one another) over the exact bytes of the entry's body,
  and it is checked with :func:`hmac.compare_digest` **before** the body is parsed.
  An entry sealed with another token, or for another control plane, or moved to
  another slot, or with any byte changed, fails.

What this does not give: freshness. Someone who can write the file can put back an
older entry this token sealed, or delete entries (see ``docs/security.md``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["SealError", "StateSeal"]

_SALT = b"d2-cloud/state-file"
_MAC_INFO = b"d2-cloud state entry mac v2"
_ID_INFO = b"d2-cloud state entry id v2"
_LABEL = "d2-cloud state entry v2"


class SealError(ValueError):
    """A state-file record that is not a genuine entry of this token and control plane."""


def _derive(token: str, info: bytes) -> bytes:
    kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=info)
    return kdf.derive(token.encode("utf-8", "surrogatepass"))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class StateSeal:
    """Seals and opens the state-file entries of one token and control plane.

    ``api_url`` is the control plane's base URL as the client uses it (trailing ``/``
    removed), so an entry is bound to it."""

    __slots__ = ("_mac_key", "api_url", "entry_id")

    def __init__(self, token: str, api_url: str) -> None:
        self.api_url = api_url.rstrip("/")
        self._mac_key = _derive(token, _MAC_INFO)
        naming = hmac.new(
            _derive(token, _ID_INFO), self.api_url.encode("utf-8", "surrogatepass"), hashlib.sha256
        )
        self.entry_id = naming.hexdigest()[:32]

    def __repr__(self) -> str:  # never show key material
        return f"StateSeal({self.api_url!r}, entry {self.entry_id})"

    def _tag(self, body: str) -> bytes:
        message = json.dumps([_LABEL, self.api_url, self.entry_id, body], ensure_ascii=True)
        return hmac.new(self._mac_key, message.encode("ascii"), hashlib.sha256).digest()

    def seal(self, entry: dict[str, Any]) -> dict[str, str]:
        """The record to store for ``entry`` (JSON values only): its body, as text,
        and the tag over it."""
        body = json.dumps(entry, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return {"body": body, "mac": _b64(self._tag(body))}

    def open(self, record: object) -> dict[str, Any]:
        """The entry inside ``record``, once its tag is checked; raises
        :class:`SealError` saying why it is not trusted (never anything else)."""
        if not isinstance(record, dict):
            raise SealError("the entry is not an object")
        body, mac = record.get("body"), record.get("mac")
        if not isinstance(body, str) or not isinstance(mac, str):
            raise SealError("the entry has no integrity tag (written by an older d2?)")
        given = mac.encode("utf-8", "surrogatepass")  # compared as text: one spelling
        if not hmac.compare_digest(given, _b64(self._tag(body)).encode("ascii")):
            raise SealError(
                "the entry failed its integrity check (altered, or written with another "
                "token or for another control plane)"
            )
        try:
            entry = json.loads(body)
        except (ValueError, RecursionError):
            raise SealError("the entry's body is not JSON") from None
        if not isinstance(entry, dict):
            raise SealError("the entry's body is not an object")
        return entry
