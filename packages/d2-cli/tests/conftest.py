"""Fixtures for the CLI tests: an isolated environment (no D2_* variables, HOME and
XDG_CONFIG_HOME in a temporary directory, the working directory there too), a
CliRunner helper, policy files, and a real d2-server with a fault-injecting proxy
in front of it (``server``)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from d2.core.testing import expires_in, reset
from typer.testing import CliRunner, Result

sys.path.insert(0, os.path.dirname(__file__))

from cli_testkit import Invoke, Proxy


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith(("D2_", "NO_COLOR", "FORCE_COLOR")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("D2_SILENT", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    import d2.cli.api

    monkeypatch.setattr(d2.cli.api, "transport_factory", None)
    yield
    reset()


@pytest.fixture
def xdg(tmp_path: Path) -> Path:
    """``$XDG_CONFIG_HOME/d2``."""
    return tmp_path / "xdg" / "d2"


@pytest.fixture
def d2() -> Invoke:
    """``d2("inspect", "--json", input=None)``: run the CLI in-process."""
    from d2.cli import app

    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(app, list(args), input=input, catch_exceptions=False)

    return invoke


@pytest.fixture
def write_policy(tmp_path: Path) -> Callable[..., Path]:
    """``write_policy(*entries, name="policy.json", **metadata)``: a valid local
    policy file (expires in 3 days unless told otherwise)."""

    def write(*entries: dict[str, Any], name: str = "policy.json", **metadata: Any) -> Path:
        meta = {"expires": expires_in(), **metadata}
        doc = {"metadata": meta, "policies": list(entries)}
        path = tmp_path / name
        path.write_text(json.dumps(doc))
        return path

    return write


@pytest.fixture
def make_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., tuple[Any, Proxy]]]:
    """``make_server(**start_server_options)``: a real d2-server and the proxy
    every CLI request goes through; the environment points the CLI at it with the
    developer token. Stopped at the end of the test."""
    import d2.cli.api
    from d2.server.testing import start_server

    with ExitStack() as stack:
        made: list[Any] = []

        def make(**options: Any) -> tuple[Any, Proxy]:
            directory = tmp_path / f"server-{len(made)}"
            directory.mkdir()
            srv = stack.enter_context(start_server(directory, **options))
            made.append(srv)
            proxy = Proxy()
            monkeypatch.setattr(d2.cli.api, "transport_factory", proxy.transport)
            for key, value in srv.env(srv.developer_token).items():
                monkeypatch.setenv(key, value)
            return srv, proxy

        yield make


@pytest.fixture
def server(make_server: Callable[..., tuple[Any, Proxy]]) -> tuple[Any, Proxy]:
    """A server with default options (see ``make_server``)."""
    return make_server()
