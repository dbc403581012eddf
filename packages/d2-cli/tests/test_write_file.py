"""Policy files the CLI writes are replaced atomically: a watching app reads the old
file or the new one, never half of one (docs/security.md, "A half-written policy
file")."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from d2.cli.documents import write_file


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("old\n")

    def crash(fd: int) -> None:
        raise OSError(errno.EIO, "disk gone")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_file(path, "new\n" * 1000, overwrite=True)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["policy.yaml"]


def test_the_mode_is_kept_and_a_new_file_is_0644(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("old\n")
    path.chmod(0o640)
    write_file(path, "new\n", overwrite=True)
    assert path.read_text() == "new\n" and path.stat().st_mode & 0o777 == 0o640
    fresh = tmp_path / "sub" / "fresh.yaml"
    write_file(fresh, "x\n", overwrite=False)
    assert fresh.stat().st_mode & 0o777 == 0o644


def test_a_symlinked_policy_is_written_through_the_link(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "policy.yaml"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "policy.yaml"
    link.symlink_to(real)
    write_file(link, "new\n", overwrite=True)
    assert link.is_symlink() and real.read_text() == "new\n"
    assert sorted(p.name for p in real.parent.iterdir()) == ["policy.yaml"]


def test_without_hard_links_a_new_file_is_still_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EPERM, "no hard links on this filesystem")

    monkeypatch.setattr(os, "link", no_links)
    replaced: list[str] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        replaced.append(os.fspath(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    path = tmp_path / "policy.yaml"
    write_file(path, "complete\n", overwrite=False)
    assert path.read_text() == "complete\n" and replaced == [str(path)]
    with pytest.raises(FileExistsError):  # an existing file is still never replaced
        write_file(path, "other\n", overwrite=False)
    assert path.read_text() == "complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["policy.yaml"]
