"""The state file's seal and parser: only an entry sealed with this token, for this
control plane, and unchanged since, is ever returned; anything else (arbitrary bytes,
arbitrary JSON, another token's entry, one altered character) is ignored with a
warning, and reading never raises."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from cloudfakes import BASE
from d2.cloud import state as state_module
from d2.cloud.seal import SealError, StateSeal
from d2.cloud.state import StateFile
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

TOKEN = "d2_test"
ENTRY: dict[str, Any] = {
    "kind": "bundle",
    "audience": "d2-policy:acc1:app1",
    "app": "app1",
    "jws": "eyJh.eyJi.c2ln",
    "version": 3,
    "digest": "ab" * 32,
    "jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "k1"}]},
}
TOMBSTONE = {k: ENTRY[k] for k in ("audience", "app", "version", "digest")} | {"kind": "revoked"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
quick = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def genuine_file(path: Path, entry: dict[str, Any] = ENTRY) -> StateFile:
    file = StateFile(str(path), StateSeal(TOKEN, BASE))
    file.save(entry)
    return file


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


def test_entries_round_trip_and_the_file_holds_no_token(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    file = genuine_file(path)
    assert file.load() == ENTRY
    file.save(TOMBSTONE)
    assert file.load() == TOMBSTONE
    text = path.read_text()
    assert TOKEN not in text and json.loads(text)["format"] == 2
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert TOKEN not in repr(file.seal)
    file.save(None)
    assert file.load() is None and json.loads(path.read_text())["entries"] == {}


def test_memory_keeps_entries_for_the_life_of_the_process() -> None:
    file = StateFile(":memory:", StateSeal(TOKEN, BASE))
    assert file.load() is None
    file.save(ENTRY)
    assert file.load() == ENTRY


def test_another_token_or_control_plane_or_slot_cannot_open_an_entry(tmp_path: Path) -> None:
    record = StateSeal(TOKEN, BASE).seal(ENTRY)
    assert StateSeal(TOKEN, BASE + "/").open(record) == ENTRY  # same URL, trailing /
    for other in (StateSeal("d2_other", BASE), StateSeal(TOKEN, "http://127.0.0.1:10")):
        with pytest.raises(SealError, match="integrity check"):
            other.open(record)
        assert other.entry_id != StateSeal(TOKEN, BASE).entry_id
    # an entry of another token moved into our slot of the file is refused too
    path = tmp_path / "state.json"
    theirs = StateFile(str(path), StateSeal("d2_other", BASE))
    theirs.save(ENTRY)
    ours = StateFile(str(path), StateSeal(TOKEN, BASE))
    data = json.loads(path.read_text())
    data["entries"][ours.seal.entry_id] = data["entries"][theirs.seal.entry_id]
    path.write_text(json.dumps(data))
    assert ours.load() is None and theirs.load() == ENTRY


def test_saving_keeps_the_other_entries_of_a_shared_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    a = StateFile(str(path), StateSeal("d2_a", BASE))
    b = StateFile(str(path), StateSeal("d2_b", BASE))
    a.save(ENTRY)
    b.save(TOMBSTONE)
    a.save(None)
    assert a.load() is None and b.load() == TOMBSTONE


def test_the_previous_unsealed_format_is_ignored_with_a_warning_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"format": 1, "apps": {"k": {**ENTRY, "etag": None}}}))
    file = StateFile(str(path), StateSeal(TOKEN, BASE))
    assert file.load() is None and "without integrity protection" in caplog.text
    file.save(ENTRY)
    assert json.loads(path.read_text())["format"] == 2 and file.load() == ENTRY


@pytest.mark.parametrize(
    "entry",
    [
        {**ENTRY, "kind": "policy"},
        {**ENTRY, "version": True},
        {**ENTRY, "version": 0},
        {**ENTRY, "jwks": {"keys": {}}},
        {k: v for k, v in ENTRY.items() if k != "jws"},
        {k: v for k, v in TOMBSTONE.items() if k != "audience"},
    ],
)
def test_a_sealed_entry_of_the_wrong_shape_is_ignored(
    tmp_path: Path, entry: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    assert genuine_file(tmp_path / "s.json", entry).load() is None
    assert "ignoring the saved entry" in caplog.text


def test_an_oversized_file_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    file = genuine_file(tmp_path / "s.json")
    monkeypatch.setattr(state_module, "MAX_BYTES", 64)
    assert file.load() is None and "larger than 64 bytes" in caplog.text


@quick
@given(raw=st.binary(max_size=3000))
def test_arbitrary_bytes_never_crash_and_never_yield_an_entry(folder: Path, raw: bytes) -> None:
    path = folder / "bytes.json"
    path.write_bytes(raw)
    assert StateFile(str(path), StateSeal(TOKEN, BASE)).load() is None


@quick
@given(data=json_values, body=json_values, mac=st.text(max_size=60))
def test_arbitrary_json_never_crashes_and_never_yields_an_entry(
    folder: Path, data: Any, body: Any, mac: str
) -> None:
    file = StateFile(str(folder / "json.json"), StateSeal(TOKEN, BASE))
    slot = file.seal.entry_id
    shapes = [
        data,
        {"format": 2, "entries": data},
        {"format": 2, "entries": {slot: data}},
        {"format": 2, "entries": {slot: {"body": json.dumps(body), "mac": mac}}},
        {"format": 2, "entries": {slot: {"body": json.dumps({**ENTRY, "x": body}), "mac": mac}}},
    ]
    for shape in shapes:
        Path(file.path).write_text(json.dumps(shape))
        assert file.load() is None


odd = st.text(max_size=40) | st.text(st.sampled_from(["\udcff", "/", "a", "\n"]), max_size=8)


@quick
@given(token=odd, url=odd)
def test_no_other_token_or_url_opens_an_entry(token: str, url: str) -> None:
    assume((token, url.rstrip("/")) != (TOKEN, BASE))
    record = StateSeal(TOKEN, BASE).seal(ENTRY)
    with pytest.raises(SealError):
        StateSeal(token, url).open(record)


@quick
@given(position=st.integers(min_value=0), char=st.characters(), how=st.sampled_from("rdi"))
def test_one_altered_character_of_a_genuine_file_is_never_trusted_as_something_else(
    folder: Path, position: int, char: str, how: str
) -> None:
    path = folder / "mutated.json"
    genuine_file(path)
    text = path.read_text()
    at = position % len(text)
    if how == "r":  # replace
        assume(text[at] != char)
        changed = text[:at] + char + text[at + 1 :]
    elif how == "d":  # delete
        changed = text[:at] + text[at + 1 :]
    else:  # insert
        changed = text[:at] + char + text[at:]
    path.write_text(changed, encoding="utf-8", errors="surrogatepass")
    logging.getLogger("d2.cloud").disabled = True
    try:
        found = StateFile(str(path), StateSeal(TOKEN, BASE)).load()
    finally:
        logging.getLogger("d2.cloud").disabled = False
    # JSON has spellings that mean the same (white space, escapes): then the very
    # same entry comes back; anything else is refused, never a different entry
    assert found is None or found == ENTRY
