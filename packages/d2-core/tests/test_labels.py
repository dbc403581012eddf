"""Tool labels: extra fields of the decision log (and metric attributes) for a
tool, set once by an integration (d2-gateway's ``upstream``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from d2.core import PermissionDeniedError, d2_guard, set_user, shutdown_rbac
from d2.core.labels import RESERVED, set_tool_labels, tool_labels
from hypothesis import given
from hypothesis import strategies as st


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    for tool in ("crm.lookup", "db.drop", "x"):
        set_tool_labels(tool, {})


def test_labels_are_fields_of_the_tools_decision_log_records(configure: Any) -> None:
    records: list[dict[str, Any]] = []
    configure(
        {"role": "r", "permissions": ["crm.lookup"]},
        decision_log=records.append,
    )
    set_tool_labels("crm.lookup", {"upstream": "crm", "team": "support"})
    set_tool_labels("db.drop", {"upstream": "db"})
    lookup = d2_guard("crm.lookup")(lambda: "ok")
    drop = d2_guard("db.drop")(lambda: "gone")
    other = d2_guard("x.other")(lambda: None)
    set_user("sam", roles=["r"])
    assert lookup() == "ok"
    for call in (drop, other):
        with pytest.raises(PermissionDeniedError):
            call()
    shutdown_rbac()
    by_tool = {r["tool_id"]: r for r in records}
    assert by_tool["crm.lookup"]["upstream"] == "crm"
    assert by_tool["crm.lookup"]["team"] == "support"
    assert by_tool["crm.lookup"]["decision"] == "allowed"  # D2's own fields unchanged
    assert by_tool["db.drop"]["upstream"] == "db" and by_tool["db.drop"]["reason"]
    assert "upstream" not in by_tool["x.other"]


def test_labels_replace_and_an_empty_mapping_removes() -> None:
    set_tool_labels("x", {"upstream": "a"})
    set_tool_labels("x", {"upstream": "b"})
    assert dict(tool_labels("x")) == {"upstream": "b"}
    set_tool_labels("x", {})
    assert dict(tool_labels("x")) == {}
    with pytest.raises(TypeError):
        tool_labels("crm.lookup")["upstream"] = "y"  # type: ignore[index]


@pytest.mark.parametrize("name", sorted(RESERVED))
def test_a_label_never_overwrites_a_field_of_d2(name: str) -> None:
    with pytest.raises(ValueError, match=f"label name '{name}' of 'x' is one of D2's own"):
        set_tool_labels("x", {name: "forged"})
    assert dict(tool_labels("x")) == {}


@pytest.mark.parametrize(
    ("labels", "says"),
    [
        ({"Upstream": "a"}, "label name 'Upstream'"),
        ({"": "a"}, "label name ''"),
        ({"a" * 33: "a"}, "is not allowed"),
        ({"up": 3}, "must be a string"),
        ({"up": "v" * 201}, "at most 200"),
    ],
)
def test_bad_labels_are_refused_naming_the_input(labels: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        set_tool_labels("x", labels)
    assert dict(tool_labels("x")) == {}


def test_a_tool_id_is_a_non_empty_string() -> None:
    with pytest.raises(ValueError, match="tool_id must be a non-empty string"):
        set_tool_labels("", {"upstream": "a"})


@given(st.text(max_size=40))
def test_only_well_formed_unreserved_names_are_taken(name: str) -> None:
    ok = (
        name.isascii()
        and 1 <= len(name) <= 32
        and name[0].isalpha()
        and name[0].islower()
        and all(c.islower() or c.isdigit() or c == "_" for c in name)
        and name not in RESERVED
    )
    try:
        set_tool_labels("x", {name: "v"})
    except ValueError:
        assert not ok
        assert dict(tool_labels("x")) == {}
    else:
        assert ok
        assert dict(tool_labels("x")) == {name: "v"}
    set_tool_labels("x", {})
