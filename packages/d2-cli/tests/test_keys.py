"""The device key: created once with mode 0600 set atomically, reused, refused when
other users can read it; the record of the apps it is registered with."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from d2.cli.keys import (
    KEY_FILE,
    forget_registration,
    is_registered,
    load_or_create,
    mark_registered,
)
from d2.cli.output import CliError


def test_created_once_with_0600_from_the_start_even_with_a_loose_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        opened.append((str(path), flags, mode))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", spy)
    old = os.umask(0)
    try:
        key, created = load_or_create(tmp_path / "keys")
    finally:
        os.umask(old)
    assert created
    path = tmp_path / "keys" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    creates = [o for o in opened if o[1] & os.O_CREAT]
    assert creates and all(o[1] & os.O_EXCL and o[2] == 0o600 for o in creates)
    again, created_again = load_or_create(tmp_path / "keys")
    assert not created_again and again.key_id == key.key_id
    assert key.key_id.startswith("d2cli-")
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE]  # no temporary left


def test_signatures_verify_with_the_registered_public_key(tmp_path: Path) -> None:
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key, _ = load_or_create(tmp_path)
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key.public_key_b64))
    public.verify(base64.b64decode(key.sign(b'{"a":1}')), b'{"a":1}')


def test_a_key_someone_else_created_meanwhile_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = load_or_create(tmp_path)
    monkeypatch.setattr(Path, "exists", lambda self: False)  # lost the race
    second, created = load_or_create(tmp_path)
    assert not created and second.key_id == first.key_id


def test_a_key_other_users_can_read_is_refused(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    (tmp_path / KEY_FILE).chmod(0o640)
    with pytest.raises(CliError, match="other users") as caught:
        load_or_create(tmp_path)
    assert caught.value.hint == f"chmod 600 {tmp_path / KEY_FILE}"


def test_a_corrupt_key_is_explained(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not a key")
    os.close(fd)
    with pytest.raises(CliError, match="unreadable"):
        load_or_create(tmp_path)


def test_registrations_are_per_control_plane_and_app(tmp_path: Path) -> None:
    key, _ = load_or_create(tmp_path)
    assert not is_registered(tmp_path, key, "http://a", "acc", "app")
    mark_registered(tmp_path, key, "http://a/", "acc", "app")
    assert is_registered(tmp_path, key, "http://a", "acc", "app")
    assert not is_registered(tmp_path, key, "http://a", "acc", "other")
    assert not is_registered(tmp_path, key, "http://b", "acc", "app")
    assert stat.S_IMODE((tmp_path / "registrations.json").stat().st_mode) == 0o600
    forget_registration(tmp_path, "http://a", "acc", "app")
    assert not is_registered(tmp_path, key, "http://a", "acc", "app")


def test_a_symlinked_key_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    load_or_create(directory)
    real = tmp_path / "elsewhere.pem"
    (directory / KEY_FILE).rename(real)
    (directory / KEY_FILE).symlink_to(real)
    with pytest.raises(CliError, match="symbolic link") as linked:
        load_or_create(directory)
    assert linked.value.code == 2
    real.unlink()
    with pytest.raises(CliError, match="points to a missing file"):
        load_or_create(directory)
    assert (directory / KEY_FILE).is_symlink()  # nothing was created through the link
    assert not real.exists()


def test_a_key_or_directory_of_another_user_or_open_to_others_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "keys"
    load_or_create(directory)
    directory.chmod(0o777)
    with pytest.raises(CliError, match="written by other users") as loose:
        load_or_create(directory)
    assert loose.value.code == 2 and "chmod 700" in (loose.value.hint or "")
    directory.chmod(0o700)
    me = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: me + 1)
    with pytest.raises(CliError, match="owned by another user"):
        load_or_create(directory)


def test_a_key_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    (directory / KEY_FILE).mkdir(parents=True)
    directory.chmod(0o700)
    with pytest.raises(CliError, match=r"not a regular file|cannot read"):
        load_or_create(directory)
