"""The device key that signs publishes: Ed25519, created on first use under
``${XDG_CONFIG_HOME:-~/.config}/d2/keys/`` with mode 0600 from the moment the file
exists (``os.open`` with ``O_CREAT | O_EXCL`` and mode ``0o600``, then a hard link
into place, so no reader ever sees a partial or wider-open key), and the record of
the apps it was registered with (``POST /v1/keys`` happens once per control plane
and app: device keys belong to an app)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .output import CliError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "KEY_FILE",
    "DeviceKey",
    "forget_registration",
    "is_registered",
    "load_or_create",
    "mark_registered",
]

KEY_FILE = "device-ed25519.pem"
_REGISTRY = "registrations.json"


@dataclass(frozen=True)
class DeviceKey:
    """A device key: its ``key_id`` (derived from the public key), the private key
    and the file it lives in."""

    key_id: str
    private_key: Ed25519PrivateKey
    path: Path

    @property
    def public_key_b64(self) -> str:
        """Base64 of the raw 32-byte public key (the ``POST /v1/keys`` form)."""
        return base64.b64encode(_raw_public(self.private_key)).decode("ascii")

    def sign(self, body: bytes) -> str:
        """Base64 Ed25519 signature over exactly ``body`` (``X-D2-Signature``)."""
        return base64.b64encode(self.private_key.sign(body)).decode("ascii")


def _raw_public(private_key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def _key_id(private_key: Ed25519PrivateKey) -> str:
    return "d2cli-" + hashlib.sha256(_raw_public(private_key)).hexdigest()[:24]


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data`` with mode 0600 atomically; raises
    ``FileExistsError`` when it already exists."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # complete file or nothing; never replaces an existing key
        except FileExistsError:
            raise
        except OSError:  # no hard links on this file system: create it exclusively
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
    finally:
        os.unlink(tmp)


def _check_directory(directory: Path) -> None:
    """Refuse a keys directory another user owns or others may write to (they could
    swap the key)."""
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        return
    hint = f"chmod 700 {directory} (it must be a directory owned by you)"
    if not stat.S_ISDIR(info.st_mode):
        raise CliError(f"the keys directory {directory} is not a directory", hint=hint)
    if info.st_uid != os.geteuid():
        raise CliError(
            f"the keys directory {directory} is owned by another user (uid {info.st_uid}); "
            "refusing to use it",
            hint=hint,
        )
    if stat.S_IMODE(info.st_mode) & 0o022:
        raise CliError(
            f"the keys directory {directory} can be written by other users "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); refusing to use it",
            hint=hint,
        )


def _read_private(path: Path) -> bytes:
    """The key file's bytes, read from one descriptor opened without following a
    symbolic link and checked first: a regular file, ours, mode 0600 or stricter."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NONBLOCK", 0)  # a FIFO in its place must not hang us
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if os.path.islink(path):
            target = os.readlink(path)
            state = "points to a missing file" if not os.path.exists(path) else "is a link"
            raise CliError(
                f"the device key {path} is a symbolic link (to {target}) and {state}; "
                "refusing to follow it",
                hint=f"replace it with the key file itself (mode 600), or remove {path} "
                "to create a new key on the next publish",
            ) from None
        raise CliError(f"cannot read the device key {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CliError(f"the device key {path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise CliError(
                f"the device key {path} is owned by another user (uid {info.st_uid}); "
                "refusing to use it",
                hint=f"remove {path}; a new key is created and registered on the next publish",
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise CliError(
                f"the device key {path} can be read by other users "
                f"(mode {mode:04o}); refusing to use it",
                hint=f"chmod 600 {path}",
            )
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as fh:
        return fh.read(1 << 20)


def _load(path: Path) -> DeviceKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read_private(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CliError(
            f"the device key {path} is unreadable: {exc}",
            hint="move it away; a new key is created and registered on the next publish",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CliError(f"the device key {path} is not an Ed25519 key")
    return DeviceKey(_key_id(key), key, path)


def load_or_create(directory: Path) -> tuple[DeviceKey, bool]:
    """The device key in ``directory``, created on first use; ``(key, created)``."""
    _check_directory(directory)
    path = directory / KEY_FILE
    if os.path.lexists(path):
        return _load(path), False
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_directory(directory)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        _write_private(path, pem)
    except FileExistsError:  # another process created it first: use theirs
        return _load(path), False
    return DeviceKey(_key_id(key), key, path), True


def _registry(directory: Path) -> dict[str, str]:
    try:
        data = json.loads((directory / _REGISTRY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _save_registry(directory: Path, data: dict[str, str]) -> None:
    path = directory / _REGISTRY
    tmp = path.with_name(f".{_REGISTRY}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _slot(api_url: str, account_id: str, app: str) -> str:
    return f"{api_url.rstrip('/')} {account_id} {app}"


def is_registered(directory: Path, key: DeviceKey, api_url: str, account_id: str, app: str) -> bool:
    """Whether ``key`` was registered with this control plane for this app."""
    return _registry(directory).get(_slot(api_url, account_id, app)) == key.key_id


def mark_registered(
    directory: Path, key: DeviceKey, api_url: str, account_id: str, app: str
) -> None:
    """Remember that ``key`` is registered with this control plane for this app."""
    data = _registry(directory)
    data[_slot(api_url, account_id, app)] = key.key_id
    _save_registry(directory, data)


def forget_registration(directory: Path, api_url: str, account_id: str, app: str) -> None:
    """Forget a registration (the control plane no longer knows the key)."""
    data = _registry(directory)
    if data.pop(_slot(api_url, account_id, app), None) is not None:
        _save_registry(directory, data)
