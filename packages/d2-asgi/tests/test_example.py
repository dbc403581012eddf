"""``examples/fastapi_app.py``: importable without serving, and every endpoint answers
per the bearer token's user, with 403s for denials."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from starlette.testclient import TestClient

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "fastapi_app.py"


@pytest.fixture
def example() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("d2_fastapi_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def denial(tool_id: str, reason: str) -> dict[str, str]:
    return {"detail": "permission_denied", "tool_id": tool_id, "reason": reason}


def test_the_example_serves_tools_per_user_and_denies_with_403(example: ModuleType) -> None:
    with TestClient(example.app) as client:  # the lifespan loads the example's policy
        assert client.get("/whoami", headers=bearer("bob-token")).json() == {
            "user": "bob",
            "roles": ["reader"],
        }
        assert client.get("/notes", headers=bearer("bob-token")).status_code == 200
        response = client.delete("/notes/1", headers=bearer("bob-token"))
        assert (response.status_code, response.json()) == (
            403,
            denial("notes.delete", "not_granted"),
        )
        assert client.delete("/notes/1", headers=bearer("alice-token")).json() == {"deleted": True}
        notes = client.get("/notes", headers=bearer("alice-token")).json()
        assert notes == {"notes": {"2": "launch plan"}}
        anonymous = client.get("/notes", headers=bearer("stolen-token"))
        assert (anonymous.status_code, anonymous.json()) == (403, denial("notes.read", "no_user"))


def test_the_example_report_streams_each_guarded_line_as_the_user(example: ModuleType) -> None:
    with TestClient(example.app) as client:
        with client.stream("GET", "/report", headers=bearer("bob-token")) as response:
            assert list(response.iter_lines()) == ["line 0", "line 1", "line 2"]
        refused = client.get("/report", headers=bearer("carol-token"))
        assert (refused.status_code, refused.json()) == (403, denial("reports.line", "not_granted"))


def test_the_example_denies_everything_once_its_policy_is_shut_down(example: ModuleType) -> None:
    with TestClient(example.app):
        pass
    response = TestClient(example.app).get("/notes", headers=bearer("alice-token"))
    assert (response.status_code, response.json()["reason"]) == (403, "missing_policy")
