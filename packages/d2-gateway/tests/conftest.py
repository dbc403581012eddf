"""Fixtures of the gateway tests (helpers in gateway_testkit.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from gateway_testkit import Recorder, make_repo


@pytest.fixture(scope="module")
def git_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary git repository with one commit (the git upstream's world)."""
    return make_repo(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    """A loopback HTTP server recording every request a fetch would make."""
    rec = Recorder()
    yield rec
    rec.close()
